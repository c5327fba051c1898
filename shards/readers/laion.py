"""laion-parquet: LAION-400M/2B-style Parquet metadata (`URL`, `TEXT`, `SAMPLE_ID`, `WIDTH`, `NSFW`, …) → captions.

Read by record batches, never a whole file. `options.columns` may rename the two needed columns
(`{url: url, caption: caption}` for lower-case files); `SAMPLE_ID` goes to `ids`, every other column to `meta`
(NaN → null). Images are the URLs; `image_root` is not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards.readers.common import Family, Raw, Sample, SourceSpec, caption_sample, finite_or_none, read_rows
from shards.readers.files import open_binary
from shards.record import BadRow, Record

DEFAULT_COLUMNS = {"url": "URL", "caption": "TEXT"}
ID_COLUMNS = ("SAMPLE_ID",)
BATCH_ROWS = 4096


def _columns(spec: SourceSpec) -> dict[str, str]:
    return {**DEFAULT_COLUMNS, **spec.options.columns}


def _open(f: Any, path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(f)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable Parquet file: {e}") from e


def _items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    with open_binary(path) as f:
        pf = _open(f, path)
        names = pf.schema_arrow.names
        for key, column in _columns(spec).items():
            if column not in names:
                raise ValueError(
                    f"{path}: no {key} column {column!r} (columns: {', '.join(names)}); rename with options.columns"
                )
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    yield Raw(row, None, f"parquet row {n}")
                    n += 1
        except (pa.ArrowException, OSError) as e:
            yield Raw(None, None, f"parquet row {n}", f"unreadable from here on: {e}")


def _convert(row: dict[str, Any], path: str, spec: SourceSpec) -> Sample:
    cols = _columns(spec)
    ids = {k: row[k] for k in ID_COLUMNS if row.get(k) is not None}
    taken = {cols["url"], cols["caption"], *ID_COLUMNS}
    meta = {k: finite_or_none(v) for k, v in row.items() if k not in taken}
    return caption_sample(row[cols["url"]], row[cols["caption"]], ids, meta, (cols["url"], cols["caption"]))


LAION = Family(_items, _convert, columns=frozenset(DEFAULT_COLUMNS))


def read_laion(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of a laion-parquet source."""
    return read_rows(spec, LAION)
