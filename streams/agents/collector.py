"""Python's garbage collector, run the way a streaming worker allocates.

The cyclic collector walks every young container that is still alive when it
runs: in a worker that is each new user's journey (a few dicts and lists that
live for ever) and the rows and records of the batch in hand (alive until its
write). It frees almost nothing: over a 200 000-event run it found about
3 000 objects in reference cycles, while its walks took 1.3 s of the worker's
8 (BENCHMARKS.md, "Batch-native hot path").

So after each batch everything alive is frozen (``gc.freeze``: moved, in
constant time, to a generation the collector never walks). Frozen objects
are still freed by reference counting, as nearly all are; only reference
cycles among them wait, for a full collection every
:data:`FULL_COLLECT_SECONDS`, which unfreezes everything first.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

__all__ = ["FULL_COLLECT_SECONDS", "BatchCollector"]

log = logging.getLogger(__name__)

#: Seconds between two full collections (the only ones that free cycles among frozen objects).
#: A full collection walks every live container: about 0.3 s per million.
FULL_COLLECT_SECONDS = 600.0


class BatchCollector:
    """Freezes what lived through a batch; collects everything every ``every`` seconds."""

    def __init__(self, every: float = FULL_COLLECT_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self._next = clock() + every
        self.full_collections = 0

    def batch_done(self) -> None:
        """Call after each batch: freeze what is alive now (a full collection first when due)."""
        now = self.clock()
        if now >= self._next:
            self.collect()
            self._next = self.clock() + self.every
        gc.freeze()

    def collect(self) -> int:
        """Unfreeze and collect every generation; the number of unreachable objects found."""
        began = time.perf_counter()
        objects = gc.get_freeze_count()
        gc.unfreeze()
        found = gc.collect()
        self.full_collections += 1
        took = time.perf_counter() - began
        (log.info if took >= 0.5 else log.debug)(
            "gc: full collection over %d frozen objects took %.2f s, %d unreachable", objects, took, found)
        return found
