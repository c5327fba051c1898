"""Integrity in the loader: with `verify` (a stage's default), a stored member whose bytes differ from its indexed
crc32 is skipped, counted and logged; without it the same flipped byte decodes silently. `mixer verify` names the
same sample."""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter

import numpy as np
from test_loader_fixtures import STAGE, plan_sequences
from typer.testing import CliRunner

from mixer.cli import app
from mixer.lengths import ROW_FIELDS, refresh_rows
from mixer.loader import StageLoader
from shards.index import VERIFY_ENV


def rows_of(copy, source: str) -> np.ndarray:
    [rows] = (copy / "lengths").glob(f"*/{source}/rows.npy")
    return np.load(rows)


def flip_once_placed_image(copy) -> str:
    """Change one byte of the JPEG of a vqa sample the plan places exactly once; return `vqa/KEY`.

    The byte is a quantisation table entry (the first >= 2 after the DQT marker, its low bit flipped): the image
    still decodes, only differently, which is the damage nothing but a checksum can see.
    """
    rows = rows_of(copy, "vqa")
    placed = Counter(int(s["sample"]) for seq in plan_sequences(copy) for s in seq if s["source"] == 0)
    sample = next(i for i, n in sorted(placed.items()) if n == 1 and rows[i]["image_offset"] >= 0)
    row = rows[sample]
    with open(copy / "sources" / "vqa" / f"{int(row['shard']):05d}.tar", "r+b") as f:
        f.seek(int(row["image_offset"]))
        jpeg = f.read(int(row["image_size"]))
        table = jpeg.index(b"\xff\xdb") + 5  # marker, 2 length bytes, precision/id byte
        at = next(i for i in range(table, table + 64) if jpeg[i] >= 2)
        f.seek(int(row["image_offset"]) + at)
        f.write(bytes([jpeg[at] ^ 0x01]))
    return f"vqa/{row['key'].decode()}"


def test_rows_carry_each_members_crc32(out):
    rows = rows_of(out, "vqa")
    assert {"image_crc32", "json_crc32", "txt_crc32"} <= set(rows.dtype.names)
    assert (rows["json_crc32"] >= 0).all()
    assert ((rows["image_crc32"] >= 0) == (rows["image_offset"] >= 0)).all()


def test_flipped_jpeg_byte_is_skipped_counted_and_logged_with_verify(out, tok, tmp_path, caplog, monkeypatch):
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    victim = flip_once_placed_image(copy)
    monkeypatch.delenv(VERIFY_ENV, raising=False)
    meta = copy / "stages" / STAGE / "stage.json"
    assert json.loads(meta.read_text())["verify"] is True  # the stage's default
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "verify": False}))

    silent = StageLoader(str(copy), STAGE, tokenizer=tok, num_workers=0)
    list(silent)
    assert (silent.stats["skipped_total"], silent.stats["checksum_mismatches"]) == (0, 0)  # decoded as if intact

    meta.write_text(json.dumps({**json.loads(meta.read_text()), "verify": True}))
    with caplog.at_level(logging.WARNING, logger="mixer.loader.dataset"):
        checked = StageLoader(str(copy), STAGE, tokenizer=tok, num_workers=2)
        got = list(checked)
    stats = checked.stats
    assert (stats["skipped_total"], stats["checksum_mismatches"]) == (1, 1)
    assert list(stats["skipped"]) == [victim]
    assert stats["skipped"][victim].startswith("ChecksumMismatch: ")
    assert "image crc32" in stats["skipped"][victim]
    assert stats["samples"] == silent.stats["samples"] - 1 and len(got) == silent.stats["batches"]
    assert [r.getMessage().split(": ChecksumMismatch")[0] for r in caplog.records if "skipped" in r.getMessage()] == [
        f"stage {STAGE}: skipped sample {victim}"
    ]

    # the environment switch overrides every stage, both ways
    monkeypatch.setenv(VERIFY_ENV, "0")
    off = StageLoader(str(copy), STAGE, tokenizer=tok, num_workers=0)
    list(off)
    assert off.stats["skipped_total"] == 0
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "verify": False}))
    monkeypatch.setenv(VERIFY_ENV, "1")
    by_env = StageLoader(str(copy), STAGE, tokenizer=tok, num_workers=0)
    list(by_env)
    assert (by_env.stats["checksum_mismatches"], list(by_env.stats["skipped"])) == (1, [victim])

    verified = CliRunner().invoke(app, ["verify", str(copy)])
    assert verified.exit_code == 2
    problems = [line for line in verified.stderr.splitlines() if not line.startswith("verify: ")]
    assert len(problems) == 2 and problems[0].startswith("vqa shard "), problems
    assert f" key {victim.split('/')[1]}: image crc32 " in problems[0], problems
    assert "chat: 24 samples in 2 shards, 0 problems" in verified.stdout


def test_clean_build_verifies(out):
    got = CliRunner().invoke(app, ["verify", str(out)])
    assert got.exit_code == 0, got.stderr
    assert got.stdout.splitlines() == [
        "chat: 24 samples in 2 shards, 0 problems",
        "vqa: 48 samples in 3 shards, 0 problems",
        "72 samples in 5 shards of 2 sources checked",
    ]


def test_rows_written_before_checksums_are_rewritten(out, tmp_path):
    """A length index whose rows.npy predates the checksum fields gets them on the next build; tokens are kept."""
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    [ldir] = (copy / "lengths").glob("*/vqa")
    old = rows_of(copy, "vqa")
    names = [n for n in old.dtype.names if not n.endswith("_crc32")]
    with open(ldir / "rows.npy", "wb") as f:  # as `write_rows` wrote it before the checksums
        np.lib.format.write_array(f, old[names].copy(), version=(2, 0), allow_pickle=False)
    tokens = {p.name: p.read_bytes() for p in ldir.glob("*.tokens")}
    assert refresh_rows(str(copy / "sources" / "vqa"), str(ldir))
    assert rows_of(copy, "vqa").tobytes() == old.tobytes()
    assert {p.name: p.read_bytes() for p in ldir.glob("*.tokens")} == tokens
    assert not refresh_rows(str(copy / "sources" / "vqa"), str(ldir))
    assert len(ROW_FIELDS) == len(old.dtype.names) - 2  # key and image_ext besides the fixed fields
