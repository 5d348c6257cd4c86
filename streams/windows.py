"""Tumbling event-time windows for stage entries and transitions.

Window counts must be exact although the pipeline is at-least-once. Counting
in a Faust windowed table cannot promise that: a replay after a crash adds the
same entry twice. So a window is a *set of users* per key, kept in ClickHouse
as a ``uniqExact`` aggregate state (``funnel.stage_counts``, an
AggregatingMergeTree): adding a user twice changes nothing, a late entry
merges into its old window (the row is corrected, never duplicated), and the
window agent only has to assign windows and pre-aggregate each batch.

This module is pure: window assignment, the per-batch aggregation and the
per-partition watermark that decides what is late.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = ["Watermarks", "WindowAggregator", "WindowKey", "window_start"]

ENTRY = "entry"
TRANSITION = "transition"


def window_start(ts_ms: int, size_seconds: int) -> int:
    """Start (epoch seconds) of the tumbling window of ``size_seconds`` holding ``ts_ms``."""
    ts = ts_ms // 1000
    return ts - ts % size_seconds


class WindowKey(NamedTuple):
    window_start: int
    funnel: str
    kind: str
    from_stage: str
    stage: str
    channel: str


class WindowAggregator:
    """Collects the distinct users per window key within one batch."""

    def __init__(self, size_seconds: int) -> None:
        if size_seconds <= 0:
            raise ValueError("window size must be positive")
        self.size = size_seconds
        self._users: defaultdict[WindowKey, set[str]] = defaultdict(set)

    def add(
        self, ts_ms: int, funnel: str, kind: str, from_stage: str, stage: str,
        channel: str, user_id: str,
    ) -> WindowKey:
        key = WindowKey(window_start(ts_ms, self.size), funnel, kind, from_stage, stage, channel)
        self._users[key].add(user_id)
        return key

    def rows(self) -> Iterator[tuple[int, int, str, str, str, str, str, str]]:
        """Rows for ``stage_counts_input``: one per (window key, user)."""
        for key, users in self._users.items():
            for user in users:
                yield (key.window_start, self.size, key.funnel, key.kind, key.from_stage,
                       key.stage, key.channel, user)

    def counts(self) -> dict[WindowKey, int]:
        return {key: len(users) for key, users in self._users.items()}

    def clear(self) -> None:
        self._users.clear()

    def __len__(self) -> int:
        return sum(len(u) for u in self._users.values())


class Watermarks:
    """Per-partition event-time watermark: the highest event time seen so far.

    An event is *late* when it is older than its partition's watermark minus the
    allowed lateness. Late events are still applied everywhere (their window is
    corrected in ClickHouse); they are counted so operators see producer delay.
    """

    def __init__(self, allowed_lateness_seconds: float) -> None:
        self.allowed_ms = int(allowed_lateness_seconds * 1000)
        self._marks: dict[object, int] = {}

    def observe(self, partition: object, ts_ms: int) -> bool:
        """Record ``ts_ms`` for ``partition``; return True if it is late."""
        mark = self._marks.get(partition)
        if mark is None or ts_ms > mark:
            self._marks[partition] = ts_ms
            return False
        return ts_ms < mark - self.allowed_ms

    def forget(self, partitions: Iterable[object]) -> None:
        for p in partitions:
            self._marks.pop(p, None)
