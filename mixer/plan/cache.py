"""Where the planner's compiled numba kernels are cached: a folder keyed by the kernels' source.

numba invalidates a cached function only when its own file changes, not when a kernel it calls (in another file)
does — after an upgrade `pack_window` could keep running an old `balance`. Keying the cache folder by a hash of
every kernel file makes any change compile afresh. The folder is set only while the kernel modules are imported
(numba picks a function's cache location when it is decorated), so other numba users in the process are not
affected; `NUMBA_CACHE_DIR`, when set, is used as it is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numba

KERNEL_FILES = ("state.py", "order.py", "pack.py", "quota.py", "balance.py", "planner.py")


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/tinymix/numba/<hash>` (default `~/.cache/...`), the hash over the kernel sources."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in KERNEL_FILES:
        digest.update((here / name).read_bytes())
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tinymix" / "numba" / f"{numba.__version__}-{digest.hexdigest()[:16]}"


@contextmanager
def kernel_cache() -> Iterator[None]:
    """Point numba's cache at `cache_dir()` for the imports in the block (unless NUMBA_CACHE_DIR is set)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        yield
        return
    old = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(cache_dir())
    try:
        yield
    finally:
        numba.config.CACHE_DIR = old
