"""Supervision audit: how many tokens of each source carry loss once the stage's `seq_len` has cut them.

The silent failure of VLM fine-tuning (LLaVA #375, #661, #816, #1166) is a sample that trains with no label at all:
its answer truncated away, or its template's per-turn tokenisation disagreeing with the whole text. The audit reads
what the build already stored, never tokenising again: the merged length index (length, error) and the per-shard token
files beside it (`mixer.templates.stored`: the loss spans in expanded coordinates, image tokens included, and the
turn ends). For every sample it applies the planner's overlong rule (`mixer.plan.order`: cut at the largest turn end
<= seq_len under `overlong: truncate`, else dropped) and counts the labelled tokens before and after.

Per source: supervised tokens per sample after the cut (deciles, mean), samples with zero supervised tokens after it,
samples whose answers `seq_len` cut (some labels lost, or dropped whole), per-turn tokenisation mismatches and other
tokenisation errors, each with example keys. Per stage: the supervised share of the tokens the plan placed (each
source's placed tokens times its supervised fraction), flagged below `min_share`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mixer.inspect import InspectError
from mixer.templates.stored import HEADER, read_header, unpack_record
from shards import fs

EXAMPLES = 5  # example keys listed per finding
MIN_SHARE = 0.01  # a stage whose supervised share of placed tokens is below this is flagged
DECILES = tuple(range(0, 101, 10))
MISMATCH = re.compile(r"tokenization mismatch at turn (\d+)")


def cut_point(length: int, turn_ends: np.ndarray, seq_len: int, overlong: str) -> int:
    """Tokens the planner keeps of a sample: all of it, its largest turn end <= seq_len (truncate), or 0 (dropped)."""
    if length <= seq_len:
        return length
    if overlong != "truncate":
        return 0
    ends = turn_ends[(turn_ends > 0) & (turn_ends <= seq_len)]
    return int(ends.max()) if ends.size else 0


def supervised(spans: np.ndarray, upto: int) -> int:
    """Labelled tokens of the flattened (start, end) loss spans that lie before `upto`."""
    pairs = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    return int(np.clip(np.minimum(pairs[:, 1], upto) - pairs[:, 0], 0, None).sum())


def _token_records(ldir: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(key, loss spans, turn ends) of every record of the folder's token files, shard by shard in order."""
    from mixer.lengths import TOKENS_SUFFIX  # imports Ray: only when a token file is read

    out = []
    for name in sorted(n for n in fs.list_names(ldir) if n.endswith(TOKENS_SUFFIX)):
        url = fs.join(ldir, name)
        data = fs.read_bytes(url)
        dtype, rows = read_header(data, url)
        offsets = np.frombuffer(data, dtype="<u8", count=rows + 1, offset=HEADER.itemsize)
        for j in range(rows):
            key, _, spans, ends = unpack_record(data[int(offsets[j]) : int(offsets[j + 1])], dtype)
            out.append((key, spans, ends))
    return out


def _examples(found: dict[str, Any], key: str, **extra: Any) -> None:
    found["count"] += 1
    if len(found["examples"]) < EXAMPLES:
        found["examples"].append({"key": key, **extra})


def _finding() -> dict[str, Any]:
    return {"count": 0, "examples": []}


def audit_source(lengths_url: str, seq_len: int, overlong: str = "truncate") -> dict[str, Any]:
    """The audit of one source's length index (see the module docstring); JSON-able.

    An index without token files (an older format) has no loss spans: only its errors and overlong counts are given,
    with `supervised` None.
    """
    fsys, path = fs.resolve(lengths_url)
    with fsys.open(path, "rb") as f:
        table = pq.read_table(f, columns=["key", "length", "error"])
    keys = table.column("key").to_pylist()
    lengths = table.column("length").to_numpy().astype(np.int64)
    errors = table.column("error").to_pylist()
    res: dict[str, Any] = {"rows": len(keys), "tokenised": int(sum(e is None for e in errors))}
    res["mismatches"], res["other_errors"] = _finding(), _finding()
    for key, err in zip(keys, errors, strict=True):
        if err is not None:
            m = MISMATCH.search(err)
            if m:
                _examples(res["mismatches"], key, turn=int(m.group(1)), error=err)
            else:
                _examples(res["other_errors"], key, error=err)
    res["over_seq_len"] = int(((lengths > seq_len) & np.array([e is None for e in errors], dtype=bool)).sum())
    res["supervised"] = None
    from mixer.lengths import has_tokens

    if not has_tokens(lengths_url):
        return res
    records = _token_records(lengths_url.rsplit("/", 1)[0])
    if len(records) != len(keys):
        raise ValueError(f"{lengths_url}: {len(keys)} rows but {len(records)} token records beside it (rebuild)")
    zero, cut, per_sample = _finding(), _finding(), []
    before_total = after_total = kept_tokens = 0
    for key, length, err, (rkey, spans, ends) in zip(keys, lengths.tolist(), errors, records, strict=True):
        if err is not None:
            continue
        if rkey != key:
            raise ValueError(f"{lengths_url}: row {key!r} but its token record is {rkey!r} (rebuild)")
        keep = cut_point(length, np.asarray(ends), seq_len, overlong)
        before, after = supervised(spans, length), supervised(spans, keep)
        before_total, after_total, kept_tokens = before_total + before, after_total + after, kept_tokens + keep
        per_sample.append(after)
        if after == 0:
            _examples(zero, key, length=length, kept=keep, supervised_before=before)
        if after < before:
            _examples(cut, key, length=length, kept=keep, lost=before - after)
    dist = np.asarray(per_sample, dtype=np.int64)
    res["supervised"] = {
        "tokens_before": before_total,
        "tokens_after": after_total,
        "kept_tokens": kept_tokens,
        "fraction": after_total / kept_tokens if kept_tokens else 0.0,
        "mean": float(dist.mean()) if dist.size else None,
        "deciles": [int(np.percentile(dist, q, method="lower")) for q in DECILES] if dist.size else None,
    }
    res["zero_supervised"], res["answers_cut"] = zero, cut
    return res


