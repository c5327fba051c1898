"""A SigLIP-384/14 tower (TinyLLaVA's default: 384 is no multiple of 14) plans, builds and trains.

The patch grid floors as in 🤗 (27 × 27 = 729 tokens); the manifest's image-token count, the model's and the embeddings
it emits agree, and one DeepSpeed step on the CPU updates the tower and the connector.
"""

from __future__ import annotations

import pytest
import torch
from test_engine_fixtures import SeededLoader, one_thread, run_here, stage  # noqa: F401 - one_thread is a fixture
from test_model_fixtures import LLMS, train_tokenizer

from mixer.manifest.model import ModelConfig
from mixer.manifest.runtime import DeepSpeedSettings
from mixer.planning import stage_meta
from train.model import build_vlm

SIZE, PATCH, TOKENS = 384, 14, 27 * 27
SIGLIP_384 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": SIZE,
    "patch_size": PATCH,
}


def siglip_config() -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "vision": {"config": SIGLIP_384, "feature_layer": -2},
            "connector": {"type": "mlp2x_gelu"},
            "llm": {"config": {**LLMS["llama"], "max_position_embeddings": 2048}},
            "tokenizer": "unused-the-test-passes-its-own",
        }
    )


class Loader384(SeededLoader):
    """The engine tests' seeded loader with its class-coloured images resized to 384 px."""

    def batch(self, index: int):
        out = super().batch(index)
        out["pixel_values"] = torch.nn.functional.interpolate(out["pixel_values"], size=(SIZE, SIZE), mode="nearest")
        return out


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def test_image_tokens_agree_between_mixer_and_model(tok):
    cfg = siglip_config()
    st = stage(["connector"], steps=1).model_copy(update={"image_size": SIZE, "seq_len": 2048})
    assert cfg.image_tokens_for(SIZE) == TOKENS
    assert stage_meta(st, cfg, ["toy"], 1)["image_tokens"] == TOKENS  # what the plan and the loader use
    torch.manual_seed(0)
    vlm = build_vlm(cfg, tok, SIZE).eval()  # build_vlm itself refuses a planned/emitted mismatch
    assert vlm.n_image_tokens(SIZE) == TOKENS
    with torch.no_grad():
        assert vlm.image_embeddings(torch.randn(1, 3, SIZE, SIZE)).shape == (1, TOKENS, 64)


def test_siglip_384_trains_a_step(tok, tmp_path, one_thread):  # noqa: F811
    torch.manual_seed(0)
    vlm = build_vlm(siglip_config(), tok, SIZE)
    loader = Loader384(tok, vlm.n_image_tokens(SIZE), seed=0, micro_batch=1)
    assert loader.batch(0)["pixel_values"].shape[-2:] == (SIZE, SIZE)
    assert loader.batch(0)["image_positions"].shape[0] == 2  # two images of 729 tokens each in the packed row
    patch_before = vlm.vision.model.embeddings.patch_embedding.weight.detach().clone()
    connector_before = [p.detach().clone() for p in vlm.connector.parameters()]

    st = stage(["connector", "vision"], steps=1, lr=1e-3, global_batch=1)
    result = run_here(vlm, loader, st, DeepSpeedSettings(zero_stage=2, bf16=False), tmp_path)

    assert (result.steps_done, len(result.losses)) == (1, 1)
    assert torch.isfinite(torch.tensor(result.losses)).all()
    assert not torch.equal(vlm.vision.model.embeddings.patch_embedding.weight, patch_before)
    assert any(not torch.equal(p, q) for p, q in zip(vlm.connector.parameters(), connector_before, strict=True))
