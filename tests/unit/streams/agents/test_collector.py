"""streams.agents.collector: freeze after each batch, a full collection when due."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from streams.agents.collector import BatchCollector


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.collect()
    yield
    gc.unfreeze()
    gc.collect()


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_batch_freezes_what_is_alive_and_a_cycle_waits_for_the_full_collection() -> None:
    now = [0.0]
    collector = BatchCollector(every=60.0, clock=lambda: now[0])
    kept = [_Node() for _ in range(100)]
    cycle = _cycle()  # unreachable already, not collected yet
    collector.batch_done()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_count()[0] < 100  # the young generation starts afresh
    gc.collect()
    assert cycle() is not None  # frozen: the collector does not walk it
    now[0] = 59.0
    collector.batch_done()
    assert (cycle() is not None, collector.full_collections) == (True, 0)
    now[0] = 60.0
    collector.batch_done()  # due: unfreeze, collect, freeze again
    assert (cycle() is None, collector.full_collections) == (True, 1)
    assert gc.get_freeze_count() >= len(kept)


def test_frozen_objects_are_still_freed_by_reference_counting() -> None:
    collector = BatchCollector(every=60.0, clock=lambda: 0.0)
    node = _Node()
    ref = weakref.ref(node)
    collector.batch_done()
    del node
    assert ref() is None
