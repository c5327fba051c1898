"""`Encoded` ↔ the compact form the length index stores, and the per-shard token file that holds it.

The loader serves build-time tokens from it without tokenising.

Stored form of one sample (see `mixer.lengths`):

- `input_ids`: the ids with each image's run of `n_image_tokens` image ids collapsed to ONE image id — what the
  tokenizer gave piece by piece; a LAION-size index then holds a handful of ints per caption, not 576 more per image;
- `loss_spans`: flattened `(start, end)` pairs, in the *expanded* ids (the coordinates of `length` and `turn_ends`),
  of the maximal runs whose label is the id itself; every other label is IGNORE_INDEX;
- `turn_ends`: as `Encoded.turn_ends` (the length index stores them for the planner anyway).

Every image id in the collapsed ids starts an image run (`encode` expands each image id it meets), so expanding needs
nothing but the tokenizer's image id and `n_image_tokens`. `from_stored(*to_stored(enc), …)` equals `enc`.

Token file (`<shard>.tokens`, one per shard, rows in the shard's index order): a 16-byte header (magic, version, id
width, rows), `rows + 1` uint64 byte offsets, then one record per row (`pack_record`: counts, spans, turn ends, ids
as uint16 when the vocabulary fits else uint32, the sample's key). Reading row `j` is one ranged read of
`[off[j], off[j+1])`; the key lets the reader check that the row is the sample it expects. Pure bytes, no I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixer.templates.encode import IGNORE_INDEX, Encoded


def to_stored(enc: Encoded, n_image_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(collapsed input_ids int32, loss_spans int32 flattened pairs) of an encoded sample."""
    ids = np.asarray(enc.input_ids, dtype=np.int32)
    labels = np.asarray(enc.labels, dtype=np.int32)
    keep = np.ones(len(ids), dtype=bool)
    for s in enc.image_starts:
        assert (ids[s : s + n_image_tokens] == ids[s]).all(), f"image run at {s} is not {n_image_tokens} image ids"
        keep[s + 1 : s + n_image_tokens] = False
    labelled = labels != IGNORE_INDEX
    assert (labels[labelled] == ids[labelled]).all(), "a label is neither IGNORE_INDEX nor its input id"
    edges = np.flatnonzero(np.diff(np.concatenate([[0], labelled.view(np.int8), [0]])))
    return ids[keep], edges.astype(np.int32)


def from_stored(
    input_ids: np.ndarray, loss_spans: np.ndarray, turn_ends: Sequence[int], image_id: int, n_image_tokens: int
) -> Encoded:
    """The `Encoded` of a stored sample: ids and labels as int32 arrays, image starts and turn ends as lists.

    The arrays may be views of the caller's buffers; nothing here writes to them.
    """
    input_ids = np.asarray(input_ids).astype(np.int32, copy=False)  # uint16 / uint32 in a token file
    at = np.flatnonzero(input_ids == image_id)
    if len(at):
        counts = np.ones(len(input_ids), dtype=np.int64)
        counts[at] = n_image_tokens
        ids = np.repeat(input_ids, counts)
        starts = (at + np.arange(len(at)) * (n_image_tokens - 1)).tolist()
    else:
        ids, starts = input_ids, []
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    for s, e in np.asarray(loss_spans).reshape(-1, 2).tolist():
        labels[s:e] = ids[s:e]
    return Encoded(
        input_ids=ids, labels=labels, image_starts=starts, turn_ends=np.asarray(turn_ends, dtype=np.int64).tolist()
    )


# ---- the per-shard token file: every sample's stored form back to back, addressable by row

TOKEN_MAGIC = b"TMXTOK"
TOKEN_VERSION = 1
HEADER = np.dtype([("magic", "S6"), ("version", "u1"), ("itemsize", "u1"), ("rows", "<u8")])  # 16 bytes
_COUNTS = np.dtype("<u4")  # per record: n ids, n span values, n turn ends, n key bytes


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id of a `vocab_size` vocabulary fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def pack_record(key: str, ids: np.ndarray, spans: np.ndarray, turn_ends: Sequence[int], dtype: np.dtype) -> bytes:
    """One sample's record: 4 uint32 counts, spans and turn ends (int32), ids (`dtype`), the key (UTF-8), padded to 4.

    The int32 parts come first, so every array of a record that starts 4-aligned is aligned.
    """
    if len(ids) and int(ids.max()) > np.iinfo(dtype).max:
        raise ValueError(f"sample {key}: id {int(ids.max())} does not fit the token file's {dtype.name} ids")
    kb = key.encode("utf-8")
    counts = np.array([len(ids), len(spans), len(turn_ends), len(kb)], dtype=_COUNTS)
    body = b"".join(
        (
            counts.tobytes(),
            np.asarray(spans, dtype="<i4").tobytes(),
            np.asarray(turn_ends, dtype="<i4").tobytes(),
            np.asarray(ids).astype(dtype).tobytes(),
            kb,
        )
    )
    return body + b"\0" * (-len(body) % 4)


def pack_tokens(records: Sequence[bytes], dtype: np.dtype) -> bytes:
    """A token file: the 16-byte `HEADER`, `rows + 1` uint64 byte offsets (row `j` is `[off[j], off[j+1])`), records."""
    header = np.array([(TOKEN_MAGIC, TOKEN_VERSION, dtype.itemsize, len(records))], dtype=HEADER)
    sizes = np.fromiter((len(r) for r in records), dtype=np.uint64, count=len(records))
    first = HEADER.itemsize + 8 * (len(records) + 1)
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.uint64)]).astype("<u8") + np.uint64(first)
    return b"".join((header.tobytes(), offsets.tobytes(), *records))


def read_header(head: bytes, where: str) -> tuple[np.dtype, int]:
    """(id dtype, rows) of a token file from its first `HEADER.itemsize` bytes; ValueError naming `where` if not one."""
    if len(head) < HEADER.itemsize:
        raise ValueError(f"{where}: {len(head)} bytes, too short for a token file header")
    h = np.frombuffer(head[: HEADER.itemsize], dtype=HEADER)[0]
    if h["magic"] != TOKEN_MAGIC or h["version"] != TOKEN_VERSION or h["itemsize"] not in (2, 4):
        raise ValueError(f"{where}: not a version-{TOKEN_VERSION} token file (header {head[:16]!r})")
    return np.dtype(f"<u{int(h['itemsize'])}"), int(h["rows"])


def unpack_record(buf: bytes, dtype: np.dtype) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(key, ids, loss spans, turn ends) of one record; the arrays are read-only views of `buf`."""
    n_ids, n_spans, n_ends, n_key = np.frombuffer(buf, dtype=_COUNTS, count=4).tolist()
    at = 16
    spans = np.frombuffer(buf, dtype="<i4", count=n_spans, offset=at)
    at += 4 * n_spans
    ends = np.frombuffer(buf, dtype="<i4", count=n_ends, offset=at)
    at += 4 * n_ends
    ids = np.frombuffer(buf, dtype=dtype, count=n_ids, offset=at)
    at += dtype.itemsize * n_ids
    if at + n_key > len(buf):
        raise ValueError(f"token record of {len(buf)} bytes is shorter than its counts say ({at + n_key})")
    return buf[at : at + n_key].decode("utf-8"), ids, spans, ends
