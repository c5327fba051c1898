"""`shards.malloc`: after `reuse_freed_memory`, glibc serves image-sized blocks from its heap and keeps them when freed.

Checked in a fresh interpreter each time (malloc settings are process-wide and cannot be undone), through glibc's own
view of a block: the IS_MMAPPED bit of the chunk header before the pointer, and `mallinfo2`'s free bytes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

LIBC, LIBC_VERSION = platform.libc_ver()
pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or LIBC != "glibc" or tuple(map(int, LIBC_VERSION.split(".")[:2])) < (2, 33),
    reason="glibc's malloc, mallinfo2 (glibc >= 2.33)",
)

PROBE = """
import ctypes, json, sys
from shards.malloc import reuse_freed_memory
applied = reuse_freed_memory() and reuse_freed_memory() if sys.argv[1] == "apply" else None

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
size = 4 << 20  # a decoded 1,000 x 1,000 RGBX image
first = libc.malloc(size)
mmapped = bool(ctypes.c_size_t.from_address(first - ctypes.sizeof(ctypes.c_size_t)).value & 2)  # IS_MMAPPED
libc.free(first)
kept = libc.mallinfo2().fordblks
again = libc.malloc(size)
print(json.dumps({"applied": applied, "mmapped": mmapped, "kept": kept, "reused": again == first}))
"""


def probe(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults, whatever CI sets
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE), mode], capture_output=True, text=True, check=True, env=env
    ).stdout
    return json.loads(out)


def test_image_sized_blocks_come_from_the_heap_and_are_kept_for_the_next_image() -> None:
    got = probe("apply")
    assert got["applied"] is True
    assert got["mmapped"] is False  # below MMAP_THRESHOLD: a heap block, not a fresh mapping
    assert got["kept"] >= 4 << 20  # freed, but not trimmed back to the kernel (below TRIM_THRESHOLD)
    assert got["reused"] is True  # the next image gets the same memory, its pages already mapped


def test_without_the_settings_glibc_maps_and_unmaps_the_same_block() -> None:
    """The control: glibc's default (a fresh process) maps a 4 MB block and gives it back when freed."""
    got = probe("default")
    assert got["mmapped"] is True
    assert got["kept"] < 4 << 20
