"""The supervision audit: exact counts and keys from the stored length index and token files.

A synthetic index (written with the real stored-form writers) whose rows were built to be cut, dropped, unlabelled
or mismatched gives exactly the expected counts and keys; on a real build (shards -> `write_source_lengths`) with a
too-short seq_len, the audit of the stored tokens equals a re-tokenisation of every stored record with `encode`.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_loader_fixtures import IMAGE_TOKENS, built_stage, stored_samples
from typer.testing import CliRunner

from mixer.cli import app
from mixer.inspect import inspect_build
from mixer.inspect.audit import audit_source, cut_point
from mixer.lengths import FORMAT_META, LENGTH_FORMAT, LENGTH_SCHEMA
from mixer.templates import IGNORE_INDEX, encode
from mixer.templates.stored import pack_record, pack_tokens, token_dtype
from mixer.tokenizer import load_tokenizer

MISMATCH = "sample {!r}: tokenization mismatch at turn 1 (token 7): turn by turn [1, 2] but the whole text gives [3]"

# key -> (length, loss spans, turn ends, error); seq_len 20, image runs of 8 ids come first where a sample has one
ROWS = {
    "ok-short": (12, [9, 12], [12], None),  # 3 labelled, fits
    "ok-two-turns": (20, [10, 14, 17, 20], [14, 20], None),  # 7 labelled, exactly seq_len
    "cut-second": (30, [10, 14, 20, 30], [14, 30], None),  # cut at 14: keeps 4 of 14
    "dropped": (26, [12, 26], [26], None),  # no turn end <= 20: dropped, 14 lost
    "no-label": (10, [], [10], None),  # a template that labels nothing
    "mismatch-a": (0, [], [], MISMATCH.format("mismatch-a")),
    "mismatch-b": (0, [], [], MISMATCH.format("mismatch-b")),
    "bad-image": (0, [], [], "sample 'bad-image': 2 <image> placeholders but 1 image"),
}
SEQ_LEN = 20


def write_index(ldir) -> str:
    """`lengths.parquet` + one token file, in the format `mixer.lengths` writes."""
    ldir.mkdir(parents=True)
    dtype = token_dtype(2000)
    records, table = [], {n: [] for n in LENGTH_SCHEMA.names}
    for key, (length, spans, ends, err) in ROWS.items():
        ids = np.arange(length, dtype=np.int32) % 2000
        records.append(pack_record(key, ids, np.array(spans, dtype=np.int32), ends, dtype))
        for name, v in zip(LENGTH_SCHEMA.names, (key, length, 1, ends, err), strict=True):
            table[name].append(v)
    (ldir / "00000.tokens").write_bytes(pack_tokens(records, dtype))
    import pyarrow as pa

    schema = LENGTH_SCHEMA.with_metadata({FORMAT_META: str(LENGTH_FORMAT).encode()})
    pq.write_table(pa.table(table, schema=schema), ldir / "lengths.parquet")
    return str(ldir / "lengths.parquet")


def test_synthetic_index_gives_exact_counts_and_keys(tmp_path):
    a = audit_source(write_index(tmp_path / "src"), SEQ_LEN, "truncate")
    assert (a["rows"], a["tokenised"], a["over_seq_len"]) == (8, 5, 2)
    assert a["mismatches"]["count"] == 2
    assert [(e["key"], e["turn"]) for e in a["mismatches"]["examples"]] == [("mismatch-a", 1), ("mismatch-b", 1)]
    assert a["other_errors"]["count"] == 1 and a["other_errors"]["examples"][0]["key"] == "bad-image"
    assert a["zero_supervised"]["count"] == 2
    assert [e["key"] for e in a["zero_supervised"]["examples"]] == ["dropped", "no-label"]
    assert a["answers_cut"]["count"] == 2
    cut = {e["key"]: (e["kept"], e["lost"]) for e in a["answers_cut"]["examples"]}
    assert cut == {"cut-second": (14, 10), "dropped": (0, 14)}
    s = a["supervised"]
    assert (s["tokens_before"], s["tokens_after"], s["kept_tokens"]) == (3 + 7 + 14 + 14, 3 + 7 + 4, 12 + 20 + 14 + 10)
    assert s["deciles"][0] == 0 and s["deciles"][-1] == 7 and s["mean"] == pytest.approx(14 / 5)
    # overlong: drop loses the truncated sample's answers too
    d = audit_source(str(tmp_path / "src" / "lengths.parquet"), SEQ_LEN, "drop")
    assert d["answers_cut"]["count"] == 2 and d["zero_supervised"]["count"] == 3
    assert d["supervised"]["tokens_after"] == 10


def test_cut_point_follows_the_planner_rule():
    ends = np.array([5, 9, 15])
    assert cut_point(15, ends, 20, "truncate") == 15
    assert cut_point(15, ends, 10, "truncate") == 9
    assert cut_point(15, ends, 4, "truncate") == 0
    assert cut_point(15, ends, 10, "drop") == 0


@pytest.fixture(scope="module")
def short_build(tmp_path_factory, tiny_tokenizer):
    """The loader tests' real build (shards, length index with token files, a plan of stage s1 at seq_len 96)."""
    return built_stage(tmp_path_factory, tiny_tokenizer)


