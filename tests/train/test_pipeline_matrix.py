"""Every LLM family users pick trains through four demo-like stages, exports and reloads; a `train launch` killed
with SIGKILL in stage 2 and resumed gives bit-identical losses in stages 2, 3 and 4 (fp32, CPU); a TinyLLaVA-share
shaped stage pads its images and trains the tower from a middle layer, leaving the layers before it untouched."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_model_fixtures import LLMS

from mixer.demo import write_demo_corpus
from mixer.manifest import Manifest, load_manifest
from mixer.tokenizer import train_tokenizer

pytestmark = pytest.mark.slow

VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
}


def _stage(name: str, mixture: dict, trains: list[str], template: str, image_size: int = 32, **extra) -> dict:
    return {
        "name": name,
        "mixture": mixture,
        "size": {"steps": 2},
        "seq_len": 256,
        "template": template,
        "image_size": image_size,
        "trains": trains,
        "optimizer": {"lr": 1e-3, "warmup_steps": 1},
        "micro_batch": 2,
        "global_batch": 4,
        **extra,
    }


# The demo's four stages (caption warm-up, pre-train, instruction with LoRA, multi-task at a larger image size) on
# the two sources with local images; 2 steps each, 3 in stage 2 so that a kill lands mid-stage after a checkpoint.
MANIFEST = {
    "name": "matrix",
    "output": "out",
    "data_root": "data",
    "seed": 1,
    "sources": {
        "llava": {"kind": "llava-json", "paths": "llava/llava_v1_5_mix665k.json", "image_root": "llava"},
        "ocrvqa": {"kind": "ocrvqa-json", "paths": "ocrvqa/dataset.json", "image_root": "ocrvqa/images"},
    },
    "shards": {"samples_per_shard": 64, "image": {"size": 48}},
    "model": {
        "vision": {"config": VISION, "feature_layer": -1},
        "llm": {"config": {**LLMS["llama"], "vocab_size": 600}, "attn_implementation": "eager"},
        "tokenizer": "data/tokenizer",
    },
    "stages": [
        _stage("warmup", {"llava": 1}, ["connector"], "plain"),
        _stage(
            "pretrain", {"llava": 1, "ocrvqa": 1}, ["connector", "llm"], "plain", size={"steps": 3}, checkpoint_every=1
        ),
        _stage("instruction", {"llava": 1}, ["connector", "lora"], "tinygptv", lora={"r": 4, "alpha": 8}),
        _stage("multitask", {"llava": 1, "ocrvqa": 2}, ["connector", "llm"], "minigptv2", image_size=48),
    ],
    "deepspeed": {"zero_stage": 2, "bf16": False, "gradient_checkpointing": False},
}


def family(name: str) -> dict:
    """The manifest's `model.llm` for one family (TinyGPT-V's Phi-2 with QK-norm and post-attention RMSNorm)."""
    if name == "phi_tinygptv":
        return {"config": {**LLMS["phi"], "vocab_size": 600}, "qk_norm": True, "post_attn_norm": True}
    return {"config": {**LLMS[name], "vocab_size": 600}, "attn_implementation": "eager"}


def variant(root: Path, name: str, doc: dict) -> Manifest:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_manifest(path)


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    from mixer.build import build, plan

    root = tmp_path_factory.mktemp("matrix")
    write_demo_corpus(root / "data", base_url="http://127.0.0.1:9", seed=3, scale=0.15)
    texts = (root / "data" / "tokenizer_corpus.txt").read_text().splitlines()
    train_tokenizer(texts, root / "data" / "tokenizer", vocab_size=600)
    m = variant(root, "m", MANIFEST)
    build(m)
    plan(m)
    return root, m


def _rows(run: Path, index: int, stage: str) -> list[dict]:
    path = run / "metrics" / f"{index}-{stage}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("llm", ["llama", "qwen2", "qwen2_tied", "gemma", "phi_tinygptv", "stablelm"])
def test_every_family_trains_four_stages_exports_and_reloads(built, llm, monkeypatch):
    from safetensors.torch import load_file

    from train.checkpoint import stage_dir
    from train.model.export import load_export
    from train.model.hf_export import read_info
    from train.model.hf_load import load_hf
    from train.pipeline import parse_stages, train

    root, base = built
    monkeypatch.chdir(root)
    doc = copy.deepcopy(MANIFEST)
    doc["model"]["llm"] = family(llm)
    if llm == "phi_tinygptv":
        doc["stages"][0]["trains"] = ["connector", "norms"]  # TinyGPT-V's stage 1
    m = variant(root, llm, doc)
    report = train(m, parse_stages(m, None), out=str(root / "out"), run=str(root / f"run-{llm}"), workers=0)
    assert [info["steps"] for info in report.stages.values()] == [2, 3, 2, 2]
    assert all(np_finite(info["last_loss"]) for info in report.stages.values())
    vlm, tok = load_export(report.export)  # the hf export, behind TinyVLM's inference methods
    info = read_info(report.export)
    assert (info.template, info.image_preprocess) == ("minigptv2", "crop")  # how to prompt it as trained
    assert info.form == ("remote-code" if llm == "phi_tinygptv" else "llava"), info.reason
    assert vlm.n_image_tokens(48) == 9
    model, _ = load_hf(report.export)
    tied = llm in ("qwen2_tied", "gemma")
    out_w, in_w = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert (out_w.data_ptr() == in_w.data_ptr()) == tied
    # The export holds the trained weights: its input embedding equals the one the last stage ended with.
    last = len(m.stages) - 1
    final = load_file(stage_dir(root / f"run-{llm}", last, m.stages[last].name) / "final.safetensors")
    # (a tied pair is stored under one of its names: save_model keeps one name per shared tensor)
    names = [k for k in final if k.endswith("embed_tokens.weight")] or [
        k for k in final if k.endswith("lm_head.weight")
    ]
    assert len(names) == 1 and torch.equal(final[names[0]], in_w)


def np_finite(x: float | None) -> bool:
    return x is not None and x == x and abs(x) != float("inf")


def _launch(root: Path, manifest: Path, run: Path, *more: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "train.cli", "launch", str(manifest), "--out", str(root / "out")]
    cmd += ["--run-dir", str(run), "--workers", "0", *more]
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_in_stage_2_then_resume_gives_bit_identical_losses(built):
    root, _ = built
    manifest = root / "m.yaml"
    whole = _launch(root, manifest, root / "run-whole")
    log = whole.communicate(timeout=900)[0]
    assert whole.returncode == 0, log

    killed = _launch(root, manifest, root / "run-killed")
    stage2 = root / "run-killed" / "metrics" / "2-pretrain.jsonl"
    deadline = time.monotonic() + 900
    while not (stage2.exists() and len(stage2.read_text().splitlines()) >= 2):  # step 2 done: mid-stage
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0]
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (root / "run-killed" / "checkpoints" / "01-pretrain" / "final.safetensors").exists()

    resumed = _launch(root, manifest, root / "run-killed", "--resume")
    log = resumed.communicate(timeout=900)[0]
    assert resumed.returncode == 0, log
    for index, stage in enumerate(["warmup", "pretrain", "instruction", "multitask"], start=1):
        want = _rows(root / "run-whole", index, stage)
        got = _rows(root / "run-killed", index, stage)
        assert [r["step"] for r in got] == list(range(1, len(want) + 1))  # rolled-back rows replaced, not repeated
        assert [r["loss"] for r in got] == [r["loss"] for r in want], stage  # bit-identical


def test_tinyllava_share_shape_pads_and_trains_the_tower_from_a_middle_layer(built, monkeypatch):
    from train.freeze import vision_layer
    from train.model import build_vlm
    from train.pipeline import _load_final, parse_stages, train

    root, _ = built
    monkeypatch.chdir(root)
    doc = copy.deepcopy(MANIFEST)
    doc["name"] = "share"
    share = _stage(
        "share", {"llava": 1}, ["connector", "llm", "vision"], "plain", image_preprocess="pad", vision_from=2
    )
    doc["stages"] = [_stage("sharepre", {"llava": 1}, ["connector"], "plain", image_preprocess="pad"), share]
    m = variant(root, "share", doc)
    from mixer.build import plan

    plan(m, out="out")  # the shards of the module's build; plans of these two stages beside the others
    meta = json.loads((root / "out" / "stages" / "share" / "stage.json").read_text())
    assert meta["image_preprocess"] == "pad"
    from mixer.loader import StageLoader

    assert StageLoader("out", "share", num_workers=0).spec.image_preprocess == "pad"  # what its workers decode with
    train(m, parse_stages(m, "1"), out="out", run="run-share", workers=0)
    from mixer.tokenizer import load_tokenizer

    tok = load_tokenizer("data/tokenizer")
    before = build_vlm(m.model, tok, image_size=32)
    _load_final(before, root / "run-share" / "checkpoints" / "00-sharepre")
    train(m, parse_stages(m, "2"), out="out", run="run-share", workers=0)
    after = build_vlm(m.model, tok, image_size=32)
    _load_final(after, root / "run-share" / "checkpoints" / "01-share")
    old, new = dict(before.vision.named_parameters()), dict(after.vision.named_parameters())
    for name in old:
        layer = vision_layer(name)
        moved = not torch.equal(old[name], new[name])
        assert moved == (layer is not None and layer >= 2), name  # embeddings, layers 0-1, norms bit-identical
