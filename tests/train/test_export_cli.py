"""`train export` and `train generate` on hf exports: sources, forms, reduced precision, int8, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from mixer.manifest import load_manifest
from mixer.tokenizer import load_tokenizer
from train.cli import app
from train.generate import answer, usage_hint
from train.model import build_vlm
from train.model.hf_export import write_export
from train.model.hf_load import load_hf
from train.model.hf_quant import int8_backend, weight_bytes

VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 16,
}
LLM = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}
STAGE = {"size": {"steps": 1}, "seq_len": 128, "trains": ["connector"], "micro_batch": 1, "optimizer": {"lr": 1e-3}}


def _manifest(tmp_path, tokenizer_dir, llm=LLM):
    doc = {
        "name": "cli",
        "output": "out",
        "data_root": "data",
        "sources": {"llava": {"kind": "llava-json", "paths": "llava.json", "image_root": "images"}},
        "model": {"vision": {"config": VISION}, "llm": {"config": llm}, "tokenizer": str(tokenizer_dir)},
        "stages": [
            {"name": "warmup", "mixture": {"llava": 1}, "template": "plain", "image_size": 32, **STAGE},
            {"name": "instruct", "mixture": {"llava": 1}, "template": "minigptv2", "image_size": 48, **STAGE},
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, load_manifest(path, check_paths=False)


def _finished_run(tmp_path, tokenizer_dir, llm=LLM):
    """A run folder whose two stages finished: final weights as `train launch` leaves them."""
    path, m = _manifest(tmp_path, tokenizer_dir, llm)
    tok = load_tokenizer(str(tokenizer_dir))
    torch.manual_seed(0)
    vlm = build_vlm(m.model, tok, image_size=48).eval()
    for i, stage in enumerate(m.stages):
        folder = tmp_path / "run" / "checkpoints" / f"{i:02d}-{stage.name}"
        folder.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in vlm.state_dict().items()}, folder / "final.safetensors")
        (folder / "final.json").write_text(json.dumps({"stage": stage.name, "lora": None}))
    return path, vlm, tok


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (60, 50), (20, 90, 200)).save(path)
    return path


def test_export_a_run_writes_the_native_form_of_its_last_stage(tmp_path, tiny_tokenizer, image):
    manifest, vlm, tok = _finished_run(tmp_path, tiny_tokenizer)
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(out), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    summary, where = result.stdout.strip().splitlines()[-2:]  # (after any library warnings)
    assert summary.startswith("llava export (LlavaForConditionalGeneration): clip_vision_model tower")
    assert where == f"export: {out}"
    info = json.loads((out / "tinymix_export.json").read_text())
    assert (info["form"], info["template"], info["image_size"]) == ("llava", "minigptv2", 48)
    # train generate answers through 🤗 what the tinymix model answers (MiniGPT-v2's [vqa] tag included)
    tiny = tmp_path / "tinymix"
    write_export(vlm, tok, tiny, image_size=48, template="minigptv2", mean_std=_clip(), format="tinymix")
    question = "What colour is the sky?"
    assert answer(out, image, question, 6) == answer(tiny, image, question, 6)


def test_export_a_stage_folder_and_a_tinymix_export(tmp_path, tiny_tokenizer):
    manifest, vlm, tok = _finished_run(tmp_path, tiny_tokenizer)
    first = tmp_path / "run" / "checkpoints" / "00-warmup"
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(first), "--out", str(tmp_path / "a"), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "tinymix_export.json").read_text())["template"] == "plain"
    tiny = tmp_path / "tinymix"
    write_export(vlm, tok, tiny, image_size=48, template="llava_v1", mean_std=_clip(), format="tinymix")
    result = runner.invoke(app, ["export", str(tiny), "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "tinymix_export.json").read_text())["template"] == "llava_v1"


def test_phi_exports_as_the_bundle_and_says_why(tmp_path, tiny_tokenizer):
    phi = {k: v for k, v in LLM.items() if k != "num_key_value_heads"} | {"model_type": "phi"}
    manifest, _, _ = _finished_run(tmp_path, tiny_tokenizer, phi)
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(out), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    summary = result.stdout.strip().splitlines()[-2]
    assert summary.startswith("remote-code export") and "lm_head has a bias" in summary
    assert "trust_remote_code=True" in usage_hint(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["export", "{tmp}/nothing", "--out", "{tmp}/o"], "needs --manifest"),
        (["export", "{tmp}", "--out", "{tmp}/o", "--manifest", "{tmp}/m.yaml"], "no finished stage"),
        (["export", "{tmp}/run", "--out", "{tmp}/o", "--manifest", "{tmp}/m.yaml", "--format", "gguf"], "--format"),
    ],
)
def test_export_bad_input_is_one_line_and_exit_2(tmp_path, tiny_tokenizer, args, message):
    _finished_run(tmp_path, tiny_tokenizer)
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args])
    last = result.stderr.strip().splitlines()[-1]  # (after any library warnings)
    assert result.exit_code == 2 and last.startswith("export: ") and message in last
    assert "Traceback" not in result.output


def test_reduced_precision_and_int8(tmp_path, tiny_tokenizer, image):
    tok = load_tokenizer(str(tiny_tokenizer))
    _, m = _manifest(tmp_path, tiny_tokenizer)
    torch.manual_seed(0)
    vlm = build_vlm(m.model, tok, image_size=48).eval()
    write_export(vlm, tok, tmp_path / "e", image_size=48, template="llava_v1", mean_std=_clip())
    fp32, _ = load_hf(tmp_path / "e")
    bf16, _ = load_hf(tmp_path / "e", "bf16")
    int8, _ = load_hf(tmp_path / "e", int8=True)
    params = [sum(p.numel() * p.element_size() for p in m.parameters()) for m in (fp32, bf16)]
    assert bf16.dtype == torch.bfloat16 and params[1] * 2 == params[0]
    # int8 linear weights (plus a scale per output channel) in place of fp32: at least 2 of 4 bytes saved each
    linear = sum(mod.weight.numel() for mod in fp32.modules() if type(mod) is torch.nn.Linear)
    assert weight_bytes(fp32) - weight_bytes(int8) >= 2 * linear
    for kwargs in ({"dtype": "bf16"}, {"int8": True}, {"dtype": "fp16"}):
        assert isinstance(answer(tmp_path / "e", image, "What is it?", 4, **kwargs), str)


def test_int8_backend_choice():
    assert int8_backend(cuda=True, bnb_installed=True, torchao_installed=True) == "bitsandbytes"
    assert int8_backend(cuda=False, bnb_installed=True, torchao_installed=True) == "torchao"
    assert int8_backend(cuda=True, bnb_installed=False, torchao_installed=True) == "torchao"
    with pytest.raises(ValueError, match="torchao"):
        int8_backend(cuda=False, bnb_installed=False, torchao_installed=False)


def _clip():
    from mixer.loader.images import mean_std

    return mean_std("clip_vision_model")