def audit_stage(stage_dir: str, st: dict[str, Any], min_share: float = MIN_SHARE) -> dict[str, Any]:
    """The audit of one stage of `inspect_build`'s report: per source, the stage's supervised share and its flags."""
    meta = json.loads(fs.read_bytes(fs.join(stage_dir, "stage.json")))
    seq_len, overlong = int(st["spec"]["seq_len"]), st["spec"].get("overlong", "truncate")
    try:
        sources = {n: audit_source(meta["lengths"][n], seq_len, overlong) for n in st["sources"]}
    except (OSError, ValueError) as e:
        raise InspectError(f"{stage_dir}: supervision audit: {e}") from None
    share = None
    if all(a["supervised"] is not None for a in sources.values()):
        placed = sum(st["sources"][n]["tokens"] for n in sources)
        labelled = sum(st["sources"][n]["tokens"] * a["supervised"]["fraction"] for n, a in sources.items())
        share = labelled / placed if placed else 0.0
    flags = []
    if share is not None and share < min_share:
        flags.append(f"supervised share {share:.2%} of placed tokens is below {min_share:.2%}")
    for n, a in sources.items():
        for what, label in (
            ("mismatches", "per-turn tokenisation mismatches"),
            ("zero_supervised", "samples with no supervised token"),
        ):
            f = a.get(what)
            if f and f["count"]:
                keys = ", ".join(e["key"] for e in f["examples"])
                flags.append(f"{n}: {f['count']} {label} (e.g. {keys})")
    return {
        "seq_len": seq_len,
        "overlong": overlong,
        "min_share": min_share,
        "share": share,
        "flags": flags,
        "sources": sources,
    }


def audit_report(report: dict[str, Any], min_share: float = MIN_SHARE) -> dict[str, Any]:
    """Stage name -> `audit_stage` of every stage of an `inspect_build` report."""
    return {name: audit_stage(st["dir"], st, min_share) for name, st in report["stages"].items()}


def _keys(f: dict[str, Any]) -> str:
    more = ", …" if f["count"] > len(f["examples"]) else ""
    return ", ".join(e["key"] for e in f["examples"]) + more


def audit_lines(name: str, audit: dict[str, Any]) -> list[str]:
    """The audit of one stage as text lines for `mixer inspect`."""
    share = "unknown (no token files)" if audit["share"] is None else f"{audit['share']:.2%}"
    lines = [
        f"supervision audit of stage {name} (seq_len {audit['seq_len']}, overlong {audit['overlong']}): "
        f"supervised share of placed tokens {share}"
    ]
    for n, a in audit["sources"].items():
        s = a["supervised"]
        head = f"  {n}: {a['tokenised']:,}/{a['rows']:,} tokenised"
        if s is not None:
            head += (
                f", supervised tokens per sample p0/p50/p100 {s['deciles'][0]}/{s['deciles'][5]}/{s['deciles'][-1]}"
                if s["deciles"]
                else ""
            )
            head += f", {s['fraction']:.2%} of kept tokens supervised"
        lines.append(head)
        for what, label in (
            ("zero_supervised", "zero supervised tokens after the cut"),
            ("answers_cut", "answers cut by seq_len"),
            ("mismatches", "per-turn tokenisation mismatches"),
            ("other_errors", "other tokenisation errors"),
        ):
            f = a.get(what)
            if f and f["count"]:
                lines.append(f"    {label}: {f['count']} ({_keys(f)})")
    lines += [f"  FLAG: {f}" for f in audit["flags"] if f.startswith("supervised share")]
    return lines