def reference(out, tokenizer, source: str, seq_len: int) -> dict:
    """Re-tokenise every stored record with `encode` and apply the planner's cut: the audit's expected figures."""
    tok = load_tokenizer(str(tokenizer))
    keys, samples = stored_samples(out, source)
    zero, cut, after_total = [], [], 0
    for key in keys:
        rec = json.loads(samples[key]["json"])
        enc = encode(rec["conversation"], tok, "tinygptv", IMAGE_TOKENS, task=rec.get("task"))
        labels = np.asarray(enc.labels)
        keep = cut_point(len(labels), np.asarray(enc.turn_ends), seq_len, "truncate")
        before, after = int((labels != IGNORE_INDEX).sum()), int((labels[:keep] != IGNORE_INDEX).sum())
        after_total += after
        zero += [key] if after == 0 else []
        cut += [key] if after < before else []
    return {"zero": zero, "cut": cut, "after": after_total}


def test_audit_of_a_real_build_equals_re_tokenisation(short_build, tiny_tokenizer):
    """Audited at seq_len 40 (8 image tokens included), too short for many answers."""
    meta = json.loads((short_build / "stages" / "s1" / "stage.json").read_text())
    for source in ("vqa", "chat"):
        a = audit_source(meta["lengths"][source], 40, "truncate")
        ref = reference(short_build, tiny_tokenizer, source, 40)
        assert ref["zero"] and ref["cut"]  # the short seq_len does zero and cut answers
        assert a["zero_supervised"]["count"] == len(ref["zero"])
        assert [e["key"] for e in a["zero_supervised"]["examples"]] == ref["zero"][:5]
        assert a["answers_cut"]["count"] == len(ref["cut"])
        assert [e["key"] for e in a["answers_cut"]["examples"]] == ref["cut"][:5]
        assert a["supervised"]["tokens_after"] == ref["after"]


def test_inspect_shows_the_audit_and_flags_a_low_share(short_build):
    st = inspect_build(short_build, min_share=0.99)["audit"]["s1"]
    assert 0 < st["share"] < 0.99 and st["flags"][0].startswith("supervised share")
    assert st["sources"]["vqa"]["supervised"]["tokens_after"] > 0
    result = CliRunner().invoke(app, ["inspect", str(short_build), "--no-plots", "--min-supervised-share", "0.99"])
    assert result.exit_code == 0, result.output
    assert "supervision audit of stage s1 (seq_len 96, overlong truncate)" in result.output
    assert f"FLAG: {st['flags'][0]}" in result.output
    assert json.loads(CliRunner().invoke(app, ["inspect", str(short_build), "--json", "--no-plots"]).output)["audit"]


def test_build_warns_with_the_audit_flags(short_build, monkeypatch, capsys):
    import mixer.inspect.audit as audit_mod
    from mixer.cli import _after_build

    monkeypatch.setattr(audit_mod, "MIN_SHARE", 0.99)
    flags = inspect_build(short_build)["audit"]["s1"]["flags"]
    _after_build(str(short_build))
    assert flags and capsys.readouterr().err.splitlines() == [f"warning: stage s1: {f}" for f in flags]
    _after_build(str(short_build / "nowhere"))
    assert capsys.readouterr().err.startswith("warning: no supervision audit: ")
