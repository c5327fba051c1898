"""The packed, resumable, prefetching loader: a stage plan → this rank's `PackedBatch`es (see `dataset.StageLoader`).

`samples` fetches, encodes and decodes planned samples (`fetch` overlaps a micro batch's fetches on an object
store), `images` resizes images for the vision tower and lays out their RGB bytes, `pack` lays segments out as a
`PackedBatch`, `handoff` moves a batch from a worker process to the main process. The consumer normalises the pixels
(`mixer.batch.normalize_pixels`).
"""

from __future__ import annotations

from mixer.loader.dataset import Layout, StageLoader
from mixer.loader.images import NORMALISATION, mean_std, pixel_batch, preprocess
from mixer.loader.pack import Segment, pack_batch
from mixer.loader.samples import IndexRows, Loaded, SampleReader, Skip, StaleSample, cut

__all__ = [
    "NORMALISATION",
    "IndexRows",
    "Layout",
    "Loaded",
    "SampleReader",
    "Segment",
    "Skip",
    "StageLoader",
    "StaleSample",
    "cut",
    "mean_std",
    "pack_batch",
    "pixel_batch",
    "preprocess",
]
