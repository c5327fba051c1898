"""End to end on a tiny build: `mixer build` + plans → two stages (LoRA, then the full LLM at a larger image size) →
export → 🤗 `from_pretrained` → generate; resume skips finished stages; a real two-variant `mixer ablate` sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mixer.demo import write_demo_corpus
from mixer.manifest import load_manifest
from mixer.tokenizer import train_tokenizer

pytestmark = pytest.mark.slow

MANIFEST = {
    "name": "tiny",
    "output": "out",
    "data_root": "data",
    "seed": 1,
    "sources": {
        "llava": {"kind": "llava-json", "paths": "llava/llava_v1_5_mix665k.json", "image_root": "llava"},
        "ocrvqa": {"kind": "ocrvqa-json", "paths": "ocrvqa/dataset.json", "image_root": "ocrvqa/images"},
    },
    "shards": {"samples_per_shard": 64, "image": {"size": 48}},
    "model": {
        "vision": {
            "config": {
                "model_type": "clip_vision_model",
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "image_size": 32,
                "patch_size": 16,
            }
        },
        "llm": {
            "config": {
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
                "vocab_size": 600,
            }
        },
        "tokenizer": "data/tokenizer",
    },
    "stages": [
        {
            "name": "adapt",
            "mixture": {"llava": 1, "ocrvqa": 1},
            "size": {"steps": 3},
            "seq_len": 256,
            "template": "tinygptv",
            "image_size": 32,
            "trains": ["connector", "lora"],
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "optimizer": {"lr": 1e-3},
            "micro_batch": 2,
        },
        {
            "name": "full",
            "mixture": {"llava": 1, "ocrvqa": 2},
            "size": {"steps": 3},
            "seq_len": 256,
            "template": "minigptv2",
            "image_size": 48,
            "trains": ["connector", "llm"],
            "optimizer": {"lr": 1e-3},
            "micro_batch": 2,
        },
    ],
    "deepspeed": {"zero_stage": 2, "bf16": False, "gradient_checkpointing": True},
    "ablations": {
        "ocr": {"stage": "full", "grid": {"vary": "ocrvqa", "shares": [0.25]}, "proxy": {"steps": 2, "eval_samples": 4}}
    },
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_local):
    from mixer.build import build, plan

    root = tmp_path_factory.mktemp("pipeline")
    summary = write_demo_corpus(root / "data", base_url="http://127.0.0.1:9", seed=3, scale=0.15)
    texts = (root / "data" / "tokenizer_corpus.txt").read_text().splitlines()
    train_tokenizer(texts, root / "data" / "tokenizer", vocab_size=600)
    (root / "m.yaml").write_text(yaml.safe_dump(MANIFEST, sort_keys=False))
    m = load_manifest(root / "m.yaml")
    build(m)
    plan(m)
    assert summary["counts"]["llava"] > 0
    return root, m


def test_two_stages_export_generate_and_resume(built, monkeypatch):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    from train.model.export import load_export
    from train.pipeline import parse_stages, train

    root, m = built
    monkeypatch.chdir(root)
    report = train(m, parse_stages(m, None), workers=0)
    assert set(report.stages) == {"adapt", "full"} and report.export
    for info in report.stages.values():
        assert info["steps"] == 3 and info["loader"]["skipped_total"] == 0
    export = Path(report.export)
    # launch writes the 🤗-native form: llama + CLIP + mlp2x_gelu fit LlavaForConditionalGeneration
    meta = json.loads((export / "tinymix_export.json").read_text())
    assert meta["form"] == "llava" and meta["image_size"] == 48 and meta["template"] == "minigptv2"
    llava = LlavaForConditionalGeneration.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    assert llava.config.text_config.vocab_size >= len(tok) - 1 and llava.config.vision_config.image_size == 48
    vlm, _ = load_export(export)
    assert vlm.n_image_tokens(48) == 9

    from train.generate import answer

    image = next((root / "data" / "ocrvqa" / "images").iterdir())
    assert isinstance(answer(export, image, "Who wrote this book?", max_new_tokens=4), str)

    again = train(m, parse_stages(m, "1-2"), resume=True, workers=0)
    assert again.stages == {
        "adapt": {"skipped": "finished in an earlier run"},
        "full": {"skipped": "finished in an earlier run"},
    }
    # A stage finished under another configuration trains again from its first step (not from its old checkpoint).
    changed = m.model_copy(deep=True)
    changed.stages[1].optimizer.lr *= 2
    third = train(changed, parse_stages(changed, "1-2"), resume=True, workers=0)
    assert third.stages["adapt"] == {"skipped": "finished in an earlier run"}
    assert third.stages["full"]["steps"] == 3
    # from step 1 on the same weights and batches: the first loss is the first run's (not a reloaded last step's)
    assert third.stages["full"]["first_loss"] == report.stages["full"]["first_loss"]
    assert third.stages["full"]["last_loss"] != report.stages["full"]["last_loss"]  # … then twice the lr


def test_parse_stages(built):
    from train.pipeline import parse_stages

    _, m = built
    assert parse_stages(m, "2") == [1] and parse_stages(m, "adapt,full") == [0, 1] and parse_stages(m, "1-2") == [0, 1]
    for bad in ("3", "full,adapt", "nope"):
        with pytest.raises(ValueError, match="--stages"):
            parse_stages(m, bad)


def test_run_dir_is_out_run_or_the_given_folder_and_a_url_build_needs_one(built, tmp_path):
    from train.pipeline import run_dir

    _, m = built
    assert run_dir(m) == Path(m.output) / "run"
    assert run_dir(m, out=str(tmp_path)) == tmp_path / "run"
    assert run_dir(m, out="s3://bucket/mix", run=str(tmp_path / "ckpt")) == tmp_path / "ckpt"
    with pytest.raises(ValueError, match=r"the build is at s3://bucket/mix: .* pass --run-dir DIR"):
        run_dir(m, out="s3://bucket/mix")


def test_a_rebuilt_plan_changes_the_fingerprint_of_its_stage_and_the_stages_after(built, tmp_path):
    import shutil

    from train.pipeline import stage_fingerprint

    _, m = built
    copy = tmp_path / "out"
    shutil.copytree(Path(m.output) / "stages", copy / "stages")
    before = [stage_fingerprint(m, i, str(copy)) for i in range(2)]
    assert before == [stage_fingerprint(m, i) for i in range(2)]  # the same plans: resume may skip the stages
    summary = copy / "stages" / "adapt" / "plan" / "summary.json"
    summary.write_text(summary.read_text().replace('"seed": ', '"seed": 1', 1))  # another plan of stage 1
    after = [stage_fingerprint(m, i, str(copy)) for i in range(2)]
    assert after[0] != before[0] and after[1] != before[1]


def test_ablate_sweep_runs_real_proxies(built):
    from train.ablate import ablate

    root, m = built
    done = ablate(root / "m.yaml", m, "ocr")
    assert [r.name for r in done["results"]] == ["declared", "ocrvqa-0.25"]
    for r in done["results"]:
        assert r.status == "ok", r.error
        assert set(r.eval_loss) == {"llava", "ocrvqa"} and all(v > 0 for v in r.eval_loss.values())
        assert len(r.loss_curve) == 2 and r.tokens_seen > 0
        assert r.eval_accuracy["llava"] is None and 0 <= r.eval_accuracy["ocrvqa"] <= 1
    assert done["results"][1].realised_shares["ocrvqa"] == pytest.approx(0.25, abs=0.1)
    assert Path(done["paths"]["html"]).read_text().count("variant-") >= 2
    rerun = ablate(root / "m.yaml", m, "ocr")  # finished variants are skipped: same results, no new runs
    assert [r.wall_time_s for r in rerun["results"]] == [r.wall_time_s for r in done["results"]]
