"""A worker's micro batch read with its samples' fetches overlapping, for builds on an object store.

On an object store each sample costs a few ranged GETs (its index row, its stored tokens, its image bytes), each a
round trip of milliseconds to tens of milliseconds; read one after another they, not the decode, bound a worker.
`SegmentFetcher` reads the segments of a micro batch on a small thread pool instead, so their GETs are in flight
together (s3fs / gcsfs run them on their event loop; the readers' caches are locked). Locally a read is a `pread`
of a page-cached file and threads would only add overhead, so a local build is read in one thread. Results are in
plan order either way: the batch is the same, only its fetches overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mixer.loader.samples import Loaded, SampleReader, Skip
from shards import fs

FETCH_THREADS = 8  # per worker: enough to hide ~20-50 ms GETs behind a ~2 ms decode; below s3fs's 10-connection pool


def fetch_threads(shards: tuple[str, ...], threads: int | None = None) -> int:
    """Threads a worker fetches with: `threads` (default `FETCH_THREADS`) if any shards are remote, else 1."""
    if all(fs.is_local(s) for s in shards):
        return 1
    return FETCH_THREADS if threads is None else max(1, threads)


class SegmentFetcher:
    """Reads the planned segments of whole micro batches through a `SampleReader`, `threads` segments at a time."""

    def __init__(self, reader: SampleReader, threads: int) -> None:
        self.reader = reader
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="tinymix-fetch") if threads > 1 else None

    def sequences(self, sequences: Sequence[np.ndarray]) -> list[tuple[list[Loaded], list[Skip]]]:
        """Per sequence, its usable samples in order and its skipped ones (as `SampleReader.segments`)."""
        if self._pool is None:
            return [self.reader.segments(s) for s in sequences]
        got = list(self._pool.map(self.reader.segment, [seg for s in sequences for seg in s]))
        out, i = [], 0
        for s in sequences:
            part, i = got[i : i + len(s)], i + len(s)
            out.append(([x for x in part if isinstance(x, Loaded)], [x for x in part if isinstance(x, Skip)]))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
