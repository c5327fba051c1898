"""`shards.task` keeps the cyclic collector off the objects that existed before a shard, and only while shards run."""

from __future__ import annotations

import gc
import threading
import weakref

from shards import task


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_objects_from_before_a_shard_are_frozen_until_the_last_shard_ends() -> None:
    assert gc.get_freeze_count() == 0
    old = Node()
    gone = weakref.ref(old)
    entered, release = threading.Barrier(2), threading.Event()
    counts: list[int] = []

    def second_shard() -> None:
        with task._young_objects_only():
            entered.wait()
            release.wait()

    other = threading.Thread(target=second_shard)
    with task._young_objects_only():
        other.start()
        entered.wait()  # both shards are running
        counts.append(gc.get_freeze_count())
        del old
        gc.collect()
        assert gone() is not None  # frozen: no collection looks at it while a shard runs
    counts.append(gc.get_freeze_count())  # the other shard still runs
    release.set()
    other.join()
    assert counts[0] > 0 and counts[1] > 0  # (objects freed by reference counting leave the frozen set)
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert gone() is None  # unfrozen with the last shard: the garbage cycle is collected after all


def test_a_failing_shard_unfreezes_too() -> None:
    try:
        with task._young_objects_only():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
