"""Consumer lag from Faust's own offset bookkeeping.

faust-streaming 0.15.3 exposes no public per-partition committed offset:
:func:`consumer_lag` reads ``Consumer._committed_offset`` and
``Consumer._read_offset``, the maps its commit logic keeps.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["consumer_lag"]


def consumer_lag(consumer: Any, topics: Collection[str]) -> int | None:
    """Messages not yet processed on this worker's partitions of ``topics``.

    Highwater (next offset the broker will assign) minus the committed offset
    (Faust keeps the next offset to read, as Kafka does), or the read position
    before the first commit. None while the consumer knows no offsets yet
    (starting, rebalancing).
    """
    try:
        committed: Mapping[Any, int | None] = consumer._committed_offset
        read: Mapping[Any, int | None] = consumer._read_offset
        known = False
        lag = 0
        for tp in consumer.assignment():
            if tp.topic not in topics:
                continue
            high = consumer.highwater(tp)
            done = committed.get(tp)
            if done is None and read.get(tp) is not None:
                done = int(read[tp] or 0) + 1
            if high is None or done is None:
                continue
            known = True
            lag += max(0, int(high) - int(done))
        return lag if known else None
    except Exception:  # not started, or rebalancing: no answer rather than a wrong one
        return None
