"""`mixer build` refuses a stage whose plan would hold no sequence (one line, exit 2), so `train launch` never does.

Two ways to get there with a real build: every sample of the stage's source is longer than seq_len with no cut
point (the planner drops them all), or the source stored no sample at all (every image is missing).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mixer.cli import app

PROGRESS = re.compile(
    r"^(shards|lengths|plan)\b.*(/s\]|/s, .*\]|\|| eta | elapsed \d)"
)  # tqdm bars, and shards.progress log lines
LONG = " ".join(["the small red cat sits on the large blue table"] * 8)


def manifest(tmp_path: Path, tokenizer: Path, rows: list[dict], seq_len: int) -> Path:
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/chat.json").write_text(json.dumps(rows))
    data = {
        "name": "empty",
        "output": "out",
        "data_root": "data",
        "sources": {"chat": {"kind": "llava-json", "paths": "chat.json", "image_root": "images"}},
        "model": {
            "vision": {
                "config": {
                    "model_type": "clip_vision_model",
                    "image_size": 32,
                    "patch_size": 16,
                    "hidden_size": 32,
                    "num_attention_heads": 4,
                }
            },
            "llm": {"config": {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}},
            "tokenizer": str(tokenizer),
        },
        "stages": [
            {
                "name": "only",
                "mixture": {"chat": 1},
                "size": {"steps": 2},
                "seq_len": seq_len,
                "template": "plain",
                "image_size": 32,
                "trains": ["connector"],
                "optimizer": {"lr": 1e-3},
            }
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def build_error(path: Path) -> str:
    result = CliRunner().invoke(app, ["build", str(path)])
    assert result.exit_code == 2, result.output
    lines = [line for line in re.split(r"[\r\n]", result.stderr) if line.strip()]
    errors = [line for line in lines if not PROGRESS.search(line)]  # progress bars share stderr, as tqdm's do
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def chat(i: int, answer: str, image: str | None = None) -> dict:
    row = {"id": f"r{i}", "conversations": [{"from": "human", "value": "describe"}, {"from": "gpt", "value": answer}]}
    return {**row, "image": image} if image else row


@pytest.mark.usefixtures("ray_local")
def test_every_sample_dropped_is_an_error_at_build(tmp_path: Path, tiny_tokenizer: Path) -> None:
    path = manifest(tmp_path, tiny_tokenizer, [chat(i, LONG) for i in range(3)], seq_len=24)
    line = build_error(path)
    assert re.fullmatch(
        rf"{re.escape(str(path))}: stages\[0\] \(only\): the plan has 0 sequences: chat 3 samples \(3 tokenised, "
        r"3 dropped \(longer than seq_len 24 with no cut point\)\)",
        line,
    ), line
    assert not (tmp_path / "out/stages/only/stage.json").exists()  # no loader can mistake it for a plan


@pytest.mark.usefixtures("ray_local")
def test_a_source_with_no_sample_is_an_error_at_build(tmp_path: Path, tiny_tokenizer: Path) -> None:
    rows = [chat(i, "a cat", image=f"missing{i}.jpg") for i in range(2)]
    line = build_error(manifest(tmp_path, tiny_tokenizer, rows, seq_len=64))
    assert line.endswith("stages[0] (only): the plan has 0 sequences: chat 0 samples (0 tokenised)"), line
