"""Decontamination: the sha256 digests of every image of the manifest's `eval:` benchmarks, for `mixer build`.

A training sample whose image file is byte-identical to one of them is not stored (`shards.exclude`). The digest is
of the file's bytes, not of its decoded pixels: the build hashes the bytes it fetched anyway, while a pixel digest
would need a second, full-resolution decode of every training image (the shard build decodes JPEGs at a reduced DCT
scale), and would still miss the common copies that matter (a lossy re-encode or resize changes the pixels too). It
catches what SmolVLM-style decontamination catches: the benchmark's own files mirrored into a training set.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mixer.evals import EvalOptions, get_benchmark
from mixer.evals.spec import BenchmarkError
from mixer.evals.table import read_items
from mixer.manifest import Manifest
from shards.exclude import Exclusion

_HASH_THREADS = 8  # hashlib releases the GIL: reading and hashing overlap across files


def benchmark_exclusion(m: Manifest, progress: bool = True) -> tuple[Exclusion, dict[str, Any]] | None:
    """The digests of every image of the `eval:` benchmarks and what build.json records of them, or None.

    None unless `eval.decontaminate`. All questions count, whatever `limit` says; a missing image is a BenchmarkError.
    """
    if m.eval is None or not m.eval.decontaminate:
        return None
    root = Path(m.data_root) / m.eval.data_root
    files: dict[Path, str] = {}
    embedded: dict[bytes, str] = {}
    for name in m.eval.benchmarks:
        for item in read_items(get_benchmark(name), root, EvalOptions(ocr_tokens=m.eval.ocr_tokens)):
            ref = f"{name}:{item.image_ref}"
            if isinstance(item.image, Path):
                files.setdefault(item.image, ref)
            elif isinstance(item.image, bytes):  # MMBench's base64 column: the bytes are the file
                embedded.setdefault(hashlib.sha256(item.image).digest(), ref)
    with ThreadPoolExecutor(_HASH_THREADS) as pool:
        hashed = tqdm(pool.map(_file_digest, files), total=len(files), desc="benchmark images", disable=not progress)
        digests = {**embedded, **{d: ref for d, ref in zip(hashed, files.values(), strict=True)}}
    exclusion = Exclusion(digests)
    meta = {
        "benchmarks": sorted(m.eval.benchmarks),
        "benchmark_images": len(digests),
        "by": "sha256 of the image file",
        "id": exclusion.ident,
    }
    return exclusion, meta


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError as e:
        raise BenchmarkError(f"{path}: benchmark image unreadable ({e.strerror or type(e).__name__})") from None
    return h.digest()
