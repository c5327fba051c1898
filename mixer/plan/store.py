"""Chunked stored plans: a writer fed one window at a time and a reader that opens at any sequence.

Layout of a plan folder (every file a plain `.npy` or JSON, never visible under its final name half-written):

    plan.json                     format, windows_per_chunk, counts
    windows.npy                   int64 [n_windows + 1, 2]: (first sequence, first segment) of each window, + totals
    chunks/00000.segments.npy     SEGMENT_DTYPE rows (source, sample, tokens, truncated) of `windows_per_chunk` windows
    chunks/00000.sequences.npy    int64 [n_seq + 1]: where each sequence of the chunk starts in its segments
    summary.json                  the PlanSummary, written last: a folder without it is an unfinished plan

Window `w` lives in chunk `w // windows_per_chunk`, so opening at sequence `i` reads the window table and one chunk.
Files hold no timestamps: the same plan gives the same bytes, on a disk or in an object store.

The folder may be a local path or an fsspec URL (`s3://…`, `gs://…`). Locally each file is written to a temp name and
renamed, and the window table is memory-mapped (a binary search touches a few pages). Behind a URL each file is one
PUT (a single PUT or multipart-complete is atomic on an object store), written as its chunk is flushed, and the
window table (16 bytes a window) is read whole.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from mixer.plan.planner import SEGMENT_DTYPE, Window
from shards import fs

FORMAT = "tinymix-plan-1"
WINDOWS_PER_CHUNK = 256
PLAN_ENTRIES = ("plan.json", "windows.npy", "summary.json", "chunks")  # what a plan folder holds at its top


class PlanFiles:
    """The files of one plan folder on the local disk or behind an fsspec URL, by name relative to the folder."""

    def __init__(self, where: str | Path) -> None:
        text = str(where)
        fsys, path = fs.resolve(text)
        self.remote = None if isinstance(fsys, LocalFileSystem) else fsys
        self.root = Path(path if "://" in text else text)  # local folder (unused behind a URL)
        self.url = text.rstrip("/")
        self._path = path.rstrip("/")  # the folder in `self.remote`'s own terms

    @property
    def where(self) -> Path | str:
        """The folder as errors name it: a Path locally, the URL otherwise."""
        return self.url if self.remote is not None else self.root

    def name(self, rel: str) -> str:
        return fs.join(self.url, *rel.split("/")) if self.remote is not None else str(self.root / rel)

    def exists(self, rel: str) -> bool:
        return fs.exists(self.name(rel)) if self.remote is not None else (self.root / rel).exists()

    def read_json(self, rel: str) -> Any:
        if self.remote is None:
            return json.loads((self.root / rel).read_text())
        return json.loads(self.remote.cat_file(f"{self._path}/{rel}"))

    def load(self, rel: str, mmap: bool = False) -> np.ndarray:
        """A `.npy` file: memory-mapped locally when `mmap`, read whole (one GET) behind a URL."""
        if self.remote is None:
            return np.load(self.root / rel, mmap_mode="r" if mmap else None)
        return np.load(io.BytesIO(self.remote.cat_file(f"{self._path}/{rel}")), allow_pickle=False)

    def save(self, rel: str, arr: np.ndarray) -> None:
        if self.remote is None:
            path = self.root / rel
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.replace(tmp, path)
            return
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        self.remote.pipe_file(f"{self._path}/{rel}", buf.getvalue())

    def write_json(self, rel: str, obj: dict) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
        if self.remote is None:
            path = self.root / rel
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
            return
        self.remote.pipe_file(f"{self._path}/{rel}", text.encode())

    def reset(self) -> None:
        """Empty the folder for a new plan; refuse one that holds anything but a (possibly unfinished) plan."""
        if self.remote is None:
            if self.root.exists() and not self.root.is_dir():
                raise ValueError(f"{self.root}: is a file, not a plan folder; refusing to overwrite it")
            names = sorted(os.listdir(self.root)) if self.root.exists() else []
        else:
            names = fs.list_names(self.url)
        foreign = [n for n in names if n not in PLAN_ENTRIES and n.removesuffix(".tmp") not in PLAN_ENTRIES]
        if foreign:
            raise ValueError(
                f"{self.where}: exists and is not a plan folder (holds {foreign[0]!r}); refusing to overwrite it"
            )
        if self.remote is None:
            if self.root.exists():
                shutil.rmtree(self.root)
            (self.root / "chunks").mkdir(parents=True)
            return
        if "summary.json" in names:  # first: what remains of an interrupted delete then reads as unfinished
            self.remote.rm_file(f"{self._path}/summary.json")
        if names:
            self.remote.rm(self._path, recursive=True)
        self.remote.makedirs(self._path, exist_ok=True)


class PlanWriter:
    """Streams windows into a plan folder, one chunk of `windows_per_chunk` windows in memory at a time."""

    def __init__(self, out: str | Path, windows_per_chunk: int = WINDOWS_PER_CHUNK) -> None:
        self.files = PlanFiles(out)
        self.out = self.files.where
        self.files.reset()
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
        self.files.save(f"chunks/{chunk:05d}.segments.npy", segs)
        self.files.save(f"chunks/{chunk:05d}.sequences.npy", np.concatenate(starts))
        self._segments, self._starts = [], []

    def close(self, summary: dict) -> None:
        """Write the last chunk, the window table, plan.json, then summary.json."""
        self._flush()
        table = np.frombuffer(self.table, dtype=np.int64).reshape(-1, 2)
        self.files.save("windows.npy", table)
        meta = {
            "format": FORMAT,
            "windows_per_chunk": self.per_chunk,
            "num_windows": self._windows,
            "num_sequences": int(table[-1, 0]),
            "num_segments": int(table[-1, 1]),
        }
        self.files.write_json("plan.json", meta)
        self.files.write_json("summary.json", summary)


class PlanReader:
    """Reads a plan folder (path or URL); `sequences(start)` yields each sequence's segments from `start` on."""

    def __init__(self, path: str | Path) -> None:
        self.files = PlanFiles(path)
        self.path = self.files.where
        if not self.files.exists("summary.json"):
            raise FileNotFoundError(
                f"{self.files.name('summary.json')}: not found (not a plan, or an unfinished one); "
                "run `mixer build` to plan the stage"
            )
        meta = self.files.read_json("plan.json")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{self.files.name('plan.json')}: format {meta.get('format')!r}, expected {FORMAT!r}")
        self.meta = meta
        self.per_chunk = int(meta["windows_per_chunk"])
        self.windows = self.files.load("windows.npy", mmap=True)
        self._summary: dict | None = None

    @classmethod
    def open(cls, path: str | Path) -> PlanReader:
        return cls(path)

    def __len__(self) -> int:
        return int(self.meta["num_sequences"])

    @property
    def summary(self) -> dict:
        if self._summary is None:
            self._summary = self.files.read_json("summary.json")
        return self._summary

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        stem = f"chunks/{chunk:05d}"
        return self.files.load(f"{stem}.segments.npy"), self.files.load(f"{stem}.sequences.npy")

    def segment_chunks(self) -> Iterator[np.ndarray]:
        """Every segment of the plan, a stored chunk (SEGMENT_DTYPE array) at a time, in plan order."""
        for chunk in range(-(-int(self.meta["num_windows"]) // self.per_chunk)):
            yield self._chunk(chunk)[0]

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
