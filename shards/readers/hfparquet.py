"""hf-parquet: 🤗 `datasets`-style Parquet with the images inside (LLaVA-OneVision-Data, The Cauldron, FineVision).

Images are `datasets.Image` columns, stored as `{bytes, path}` structs: one per row in `image` (LLaVA-OneVision;
null for its text-only rows) or a list in `images` (The Cauldron, FineVision). The embedded bytes go straight to the
image stage: no URL is fetched and no file is read (`image` in the record is only the struct's `path`, a label). A
struct without bytes is a bad row. The conversation is either

- `conversations: [{from: human|gpt, value}]` (LLaVA-OneVision; `[{role, content}]` is read too), with `<image>`
  in the first human turn, or
- `texts: [{user, assistant, source}]` (The Cauldron), with no placeholder: one is put at the start of the first
  user turn. The per-turn `source` values go to `meta['text_sources']`.

`options.columns` renames any of `image`, `images`, `conversations`, `texts`, `id` for other layouts (e.g.
`{conversations: messages, image: jpg}`); a file with neither conversation column is a `ValueError` naming its
columns. `id` goes to `ids`; other columns go to `meta` (binary ones are left out). Files are read one record batch
at a time (`ParquetFile.iter_batches`), so memory holds about one row group, never a whole file.

A row with more than one image is a bad row for now (`multi-image samples not supported yet (N images)`): the
shards and the loader hold one image per sample. `image_root` is not used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from shards.readers.chat import place_images, qa_turns, sharegpt_turns
from shards.readers.common import Family, Raw, RowError, Sample, SourceSpec, finite_or_none, read_rows
from shards.readers.files import open_binary
from shards.record import BadRow, Record

DEFAULT_COLUMNS = {
    "image": "image",
    "images": "images",
    "conversations": "conversations",
    "texts": "texts",
    "id": "id",
}
# Rows of embedded images are large (a Cauldron row can hold several MB): small batches bound the memory held.
BATCH_ROWS = 64


def _columns(spec: SourceSpec) -> dict[str, str]:
    return {**DEFAULT_COLUMNS, **spec.options.columns}


def _items(path: str, spec: SourceSpec) -> Iterator[Raw]:
    cols = _columns(spec)
    with open_binary(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{path}: not a readable Parquet file: {e}") from e
        names = pf.schema_arrow.names
        if cols["conversations"] not in names and cols["texts"] not in names:
            raise ValueError(
                f"{path}: no conversation column {cols['conversations']!r} or {cols['texts']!r} "
                f"(columns: {', '.join(names)}); rename with options.columns"
            )
        n = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    yield Raw(row, None, f"parquet row {n}")
                    n += 1
        except (pa.ArrowException, OSError) as e:
            yield Raw(None, None, f"parquet row {n}", f"unreadable from here on: {e}")


def _embedded(value: Any, where: str) -> tuple[bytes, str | None]:
    """(bytes, path) of one `datasets.Image` cell: a `{bytes, path}` struct, or plain binary."""
    if isinstance(value, bytes):
        return value, None
    if not isinstance(value, dict) or "bytes" not in value:
        raise RowError(f"{where} is {type(value).__name__}, expected a {{bytes, path}} struct")
    data, label = value.get("bytes"), value.get("path")
    if not data:
        raise RowError(f"{where} has no embedded bytes (path {label!r}); only embedded images are read")
    return data, label if isinstance(label, str) and label else None


def _images(row: dict[str, Any], cols: dict[str, str]) -> list[tuple[bytes, str]]:
    single, many = row.get(cols["image"]), row.get(cols["images"])
    if single is not None and many:
        raise RowError(f"both {cols['image']!r} and {cols['images']!r} are set")
    if single is not None:
        data, label = _embedded(single, cols["image"])
        return [(data, label or cols["image"])]
    if many is None:
        return []
    if not isinstance(many, list):
        raise RowError(f"{cols['images']!r} is {type(many).__name__}, expected a list")
    out = []
    for i, cell in enumerate(many):
        where = f"{cols['images']}[{i}]"
        if cell is None:
            raise RowError(f"{where} is null")
        data, label = _embedded(cell, where)
        out.append((data, label or where))
    return out


def _conversation(row: dict[str, Any], cols: dict[str, str], meta: dict[str, Any]) -> list[dict[str, str]]:
    if row.get(cols["conversations"]) is not None:
        return sharegpt_turns(row[cols["conversations"]], cols["conversations"])
    texts = row.get(cols["texts"])
    if not isinstance(texts, list):
        raise RowError(f"no {cols['conversations']!r} and {cols['texts']!r} is {type(texts).__name__}, not a list")
    pairs = []
    for i, turn in enumerate(texts):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("user"), str)
            or not isinstance(turn.get("assistant"), str)
        ):
            raise RowError(f"{cols['texts']}[{i}] is not a {{user, assistant}} pair of strings")
        pairs.append((turn["user"], turn["assistant"]))
    sources = [t["source"] for t in texts if isinstance(t.get("source"), str)]
    if sources:
        meta["text_sources"] = sources
    return qa_turns(pairs, cols["texts"])


def _jsonable(value: Any) -> bool:
    if isinstance(value, bytes):
        return False
    if isinstance(value, dict):
        return all(_jsonable(v) for v in value.values())
    if isinstance(value, list):
        return all(_jsonable(v) for v in value)
    return True


def _convert(row: dict[str, Any], path: str, spec: SourceSpec) -> Sample:
    cols = _columns(spec)
    taken = set(cols.values())
    meta = {k: finite_or_none(v) for k, v in row.items() if k not in taken and _jsonable(v)}
    conversation = _conversation(row, cols, meta)
    images = _images(row, cols)
    at = place_images(conversation, len(images))
    ids = {"id": row[cols["id"]]} if row.get(cols["id"]) is not None else {}
    if not images:
        return Sample(conversation, None, ids, meta)
    meta["image_at"] = at
    data, label = images[0]
    return Sample(conversation, label, ids, meta, None, data)


HF_PARQUET = Family(_items, _convert, columns=frozenset(DEFAULT_COLUMNS))


def read_hf_parquet(spec: SourceSpec) -> Iterator[Record | BadRow]:
    """Records of an hf-parquet source."""
    return read_rows(spec, HF_PARQUET)
