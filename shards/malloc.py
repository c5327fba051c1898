"""glibc malloc settings for a process that builds shards: keep freed image buffers for the next image.

Every image passes through buffers of a few hundred kB to a few MB (the downloaded body, Pillow's decoded pixels,
libvips' regions). glibc serves such sizes with fresh `mmap`s or trims them off its heaps as soon as they are freed,
so the next image touches new pages: about 100 page faults an image, each a kernel entry and a zeroed page. With the
thresholds below they are reused instead: on the bench corpus (`process_shard` in one process, three shards of
1,000 served images) the faults fell from ~100 to ~20 an image, the task's CPU by ~0.3 ms an image, and its peak RSS
stayed the same (docs/benchmarks.md). `mallopt` is glibc's documented tuning call; elsewhere (musl, macOS) nothing
is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform

# mallopt parameters (glibc's malloc.h) and the values set.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 8 << 20  # blocks below this come from the heap and are reused; bigger ones are still mmap'd
TRIM_THRESHOLD = 16 << 20  # free memory kept at the top of a heap before it is given back to the kernel


@functools.cache
def reuse_freed_memory() -> bool:
    """Apply the thresholds once in this process; True when glibc took them (False: not glibc, or refused).

    (Two threads calling it first at once may both apply them: the same values, so no harm.)
    """
    return _mallopt({M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD})


def _mallopt(settings: dict[int, int]) -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in settings.items())
