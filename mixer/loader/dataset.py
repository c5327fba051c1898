"""`StageLoader`: a stage's plan → this rank's packed micro batches, in plan order, from any position, prefetched.

Global batch layout: optimizer step `s` covers plan sequences `[s*G, (s+1)*G)`; rank `r`'s accumulation index `a`
takes the `M` sequences from `s*G + (a*W + r)*M`. The union over ranks and accumulation of one step does not depend
on the world size, so a run resumed on another number of ranks (same global batch) reads the same global batches.

The loader's state is its next micro batch: `{"step", "micro"}`. Worker `w` of `n` builds this rank's micro batches
`first + w, first + w + n, …`; the DataLoader takes one from each worker in turn, which is plan order again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixer.batch import PackedBatch
from mixer.lengths import has_tokens
from mixer.loader.handoff import Outbound, PixelPool
from mixer.loader.images import check_mean_std, mean_std, pixel_batch
from mixer.loader.pack import pack_batch
from mixer.loader.rows import TOKEN_CACHE_SHARDS
from mixer.loader.samples import SampleReader, SampleSpec, Skip
from mixer.plan import PlanReader
from mixer.planning import plan_dir, stage_dir
from mixer.tokenizer import load_tokenizer
from shards import fs

log = logging.getLogger(__name__)

DEFAULT_VISION = "clip_vision_model"  # when stage.json does not name the tower's model_type
REOPEN_GAP = 4096  # sequences: past this gap the plan is reopened at the target instead of read through


@dataclass(frozen=True)
class Layout:
    """Which plan sequences each (rank, micro batch) reads, for a global batch `G`, micro batch `M`, world `W`."""

    global_batch: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        g, m, w = self.global_batch, self.micro_batch, self.world_size
        if min(g, m, w) < 1:
            raise ValueError(f"global_batch {g}, micro_batch {m} and world_size {w} must all be >= 1")
        if g % (m * w):
            raise ValueError(
                f"global_batch {g} is not a multiple of micro_batch {m} × world_size {w} = {m * w}: "
                "no whole number of accumulation steps"
            )
        if not 0 <= self.rank < w:
            raise ValueError(f"rank {self.rank} outside 0..{w - 1} for world_size {w}")

    @property
    def grad_accum(self) -> int:
        return self.global_batch // (self.micro_batch * self.world_size)

    def first_sequence(self, micro: int) -> int:
        """The first plan sequence of this rank's micro batch number `micro` (counted from the stage's start)."""
        step, a = divmod(micro, self.grad_accum)
        return step * self.global_batch + (a * self.world_size + self.rank) * self.micro_batch


class PlanCursor:
    """Sequential reads of a plan that may jump ahead: short gaps are read through, long ones reopen the plan."""

    def __init__(self, reader: PlanReader) -> None:
        self.reader = reader
        self._it: Iterator[np.ndarray] | None = None
        self._pos = 0

    def take(self, start: int, count: int) -> list[np.ndarray]:
        if self._it is None or start < self._pos or start - self._pos > REOPEN_GAP:
            self._it, self._pos = self.reader.sequences(start), start
        for _ in range(start - self._pos):
            next(self._it)
        out = [next(self._it) for _ in range(count)]
        self._pos = start + count
        return out


class PlanStream(IterableDataset):
    """Micro batches `first … end-1` of one rank as `(micro, batch, (samples, tokens), skips)`, split over workers."""

    def __init__(
        self,
        plan: str,
        spec: SampleSpec,
        tokenizer: Any,
        layout: Layout,
        seq_len: int,
        first: int,
        end: int,
        token_cache_shards: int = TOKEN_CACHE_SHARDS,
    ) -> None:
        self.plan, self.spec, self.tokenizer, self.layout = plan, spec, tokenizer, layout
        self.seq_len, self.first, self.end = seq_len, first, end
        self.token_cache_shards = token_cache_shards

    def __iter__(self) -> Iterator[tuple[int, PackedBatch, tuple[int, int], list[Skip]]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Opened here, in the worker process: file handles are never shared across a fork.
        reader = SampleReader(self.spec, self.tokenizer, self.token_cache_shards)
        cursor = PlanCursor(PlanReader(self.plan))
        pool = None
        if info is not None:  # a worker process
            pool = PixelPool()  # pixels go out through reused shared buffers (see handoff)
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker, as torch's intra-op threads
        try:
            for micro in range(self.first + worker, self.end, workers):
                rows, images, skips = [], [], []
                for sequence in cursor.take(self.layout.first_sequence(micro), self.layout.micro_batch):
                    loaded, skipped = reader.segments(sequence)
                    rows.append([x.segment for x in loaded])
                    images.extend(img for x in loaded for img in x.images)
                    skips.extend(skipped)
                size = self.spec.image_size
                pixels = pixel_batch(images, size, pool.take(len(images), size) if pool and images else None)
                batch = pack_batch(rows, self.seq_len, self.tokenizer.pad_token_id, pixels, self.spec.mean_std)
                counts = (sum(len(r) for r in rows), sum(len(s) for r in rows for s in r))
                yield micro, Outbound(batch) if pool else batch, counts, skips
        finally:
            reader.close()


def _as_is(item: Any) -> Any:
    return item


def read_stage(out: str, stage: str) -> dict[str, Any]:
    """OUT/stages/<stage>/stage.json (OUT a folder or fsspec URL); a missing file names the path and how to make it."""
    path = fs.join(stage_dir(out, stage), "stage.json")
    if not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such stage plan; run `mixer build` for stage {stage!r} first")
    meta = json.loads(fs.read_bytes(path))
    for field in ("sources", "template", "image_size", "image_tokens", "tokenizer", "seq_len", "num_sequences"):
        if field not in meta:
            raise ValueError(f"{path}: field {field!r} is missing")
    return meta


def _stored_tokens(stage: str, meta: dict[str, Any]) -> tuple[str | None, ...]:
    """Per source of stage.json, its length index URL if that index stores tokens (else None: tokenise at read)."""
    lengths = meta.get("lengths") or {}
    urls = tuple(lengths[s] if s in lengths and has_tokens(lengths[s]) else None for s in meta["sources"])
    if None in urls:
        missing = [s for s, u in zip(meta["sources"], urls, strict=True) if u is None]
        log.warning(
            "stage %s: the length index of %s has no token files (built before format 3?); the loader tokenises them "
            "at read time, which is slower: rerun `mixer build` to store them",
            stage,
            ", ".join(missing),
        )
    return urls


class StageLoader:
    """One rank's packed micro batches of a planned stage; resumable at any micro batch (see the module doc)."""

    def __init__(
        self,
        out: str,
        stage: str,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 2,
        prefetch_factor: int = 4,
        start_step: int = 0,
        image_mean_std: tuple | None = None,
        tokenizer: Any = None,
        token_cache_shards: int = TOKEN_CACHE_SHARDS,
    ) -> None:
        meta = read_stage(out, stage)
        self.stage, self.meta = stage, meta
        self.plan = plan_dir(out, stage)
        self.num_sequences = int(meta["num_sequences"])
        planned = len(PlanReader(self.plan))
        if planned != self.num_sequences:
            raise ValueError(f"{self.plan}: holds {planned} sequences, stage.json says {self.num_sequences}")
        global_batch = int(meta.get("global_batch") or meta.get("micro_batch") or 1)
        self.layout = Layout(global_batch, int(meta.get("micro_batch") or 1), world_size, rank)
        self.steps = self.num_sequences // global_batch
        self.grad_accum = self.layout.grad_accum
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor
        self.token_cache_shards = token_cache_shards  # per worker and source: see mixer.loader.rows.TokenFiles
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(meta["tokenizer"])
        if image_mean_std is not None:
            norm = check_mean_std(image_mean_std)
        elif meta.get("vision_model_type"):
            norm = mean_std(meta["vision_model_type"])
        else:
            log.warning("stage %s: stage.json names no vision model_type; normalising as %s", stage, DEFAULT_VISION)
            norm = mean_std(DEFAULT_VISION)
        self.spec = SampleSpec(
            out=out,
            sources=tuple(meta["sources"]),
            template=meta["template"],
            image_tokens=int(meta["image_tokens"]),
            image_size=int(meta["image_size"]),
            mean_std=norm,
            lengths=_stored_tokens(stage, meta),
            image_preprocess=meta.get("image_preprocess", "crop"),  # plans from before the option crop
        )
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps} (stage {stage!r})")
        self._micro = start_step * self.grad_accum
        self._counts = dict.fromkeys(("batches", "sequences", "samples", "images", "tokens", "skipped_total"), 0)
        self._skipped: dict[str, str] = {}
        self._wait = 0.0
        self._elapsed = 0.0

    # ---- position
    def state_dict(self) -> dict:
        step, micro = divmod(self._micro, self.grad_accum)
        return {
            "step": step,
            "micro": micro,
            "stage": self.stage,
            "num_sequences": self.num_sequences,
            "global_batch": self.layout.global_batch,
            "micro_batch": self.layout.micro_batch,
            "world_size": self.layout.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue at `state`'s position; a mid-step position needs the same world size and micro batch."""
        for field, mine in (
            ("stage", self.stage),
            ("num_sequences", self.num_sequences),
            ("global_batch", self.layout.global_batch),
        ):
            if field in state and state[field] != mine:
                raise ValueError(f"loader state: {field} {state[field]!r} differs from this loader's {mine!r}")
        step, micro = int(state["step"]), int(state["micro"])
        same_split = (state.get("world_size"), state.get("micro_batch")) == (
            self.layout.world_size,
            self.layout.micro_batch,
        )
        if micro and not same_split:
            raise ValueError(
                f"loader state: step {step} micro batch {micro} is mid-step for world_size {state.get('world_size')} "
                f"× micro_batch {state.get('micro_batch')}; resume on another split only at a step boundary"
            )
        if not (0 <= step <= self.steps and 0 <= micro < self.grad_accum):
            raise ValueError(f"loader state: step {step} micro {micro} outside this stage's {self.steps} steps")
        self._micro = step * self.grad_accum + micro

    # ---- batches
    def __iter__(self) -> Iterator[PackedBatch]:
        first, end = self._micro, self.steps * self.grad_accum
        if first >= end:
            return
        seq_len = int(self.meta["seq_len"])
        stream = PlanStream(
            self.plan, self.spec, self.tokenizer, self.layout, seq_len, first, end, self.token_cache_shards
        )
        batches = DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch_factor if self.num_workers else None,
            collate_fn=_as_is,
            # Its own generator: the DataLoader draws its workers' base seed from it, not from the global RNG, so
            # iterating a loader never moves the RNG a resumed run restored (the next stage's LoRA init, dropout).
            generator=torch.Generator().manual_seed(first),
        )
        it = iter(batches)
        before, started = self._elapsed, time.perf_counter()
        while True:
            t = time.perf_counter()
            try:
                micro, batch, counts, skips = next(it)
            except StopIteration:
                return
            now = time.perf_counter()
            self._wait += now - t
            assert micro == self._micro, f"micro batch {micro} arrived where {self._micro} was due"
            self._record(batch, counts, skips)
            self._micro = micro + 1
            self._elapsed = before + now - started  # includes the consumer's time: this is the delivered rate
            yield batch

    def _record(self, batch: PackedBatch, counts: tuple[int, int], skips: list[Skip]) -> None:
        # Counted by the worker: a torch reduction here would contend with the trainer's intra-op threads.
        c = self._counts
        c["batches"] += 1
        c["sequences"] += int(batch["input_ids"].shape[0])
        c["samples"] += counts[0]
        c["tokens"] += counts[1]
        c["images"] += int(batch["pixel_values"].shape[0])
        c["skipped_total"] += len(skips)
        for s in skips:
            if s.key not in self._skipped:
                self._skipped[s.key] = s.reason
                log.warning("stage %s: skipped sample %s: %s", self.stage, s.key, s.reason)

    @property
    def stats(self) -> dict:
        """Samples, images, tokens served; skipped samples by key with reason; time waited; rates."""
        elapsed = self._elapsed or float("nan")
        return {
            **self._counts,
            "skipped": dict(self._skipped),
            "wait_s": self._wait,
            "elapsed_s": self._elapsed,
            "batches_per_s": self._counts["batches"] / elapsed,
            "sequences_per_s": self._counts["sequences"] / elapsed,
            "images_per_s": self._counts["images"] / elapsed,
        }
