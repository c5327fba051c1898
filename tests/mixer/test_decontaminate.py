"""`eval: {decontaminate: true}`: `mixer build` leaves out exactly the training samples whose image file is a copy
of a declared benchmark's image, counts them per source, and changes nothing else."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from mixer.cli import app


def jpeg(seed: int, quality: int = 90) -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", (96, 80), tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(5):
        x, y = rng.randrange(96), rng.randrange(80)
        img.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 20, y + 20))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def chat(i: int, image: str | None) -> dict:
    ask = "<image>\nwhat" if image else "what"
    row = {"id": f"r{i}", "conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": "a"}]}
    return {**row, "image": image} if image else row


def project(tmp_path: Path, tokenizer: Path, decontaminate: bool) -> Path:
    data = tmp_path / "data"
    pope = data / "benchmarks/pope"
    if not data.exists():
        (pope / "val2014").mkdir(parents=True)
        (data / "images").mkdir()
        bench = {"COCO_val2014_1.jpg": jpeg(100), "COCO_val2014_2.jpg": jpeg(101)}
        for name, blob in bench.items():
            (pope / "val2014" / name).write_bytes(blob)
        lines = [
            {"question_id": q, "image": name, "text": "Is there a cat?", "label": "yes"} for q, name in enumerate(bench)
        ]
        (pope / "coco_pope_random.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
        (pope / "coco_pope_popular.json").write_text(json.dumps(lines[0]) + "\n")
        (pope / "coco_pope_adversarial.json").write_text("")
        own = {f"own{i}.jpg": jpeg(i) for i in range(4)}
        own["copy_of_1.jpg"] = bench["COCO_val2014_1.jpg"]  # same bytes under another name: dropped
        own["copy_of_2.jpg"] = bench["COCO_val2014_2.jpg"]
        # The same picture saved again at another quality: other bytes, so the file digest keeps it (documented).
        own["reencoded_2.jpg"] = jpeg(101, quality=80)
        for name, blob in own.items():
            (data / "images" / name).write_bytes(blob)
        first = [chat(0, "own0.jpg"), chat(1, "copy_of_1.jpg"), chat(2, None), chat(3, "own1.jpg")]
        second = [chat(0, "copy_of_2.jpg"), chat(1, "reencoded_2.jpg"), chat(2, "own2.jpg")]
        (data / "first.json").write_text(json.dumps(first))
        (data / "second.json").write_text(json.dumps(second))
    src = {"kind": "llava-json", "image_root": "images"}
    doc = {
        "name": "decon",
        "output": "out",
        "data_root": "data",
        "sources": {"first": {**src, "paths": "first.json"}, "second": {**src, "paths": "second.json"}},
        "shards": {"samples_per_shard": 2, "image": {"size": 32}},
        "model": {
            "vision": {"config": {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 16,
                                  "hidden_size": 32, "num_attention_heads": 4}},
            "llm": {"config": {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}},
            "tokenizer": str(tokenizer),
        },
        "stages": [
            {"name": "only", "mixture": {"first": 1, "second": 1}, "size": {"steps": 2}, "seq_len": 64,
             "template": "plain", "image_size": 32, "trains": ["connector"], "optimizer": {"lr": 1e-3}}
        ],
        "eval": {"benchmarks": {"pope": {"limit": 1}}, "decontaminate": decontaminate},
    }  # fmt: skip
    path = tmp_path / f"m{int(decontaminate)}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def build(path: Path, out: Path) -> str:
    result = CliRunner().invoke(app, ["build", str(path), "--shards-only", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.stdout


def members(out: Path, source: str) -> dict[str, bytes]:
    found = {}
    for tar in sorted((out / "sources" / source).glob("*.tar")):
        with tarfile.open(tar) as t:
            found |= {m.name: t.extractfile(m).read() for m in t.getmembers()}
    return found


def statuses(out: Path, source: str) -> dict[str, tuple[str, str | None]]:
    rows = []
    for f in sorted((out / "sources" / source).glob("*_status.parquet")):
        rows += pq.read_table(f).to_pylist()
    return {r["key"]: (r["status"], r["error_message"]) for r in rows}


@pytest.mark.usefixtures("ray_local")
def test_copies_of_benchmark_images_are_dropped_and_counted_per_source(tmp_path: Path, tiny_tokenizer: Path) -> None:
    clean, plain = tmp_path / "clean", tmp_path / "plain"
    printed = build(project(tmp_path, tiny_tokenizer, decontaminate=True), clean)
    build(project(tmp_path, tiny_tokenizer, decontaminate=False), plain)

    doc = json.loads((clean / "build.json").read_text())
    # Every image of the benchmark is hashed, not only the `limit` questions' ones.
    assert doc["decontamination"]["benchmark_images"] == 2
    assert doc["decontamination"]["excluded"] == {"first": 1, "second": 1}
    assert doc["sources"]["first"]["counts"] == {"success": 3, "excluded_benchmark": 1}
    assert doc["sources"]["second"]["counts"] == {"success": 2, "excluded_benchmark": 1}
    assert "first: 4 rows in 2 shards (0 reused): excluded_benchmark 1, success 3" in printed
    assert "decontamination" not in json.loads((plain / "build.json").read_text())

    first, second = statuses(clean, "first"), statuses(clean, "second")
    same = "same file as benchmark image pope:val2014/COCO_val2014_"
    assert first["0000000001"] == ("excluded_benchmark", same + "1.jpg")
    assert second["0000000000"] == ("excluded_benchmark", same + "2.jpg")
    assert [s for s, _ in first.values()].count("excluded_benchmark") == 1  # every input row has its one status
    assert len(first) == 4 and len(second) == 3

    for source, dropped in (("first", "0000000001"), ("second", "0000000000")):
        kept, everything = members(clean, source), members(plain, source)
        assert {k for k in everything if k.startswith(dropped + ".")}  # the plain build stored it
        assert kept == {k: v for k, v in everything.items() if not k.startswith(dropped + ".")}


@pytest.mark.usefixtures("ray_local")
def test_a_missing_benchmark_image_stops_the_build_naming_it(tmp_path: Path, tiny_tokenizer: Path) -> None:
    path = project(tmp_path, tiny_tokenizer, decontaminate=True)
    (tmp_path / "data/benchmarks/pope/val2014/COCO_val2014_2.jpg").unlink()
    result = CliRunner().invoke(app, ["build", str(path), "--shards-only"])
    assert result.exit_code == 2, result.output
    assert "COCO_val2014_2.jpg: benchmark image unreadable" in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "out/sources").exists()
