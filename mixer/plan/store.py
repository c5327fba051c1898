"""Chunked on-disk plans: a writer fed one window at a time and a reader that opens at any sequence.

Layout of a plan folder (every file a plain `.npy`, written to a temporary name and renamed):

    plan.json                     format, windows_per_chunk, counts
    windows.npy                   int64 [n_windows + 1, 2]: (first sequence, first segment) of each window, + totals
    chunks/00000.segments.npy     SEGMENT_DTYPE rows (source, sample, tokens, truncated) of `windows_per_chunk` windows
    chunks/00000.sequences.npy    int64 [n_seq + 1]: where each sequence of the chunk starts in its segments
    summary.json                  the PlanSummary, written last: a folder without it is an unfinished plan

Window `w` lives in chunk `w // windows_per_chunk`, so opening at sequence `i` reads the window table (memory-mapped,
a binary search touches a few pages) and one chunk. Files hold no timestamps: the same plan gives the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mixer.plan.planner import SEGMENT_DTYPE, Window

FORMAT = "tinymix-plan-1"
WINDOWS_PER_CHUNK = 256


def _save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class PlanWriter:
    """Streams windows into a plan folder, one chunk of `windows_per_chunk` windows in memory at a time."""

    def __init__(self, out: str | Path, windows_per_chunk: int = WINDOWS_PER_CHUNK) -> None:
        self.out = Path(out)
        if self.out.exists():
            if not (self.out / "plan.json").exists() and any(self.out.iterdir()):
                raise ValueError(f"{self.out}: exists and is not a plan folder; refusing to overwrite it")
            shutil.rmtree(self.out)
        (self.out / "chunks").mkdir(parents=True)
        self.per_chunk = windows_per_chunk
        self.table = array("q", [0, 0])
        self._segments: list[np.ndarray] = []
        self._starts: list[np.ndarray] = []
        self._windows = 0

    def add(self, window: Window) -> None:
        assert window.index == self._windows, "windows must arrive in order"
        self._segments.append(window.segments)
        self._starts.append(window.seq_starts)
        self.table.extend([self.table[-2] + len(window), self.table[-1] + len(window.segments)])
        self._windows += 1
        if self._windows % self.per_chunk == 0:
            self._flush()

    def _flush(self) -> None:
        if not self._segments:
            return
        chunk = (self._windows - 1) // self.per_chunk
        segs = np.concatenate(self._segments).astype(SEGMENT_DTYPE, copy=False)
        starts, base = [np.zeros(1, dtype=np.int64)], 0
        for s in self._starts:
            starts.append(s[1:] + base)
            base += int(s[-1])
        _save(self.out / "chunks" / f"{chunk:05d}.segments.npy", segs)
        _save(self.out / "chunks" / f"{chunk:05d}.sequences.npy", np.concatenate(starts))
        self._segments, self._starts = [], []

    def close(self, summary: dict) -> None:
        """Write the last chunk, the window table, plan.json, then summary.json."""
        self._flush()
        table = np.frombuffer(self.table, dtype=np.int64).reshape(-1, 2)
        _save(self.out / "windows.npy", table)
        meta = {
            "format": FORMAT,
            "windows_per_chunk": self.per_chunk,
            "num_windows": self._windows,
            "num_sequences": int(table[-1, 0]),
            "num_segments": int(table[-1, 1]),
        }
        _write_json(self.out / "plan.json", meta)
        _write_json(self.out / "summary.json", summary)


class PlanReader:
    """Reads a plan folder; `sequences(start)` yields each sequence's segments from sequence `start` on."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "summary.json").exists():
            raise FileNotFoundError(f"{self.path}: no summary.json (not a plan, or an unfinished one)")
        meta = json.loads((self.path / "plan.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.path / 'plan.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
        self.meta = meta
        self.per_chunk = int(meta["windows_per_chunk"])
        self.windows = np.load(self.path / "windows.npy", mmap_mode="r")
        self._summary: dict | None = None

    @classmethod
    def open(cls, path: str | Path) -> PlanReader:
        return cls(path)

    def __len__(self) -> int:
        return int(self.meta["num_sequences"])

    @property
    def summary(self) -> dict:
        if self._summary is None:
            self._summary = json.loads((self.path / "summary.json").read_text())
        return self._summary

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        stem = self.path / "chunks" / f"{chunk:05d}"
        return np.load(f"{stem}.segments.npy"), np.load(f"{stem}.sequences.npy")

    def sequences(self, start: int = 0) -> Iterator[np.ndarray]:
        """Each sequence from `start` on, as a SEGMENT_DTYPE array of its segments (in packing order)."""
        n = len(self)
        if not 0 <= start <= n:
            raise IndexError(f"{self.path}: start {start} outside 0..{n}")
        if start == n:
            return
        window = int(np.searchsorted(self.windows[:, 0], start, side="right")) - 1
        chunk = window // self.per_chunk
        while chunk * self.per_chunk < self.meta["num_windows"]:
            segs, starts = self._chunk(chunk)
            first = int(self.windows[chunk * self.per_chunk, 0])
            for i in range(max(start - first, 0), len(starts) - 1):
                yield segs[starts[i] : starts[i + 1]]
            chunk += 1
