"""Writes a synthetic length index of N samples across the six LLaVA-mix-like sources, as .npy memmaps in chunks.

Per source `OUT/<source>.lengths.npy` (int32) and `OUT/<source>.images.npy` (int8), sized by the mix's sample
fractions and filled a million rows at a time, so generating 100M samples never holds more than one chunk.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.lengths import LLAVA_MIX, draw, sample_fractions

CHUNK = 1_000_000


def source_sizes(n: int) -> list[int]:
    """Rows per source for an index of `n` samples (largest remainder, so they sum to n)."""
    raw = sample_fractions() * n
    sizes = np.floor(raw).astype(np.int64)
    for i in np.argsort(-(raw - sizes), kind="stable")[: n - int(sizes.sum())]:
        sizes[i] += 1
    return sizes.tolist()


def generate(out: str | Path, n: int, seed: int = 0) -> dict:
    """Write the index (skipped when `OUT/index.json` says it is already there) and return its description."""
    out = Path(out)
    meta_path = out / "index.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["n"] == n and meta["seed"] == seed:
            return meta
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = []
    for law, size in zip(LLAVA_MIX, source_sizes(n), strict=True):
        lengths = np.lib.format.open_memmap(out / f"{law.name}.lengths.npy", "w+", np.int32, (size,))
        images = np.lib.format.open_memmap(out / f"{law.name}.images.npy", "w+", np.int8, (size,))
        tokens = 0
        for lo in range(0, size, CHUNK):
            hi = min(size, lo + CHUNK)
            lengths[lo:hi], images[lo:hi] = draw(law, hi - lo, rng)
            tokens += int(lengths[lo:hi].sum(dtype=np.int64))
        lengths.flush()
        images.flush()
        del lengths, images
        sources.append({"name": law.name, "samples": size, "tokens": tokens})
    meta = {"n": n, "seed": seed, "sources": sources}
    meta_path.write_text(json.dumps(meta, indent=2))
    return meta
