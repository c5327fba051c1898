"""The per-shard status table (one row per input row, failures included) and the `_stats.json` summary built from it.

Every input row of a shard ends in exactly one status row, so the counts in `_stats.json` add up to `input_rows`.
Error messages are normalised into histogram buckets by one table of patterns (`ERROR_RULES`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

# `excluded_benchmark`: the image file is byte-identical to a declared evaluation benchmark's (`shards.exclude`).
STATUSES = ("success", "failed_to_read", "failed_to_download", "failed_to_process", "excluded_benchmark")

STATUS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error_message", pa.string()),
        pa.field("url", pa.string()),
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("nbytes", pa.int64()),
        pa.field("sha256", pa.string()),
    ]
)


@dataclass
class StatusRow:
    """What happened to one input row.

    `url` is the image URL or local path; sizes are original and stored pixels; `nbytes` is the size of the stored
    (re-encoded) image and `sha256` the hash of the *original* downloaded bytes (img2dataset's convention), so a
    re-encode with other options keeps the same id. Failures carry `error_message`.
    """

    key: str
    row: int
    status: str
    error_message: str | None = None
    url: str | None = None
    orig_width: int | None = None
    orig_height: int | None = None
    width: int | None = None
    height: int | None = None
    nbytes: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(
                f"status row {self.row} (key {self.key}): unknown status {self.status!r}, not in {STATUSES}"
            )


def status_table(rows: Iterable[StatusRow]) -> pa.Table:
    """The status rows, sorted by input row, as a table with `STATUS_SCHEMA` (also when there are none)."""
    ordered = sorted(rows, key=lambda r: r.row)
    return pa.Table.from_pylist([vars(r) for r in ordered], schema=STATUS_SCHEMA)  # flat fields: no asdict copy


def _http(m: re.Match[str]) -> str:
    return f"http {m.group(1)}"


# First match wins. Patterns see the first line of the message, lower-cased.
ERROR_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"\bhttp(?:\s*error)?[\s:_/-]*(\d{3})\b"), _http),
    (re.compile(r"^(\d{3}) (?:client|server) error\b"), _http),
    (re.compile(r"\bstatus(?: code)?[\s:=]*(\d{3})\b"), _http),
    (re.compile(r"timed? ?out|timeout"), lambda m: "timeout"),
)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
_PATH = re.compile(r"(?<![\w.])(?:/[^\s/:'\"]+){2,}")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
MAX_ERROR_CHARS = 120


def normalise_error(message: str | None) -> str:
    """The histogram bucket of an error message.

    `http 404`, `timeout`, or the first line with URLs, paths and numbers replaced by `<url>`, `<path>` and `N`
    (so "image too small: 12x10" and "image too small: 30x8" count together).
    """
    text = message.strip().splitlines()[0].lower() if message and message.strip() else ""
    if not text:
        return "unknown"
    for pattern, label in ERROR_RULES:
        m = pattern.search(text)
        if m:
            return label(m)
    text = _NUMBER.sub("N", _PATH.sub("<path>", _URL.sub("<url>", text)))
    return " ".join(text.split())[:MAX_ERROR_CHARS]


def shard_stats(rows: Iterable[StatusRow], timings: Mapping[str, float], **extra: Any) -> dict[str, Any]:
    """The `_stats.json` content.

    `input_rows`, `stored`, `counts` by status (every status present, zeros included), `errors` (normalised
    message → count, failures only), `timings`, plus any `extra` fields.
    """
    rows = list(rows)
    counts = Counter(r.status for r in rows)
    errors = Counter(normalise_error(r.error_message) for r in rows if r.status != "success")
    stats = {
        "input_rows": len(rows),
        "stored": counts["success"],
        "counts": {s: counts[s] for s in STATUSES},
        "errors": dict(sorted(errors.items())),
        "timings": {k: float(v) for k, v in timings.items()},
        **extra,
    }
    assert sum(stats["counts"].values()) == stats["input_rows"]
    return stats
