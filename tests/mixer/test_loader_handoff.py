"""Worker → main process handoff: a batch arrives equal and owns its pixels; a pool buffer is reused once freed."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.reduction import ForkingPickler

import torch

from mixer.loader.handoff import HEADER, Outbound, PixelPool
from mixer.loader.images import CLIP_MEAN_STD
from mixer.loader.pack import Segment, pack_batch

X = -100


def batch_in(pool: PixelPool, value: int, n: int = 2):
    pixels = pool.take(n, 4)
    pixels.fill_(value)
    rows = [[Segment([1, 7, 7, 2], [X, X, X, 2], [1])] for _ in range(n)]
    return pack_batch(rows, 6, 0, pixels, CLIP_MEAN_STD)


def send(batch):
    """What the DataLoader's result queue does to a worker's batch: ForkingPickler out, plain unpickling in."""
    return ForkingPickler.loads(bytes(ForkingPickler.dumps(Outbound(batch))))


def test_a_received_batch_equals_the_sent_one_and_owns_its_pixels():
    pool = PixelPool()
    sent = batch_in(pool, 9)
    got = send(sent)
    assert got.keys() == sent.keys()
    for k in sent:
        assert got[k].dtype == sent[k].dtype and torch.equal(got[k], sent[k]), k
    assert got["pixel_values"].untyped_storage().data_ptr() != sent["pixel_values"].untyped_storage().data_ptr()
    batch_in(pool, 200)  # the worker reuses the freed buffer for its next batch
    assert (got["pixel_values"] == 9).all()  # the received copy does not change


def test_a_buffer_in_flight_is_never_handed_out_again():
    pool = PixelPool()
    first = batch_in(pool, 1)
    second = batch_in(pool, 2)  # the first is not received yet: a second buffer
    buffers = {b["pixel_values"].untyped_storage().data_ptr() for b in (first, second)}
    assert len(buffers) == 2 and len(pool.buffers) == 2
    send(first)  # received and copied: its buffer is free again
    third = batch_in(pool, 3)
    assert third["pixel_values"].untyped_storage().data_ptr() == first["pixel_values"].untyped_storage().data_ptr()
    assert (second["pixel_values"] == 2).all()  # the buffer still in flight kept its pixels
    assert third["pixel_values"].storage_offset() == HEADER


def test_a_larger_batch_gets_a_larger_buffer_and_the_pool_stays_bounded():
    pool = PixelPool(max_buffers=2)
    send(batch_in(pool, 1, n=1))
    big = batch_in(pool, 2, n=3)  # the free buffer is too small
    assert len(pool.buffers) == 2 and big["pixel_values"].shape[0] == 3
    for _ in range(4):
        batch_in(pool, 3, n=1)  # none received: fresh buffers, not pooled past max_buffers
    assert len(pool.buffers) == 2


def _worker(q, received) -> None:
    pool = PixelPool(max_buffers=2)
    for value in range(5, 11):
        q.put(Outbound(batch_in(pool, value)))
    received.wait(60)  # the main process fetches each buffer's file descriptor from this process while it lives
    q.put(len(pool.buffers))


def test_batches_cross_a_real_process_boundary():
    ctx = mp.get_context("fork")  # as the DataLoader's workers on Linux
    q, received = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_worker, args=(q, received))
    p.start()
    got = [q.get(timeout=60) for _ in range(6)]
    received.set()
    pooled = q.get(timeout=60)
    p.join(timeout=60)
    assert [int(b["pixel_values"].flatten()[0]) for b in got] == list(range(5, 11))  # none overwritten
    assert all(b["pixel_values"].dtype == torch.uint8 and b["input_ids"].shape == (2, 6) for b in got)
    assert pooled == 2
