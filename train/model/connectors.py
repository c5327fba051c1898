"""Connectors: vision features `[N, P, Dv]` → LLM embeddings `[N, T, Dl]`, chosen by name through `CONNECTORS`.

`linear` and `mlp2x_gelu` (LLaVA-1.5) keep one token per feature (T = P); `resampler` (Perceiver-style cross-attention
from learned queries) and `qformer` (🤗 BLIP-2 Q-Former) emit `num_queries` tokens whatever the image size.
`load_connector_weights` starts one from a file (`model.connector.init_from`), as TinyGPT-V starts from MiniGPT-4's
projection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from mixer.manifest.model import ConnectorConfig


@dataclass(frozen=True)
class ConnectorSpec:
    """Everything needed to rebuild a connector (saved as JSON in an export)."""

    type: str
    vision_dim: int
    llm_dim: int
    num_queries: int = 32
    num_layers: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


def _heads(dim: int) -> int:
    """Attention heads for an inner width: the most heads that still leave >= 16 dims each."""
    for h in (16, 8, 4, 2):
        if dim % h == 0 and dim // h >= 16:
            return h
    return 1


class Connector(nn.Module):
    """Base: keeps the spec it was built from (an export saves it) and says how many tokens it emits per image."""

    def __init__(self, spec: ConnectorSpec) -> None:
        super().__init__()
        self.spec = spec

    def n_tokens(self, n_features: int) -> int:
        """Tokens emitted per image for `n_features` vision features: one each, unless the connector resamples."""
        return n_features


class Linear(Connector):
    def __init__(self, spec: ConnectorSpec) -> None:
        super().__init__(spec)
        self.proj = nn.Linear(spec.vision_dim, spec.llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class MLP2xGelu(Connector):
    """LLaVA-1.5's projector: Linear → GELU → Linear."""

    def __init__(self, spec: ConnectorSpec) -> None:
        super().__init__(spec)
        self.proj = nn.Sequential(
            nn.Linear(spec.vision_dim, spec.llm_dim), nn.GELU(), nn.Linear(spec.llm_dim, spec.llm_dim)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


class _CrossBlock(nn.Module):
    """Pre-norm cross-attention (queries → features) then a GELU MLP, both residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, _heads(dim), batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = self.norm_q(queries)
        queries = queries + self.attn(q, kv, kv, need_weights=False)[0]
        return queries + self.mlp(self.norm_mlp(queries))


class Resampler(Connector):
    """Perceiver-style resampler: `num_queries` learned queries cross-attend to the features in `num_layers` blocks.

    It works at the LLM width: features are projected to it first, so the output needs no further projection.
    """

    def __init__(self, spec: ConnectorSpec) -> None:
        super().__init__(spec)
        self.queries = nn.Parameter(torch.randn(spec.num_queries, spec.llm_dim) * 0.02)
        self.kv_proj = nn.Linear(spec.vision_dim, spec.llm_dim)
        self.blocks = nn.ModuleList(_CrossBlock(spec.llm_dim) for _ in range(spec.num_layers))
        self.norm_out = nn.LayerNorm(spec.llm_dim)

    def n_tokens(self, n_features: int) -> int:
        return self.queries.shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        kv = self.kv_proj(features)
        x = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            x = block(x, kv)
        return self.norm_out(x)


class QFormer(Connector):
    """BLIP-2's Q-Former (🤗 `Blip2QFormerModel`, cross-attention in every layer) with learned query tokens.

    The Q-Former runs at the vision width (BLIP-2 uses a BERT-base width next to a ViT-g; here the tower's own width
    keeps tiny configs tiny), then a linear projection maps the queries to the LLM width, as in BLIP-2 / MiniGPT-4.
    """

    def __init__(self, spec: ConnectorSpec) -> None:
        super().__init__(spec)
        width = spec.vision_dim
        config = Blip2QFormerConfig(
            hidden_size=width,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=_heads(width),
            intermediate_size=4 * width,
            encoder_hidden_size=spec.vision_dim,
            cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.randn(1, spec.num_queries, width) * config.initializer_range)
        self.proj = nn.Linear(width, spec.llm_dim)

    def n_tokens(self, n_features: int) -> int:
        return self.query_tokens.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features).last_hidden_state
        return self.proj(out.to(self.proj.weight.dtype))


CONNECTORS: dict[str, Callable[[ConnectorSpec], Connector]] = {
    "linear": Linear,
    "mlp2x_gelu": MLP2xGelu,
    "resampler": Resampler,
    "qformer": QFormer,
}


def connector_spec(cfg: ConnectorConfig, vision_dim: int, llm_dim: int) -> ConnectorSpec:
    """The manifest's connector section plus the widths it sits between."""
    return ConnectorSpec(cfg.type, vision_dim, llm_dim, cfg.num_queries, cfg.num_layers)


def build_connector(spec: ConnectorSpec) -> Connector:
    """A randomly initialised connector; an unknown type names the manifest field."""
    try:
        factory = CONNECTORS[spec.type]
    except KeyError:
        raise ValueError(
            f"model.connector.type: unknown connector {spec.type!r}; one of {sorted(CONNECTORS)}"
        ) from None
    return factory(spec)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, or of a torch checkpoint loaded with `weights_only=True`.

    A checkpoint holding its weights under `model` or `state_dict` (MiniGPT-4 / TinyGPT-V `.pth`, Lightning) is
    unwrapped. Anything unreadable is a one-line ValueError naming the file.
    """
    path = str(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        # weights_only: torch's restricted unpickler (tensors and plain containers), never arbitrary classes
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"model.connector.init_from: {path}: no such file") from None
    except Exception as e:  # safetensors / torch raise many types for a corrupt or hostile file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"model.connector.init_from: {path}: not a readable state dict: {first}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"model.connector.init_from: {path}: holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_connector_weights(connector: Connector, path: str | Path, rename: Mapping[str, str] | None = None) -> None:
    """Copy the weights of `path` into `connector`, every key exactly (cast to the connector's dtype).

    `rename` maps key prefixes of the file to the connector's (only keys under them are read). A key the connector
    lacks, one it has and the file does not, or a shape that differs, is a one-line ValueError naming the key.
    """
    state = read_state_dict(path)
    if rename:
        state = {new + k[len(old) :]: v for k, v in state.items() for old, new in rename.items() if k.startswith(old)}
    own = connector.state_dict()
    where = f"model.connector.init_from: {path}"
    kind = connector.spec.type
    for key in sorted(state):
        if key not in own:
            raise ValueError(f"{where}: key {key!r} is not in the {kind} connector (its keys: {', '.join(own)})")
    for key, value in own.items():
        if key not in state:
            raise ValueError(f"{where}: no weights for key {key!r} of the {kind} connector")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{where}: key {key!r} has shape {tuple(state[key].shape)}, the {kind} connector's is "
                f"{tuple(value.shape)}"
            )
    connector.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
