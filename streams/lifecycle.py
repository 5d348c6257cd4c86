"""Deadlines that fire as time passes: conversion windows and stalled leads.

Both trackers keep work proportional to the users whose state changes or
whose deadline passes: each user has at most one pending deadline per funnel
in a heap; a deadline whose user has moved on since is skipped when it comes
up (lazy invalidation), never searched for. Nothing here scans all users,
except :meth:`clear` plus re-adding when partitions are reassigned.

* :class:`WindowDeadlines` - per partition, ordered by the end of the user's
  conversion window at their furthest stage, released by the partition's
  event-time watermark (so replays and backlogs behave like live traffic).
* :class:`StallTracker` - users by (funnel, furthest stage, temperature)
  from the wall clock: active while they progressed recently, then hot, warm
  and cold. The counts feed the ``funnel_stalled_users`` gauge.

Both hold an entry per tracked user, a million of them on a big worker, so
entries are kept small: no sequence numbers in the heaps (equal deadlines
are ordered by the user's key), nothing in a heap entry that its deadline
and the user's current entry give (the stage entry time, the last
progress), one dict per funnel instead of tuple keys, and a stalled user's
stage, level and last progress packed into one int.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Hashable, Iterator
from typing import NamedTuple

__all__ = ["TEMPERATURES", "StallTracker", "WindowDeadline", "WindowDeadlines"]

TEMPERATURES = ("hot", "warm", "cold")


class WindowDeadline(NamedTuple):
    deadline: int
    key: bytes
    funnel: str
    stage: str
    entered: int


class WindowDeadlines:
    """Per-partition heaps of conversion-window ends.

    A heap entry is (deadline, key, funnel, stage); the time the user entered
    the stage is the deadline minus the funnel's window, given back by :meth:`due`.
    """

    def __init__(self) -> None:
        self._heaps: dict[Hashable, list[tuple[int, bytes, str, str]]] = {}
        self._windows: dict[str, int] = {}  # funnel -> window length (ms)

    def schedule(self, partition: Hashable, key: bytes, funnel: str, stage: str, entered: int,
                 window_ms: int) -> None:
        self._windows[funnel] = window_ms
        heapq.heappush(self._heaps.setdefault(partition, []), (entered + window_ms, key, funnel, stage))

    def due(self, partition: Hashable, watermark: int) -> Iterator[WindowDeadline]:
        """Pop every deadline of ``partition`` at or before ``watermark``."""
        heap = self._heaps.get(partition)
        while heap and heap[0][0] <= watermark:
            deadline, key, funnel, stage = heapq.heappop(heap)
            yield WindowDeadline(deadline, key, funnel, stage, deadline - self._windows[funnel])

    def clear(self) -> None:
        self._heaps.clear()

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())


class StallTracker:
    """Counts users per (funnel, stage, temperature); updated per change and per crossing.

    ``stall_after``, ``warm_after`` and ``cold_after`` are milliseconds without
    progress after which a user is hot, warm and cold.
    """

    def __init__(self, stall_after: int, warm_after: int, cold_after: int) -> None:
        if not 0 < stall_after <= warm_after <= cold_after:
            raise ValueError("need 0 < stall_after <= warm_after <= cold_after")
        self.thresholds = (stall_after, warm_after, cold_after)
        # funnel -> user key -> _pack(stage id, last progress, level)
        self._users: dict[str, dict[bytes, int]] = {}
        self._stages: list[str] = []  # stage id -> stage name
        self._stage_ids: dict[str, int] = {}
        self._counts: Counter[tuple[str, str, int]] = Counter()
        # (next threshold, key, funnel): current while it is the user's last
        # progress plus the threshold of the user's level.
        self._heap: list[tuple[int, bytes, str]] = []

    def _level(self, last: int, now: int) -> int:
        """0 active, 1 hot, 2 warm, 3 cold."""
        idle = now - last
        hot, warm, cold = self.thresholds  # ascending (checked in __init__)
        return 0 if idle < hot else 1 if idle < warm else 2 if idle < cold else 3

    def _stage_id(self, stage: str) -> int:
        stage_id = self._stage_ids.get(stage)
        if stage_id is None:
            if len(self._stages) >= 1 << 14:  # what _pack leaves for it
                raise ValueError("more than 16384 distinct stage names")
            stage_id = self._stage_ids[stage] = len(self._stages)
            self._stages.append(stage)
        return stage_id

    @staticmethod
    def _pack(stage_id: int, last: int, level: int) -> int:
        return (last << 16) | (stage_id << 2) | level  # level < 4; times may be negative

    def _unpack(self, packed: int) -> tuple[str, int, int]:
        """stage, last progress, level."""
        return self._stages[(packed & 0xFFFF) >> 2], packed >> 16, packed & 3

    def update(self, key: bytes, funnel: str, stage: str | None, last: int, now: int) -> None:
        """The user's furthest stage is now ``stage`` (None: finished), last progress ``last``."""
        users = self._users.get(funnel)
        old = users.pop(key, None) if users is not None else None
        if old is not None and old & 3:
            old_stage, _, old_level = self._unpack(old)
            self._counts[(funnel, old_stage, old_level)] -= 1
        if stage is None:
            return
        self._place(key, funnel, stage, last, now)

    def _place(self, key: bytes, funnel: str, stage: str, last: int, now: int) -> None:
        level = self._level(last, now)
        self._users.setdefault(funnel, {})[key] = self._pack(self._stage_id(stage), last, level)
        if level:
            self._counts[(funnel, stage, level)] += 1
        if level < len(self.thresholds):
            heapq.heappush(self._heap, (last + self.thresholds[level], key, funnel))

    def advance(self, now: int) -> int:
        """Move users whose next threshold passed; return how many moved."""
        moved = 0
        while self._heap and self._heap[0][0] <= now:
            due, key, funnel = heapq.heappop(self._heap)
            packed = self._users.get(funnel, {}).get(key)
            if packed is None:
                continue  # the user finished since this was scheduled
            stage, last, level = self._unpack(packed)
            if level >= len(self.thresholds) or last + self.thresholds[level] != due:
                continue  # the user progressed since this was scheduled
            self.update(key, funnel, stage, last, now)
            moved += 1
        return moved

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Stalled users per (funnel, stage, temperature); active users are not stalled."""
        return {(f, s, TEMPERATURES[level - 1]): n for (f, s, level), n in self._counts.items() if n}

    def clear(self) -> None:
        self._users.clear()
        self._counts.clear()
        self._heap.clear()

    def __len__(self) -> int:
        return sum(len(users) for users in self._users.values())
