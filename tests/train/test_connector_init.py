"""`model.connector.init_from`: a connector starts from a file's weights exactly, and a bad file is one clear line."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_model_fixtures import model_config, train_tokenizer

from mixer.manifest.model import ModelConfig
from train.model import build_vlm
from train.model.connectors import build_connector, connector_spec


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def _with_init(connector: str, path: Path, rename: dict | None = None) -> ModelConfig:
    cfg = model_config("llama", connector)
    data = cfg.model_dump()
    data["connector"].update(init_from=str(path), init_rename=rename or {})
    return ModelConfig.model_validate(data)


def _reference(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """A connector of the same shape with other random weights: the file the test loads."""
    torch.manual_seed(seed)
    return build_connector(connector_spec(cfg.connector, 32, 64)).state_dict()


@pytest.mark.parametrize(("connector", "fmt"), [("mlp2x_gelu", "safetensors"), ("qformer", "pt"), ("linear", "pt")])
def test_connector_weights_are_the_files_exactly(tok, tmp_path, connector, fmt):
    cfg = model_config("llama", connector)
    want = _reference(cfg, seed=123)
    path = tmp_path / f"connector.{fmt}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in want.items()}, str(path))
    else:
        torch.save(want, path)
    torch.manual_seed(0)
    vlm = build_vlm(_with_init(connector, path), tok, 32)
    got = vlm.connector.state_dict()
    assert set(got) == set(want)
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    torch.manual_seed(0)  # the control: the same build without init_from has other weights
    plain = build_vlm(cfg, tok, 32).connector.state_dict()
    assert any(not torch.equal(plain[k], want[k]) for k in want)


def test_minigpt4_checkpoint_projection_through_rename(tok, tmp_path):
    """MiniGPT-4 / TinyGPT-V `.pth`: `{"model": {"llama_proj.weight": …, other modules …}, "epoch": …}`."""
    cfg = model_config("llama", "linear")
    want = _reference(cfg, seed=7)
    ckpt = {
        "model": {
            "llama_proj.weight": want["proj.weight"],
            "llama_proj.bias": want["proj.bias"],
            "ln.w": torch.ones(3),
        },
        "epoch": 4,
    }
    torch.save(ckpt, tmp_path / "minigpt4.pth")
    vlm = build_vlm(_with_init("linear", tmp_path / "minigpt4.pth", {"llama_proj.": "proj."}), tok, 32)
    assert torch.equal(vlm.connector.proj.weight, want["proj.weight"])
    assert torch.equal(vlm.connector.proj.bias, want["proj.bias"])


class Hostile:
    """Runs code when unpickled by `pickle.load`: writes the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('x')",))


def test_bad_files_are_one_line_naming_the_key(tok, tmp_path):
    cfg = model_config("llama", "mlp2x_gelu")
    good = _reference(cfg, seed=1)
    cases = {
        "shape.safetensors": {**good, "proj.2.weight": torch.zeros(64, 32)},
        "extra.safetensors": {**good, "proj.9.bias": torch.zeros(3)},
        "missing.safetensors": {k: v for k, v in good.items() if k != "proj.0.bias"},
    }
    for name, state in cases.items():
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    expected = {
        "shape.safetensors": "key 'proj.2.weight' has shape (64, 32), the mlp2x_gelu connector's is (64, 64)",
        "extra.safetensors": "key 'proj.9.bias' is not in the mlp2x_gelu connector (its keys: proj.0.weight, "
        "proj.0.bias, proj.2.weight, proj.2.bias)",
        "missing.safetensors": "no weights for key 'proj.0.bias' of the mlp2x_gelu connector",
    }
    for name, message in expected.items():
        with pytest.raises(ValueError) as e:
            build_vlm(_with_init("mlp2x_gelu", tmp_path / name), tok, 32)
        assert str(e.value) == f"model.connector.init_from: {tmp_path / name}: {message}"

    marker = tmp_path / "ran"
    (tmp_path / "hostile.pt").write_bytes(pickle.dumps({"proj.0.weight": Hostile(marker)}, protocol=2))
    with pytest.raises(ValueError) as e:  # torch's weights_only unpickler refuses the class: nothing runs
        build_vlm(_with_init("mlp2x_gelu", tmp_path / "hostile.pt"), tok, 32)
    assert str(e.value).startswith(f"model.connector.init_from: {tmp_path / 'hostile.pt'}: not a readable state dict")
    assert "\n" not in str(e.value) and not marker.exists()


def test_validate_names_a_missing_file_and_a_rename_without_file(tmp_path):
    from mixer.manifest import load_manifest
    from mixer.manifest.errors import ManifestError

    manifest = tmp_path / "m.yaml"
    base = (Path(__file__).parents[2] / "manifests/demo.yaml").read_text()
    text = base.replace("connector: {type: mlp2x_gelu", "connector: {type: mlp2x_gelu, init_from: w/p.safetensors", 1)
    assert text != base  # the demo manifest still declares its connector inline
    manifest.write_text(text)
    with pytest.raises(ManifestError) as e:
        load_manifest(manifest, data_root=str(tmp_path))
    assert f"model.connector.init_from: connector weights file not found: {tmp_path}/w/p.safetensors" in str(e.value)
    with pytest.raises(ValueError, match="init_rename: needs init_from"):
        model_config("llama", "linear").connector.model_validate({"init_rename": {"a.": "b."}})
