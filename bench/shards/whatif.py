"""What-if variants of tinymix's image work and shard-task settings, monkeypatched, never edited in `shards/`.

`PATCHES` maps a name to the (module, attribute, value) changes it makes. `apply` patches this process;
`worker_hook` applies the variant named in `ENV` and runs at start-up in every Ray worker of a what-if cluster
(through `whatif_site/sitecustomize.py`), so a whole `build_shards` run can be measured with the change. Used by
`bench.shards.run --what-if NAME` and `bench.shards.experiments`; results are labelled as not tinymix as shipped.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image

ENV = "TINYMIX_BENCH_WHAT_IF"


def apply_plan_reducing(img: Image.Image, plan: Any) -> Image.Image:
    """`shards.resize.apply_plan` resampling with Pillow's `reducing_gap=2.0` (a box reduce by an integer first)."""
    from shards import resize

    if img.size != plan.scaled:
        img = img.resize(plan.scaled, resize.RESAMPLE, reducing_gap=2.0)
    return resize.apply_plan(img, plan)


def draft_request_gap_1(plan: Any, transposed: bool = False, gap: float = 1.0) -> tuple[int, int] | None:
    """`shards.images.draft_request` with a gap of 1 at every DCT scale, 1/4 and 1/8 included.

    It decodes straight to the smallest scale not below the resized size, whatever `ImageOptions.draft_gap` says.
    """
    if not plan.downscales:
        return None
    width, height = plan.source
    for s in (8, 4, 2):
        if width // s >= plan.scaled[0] and height // s >= plan.scaled[1]:
            return (height // s, width // s) if transposed else (width // s, height // s)
    return None


def glibc_defaults() -> bool:
    """`shards.malloc.reuse_freed_memory` that leaves glibc's malloc thresholds as they are."""
    return False


# name -> [(module, attribute, value)]; a Ray worker rebuilds the same changes from the name alone.
PATCHES: dict[str, list[tuple[str, str, Any]]] = {
    "reducing-gap-2": [("shards.images", "apply_plan", apply_plan_reducing)],
    "resample-bicubic": [("shards.resize", "RESAMPLE", Image.Resampling.BICUBIC)],
    "resample-bilinear": [("shards.resize", "RESAMPLE", Image.Resampling.BILINEAR)],
    "resample-box": [("shards.resize", "RESAMPLE", Image.Resampling.BOX)],
    "draft-gap-1": [("shards.images", "draft_request", draft_request_gap_1)],
    "glibc-malloc-defaults": [("shards.task", "reuse_freed_memory", glibc_defaults)],
    "resample-bicubic+draft-gap-1": [
        ("shards.resize", "RESAMPLE", Image.Resampling.BICUBIC),
        ("shards.images", "draft_request", draft_request_gap_1),
    ],
}


def check(name: str) -> str:
    if name not in PATCHES:
        raise ValueError(f"unknown what-if {name!r}; expected one of {', '.join(PATCHES)}")
    return name


def apply(name: str) -> dict[tuple[str, str], Any]:
    """Apply the variant in this process; returns the previous values for `restore`."""
    old = {}
    for module_name, attr, value in PATCHES[check(name)]:
        module = importlib.import_module(module_name)
        old[(module_name, attr)] = getattr(module, attr)
        setattr(module, attr, value)
    return old


def restore(old: dict[tuple[str, str], Any]) -> None:
    for (module_name, attr), value in old.items():
        setattr(importlib.import_module(module_name), attr, value)


@contextmanager
def patched(name: str) -> Iterator[None]:
    old = apply(name)
    try:
        yield
    finally:
        restore(old)


def worker_hook() -> None:
    """Process start-up: apply the variant named in the environment, if any."""
    name = os.environ.get(ENV)
    if name:
        apply(name)
