"""Deadlines that fire as time passes: conversion windows and stalled leads.

Both trackers keep work proportional to the users whose state changes or
whose deadline passes: each user has at most one pending deadline per funnel
on a :class:`DeadlineWheel`; a deadline whose user has moved on since is
skipped when it comes up (lazy invalidation), never searched for. Nothing here
scans all users, except :meth:`clear` plus re-adding when partitions are
reassigned.

* :class:`WindowDeadlines` - per partition, ordered by the end of the user's
  conversion window at their furthest stage, released by the partition's
  event-time watermark (so replays and backlogs behave like live traffic).
* :class:`StallTracker` - users by (funnel, furthest stage, temperature)
  from the wall clock: active while they progressed recently, then hot, warm
  and cold. The counts feed the ``funnel_stalled_users`` gauge.

Both hold an entry per tracked user, a million of them on a big worker, so
entries are kept small: a pending deadline is 8 bytes of time, 8 of tag and
a reference to the user's key in a bucket's arrays (a heap of tuples took
about 120 bytes: the tuple and its int); nothing is stored that the deadline
and the user's current entry give (the stage entry time, the last progress);
one dict per funnel instead of tuple keys; a stalled user's stage, level and
last progress packed into one int.
"""

from __future__ import annotations

import heapq
from array import array
from collections import Counter
from collections.abc import Hashable, Iterator
from typing import Generic, NamedTuple, TypeVar

__all__ = ["TEMPERATURES", "DeadlineWheel", "StallTracker", "WindowDeadline", "WindowDeadlines"]

TEMPERATURES = ("hot", "warm", "cold")

_T = TypeVar("_T", bound=Hashable)


class _Ids(Generic[_T]):
    """Small ints for a few distinct values (stages, funnels), so entries can hold an int."""

    def __init__(self, limit: int = 1 << 31) -> None:
        self.limit = limit
        self.values: list[_T] = []  # id -> value
        self._ids: dict[_T, int] = {}

    def id(self, value: _T) -> int:
        found = self._ids.get(value)
        if found is None:
            if len(self.values) >= self.limit:
                raise ValueError(f"more than {self.limit} distinct values")
            found = self._ids[value] = len(self.values)
            self.values.append(value)
        return found


#: Width of a wheel bucket (ms): a 30-day window spreads deadlines over ~2 900 buckets.
BUCKET_MS = 15 * 60 * 1000


class _Bucket:
    """Deadlines within one bucket's width, in arrival order until they come up."""

    __slots__ = ("dues", "keys", "ordered", "pos", "tags")

    def __init__(self) -> None:
        self.dues = array("q")
        self.tags = array("i")
        self.keys: list[bytes | None] = []
        self.pos = 0  # entries before it were released
        self.ordered = True

    def sort(self) -> None:
        """Order the entries not yet released by due time (stable), dropping the released ones."""
        dues, tags, keys = self.dues, self.tags, self.keys
        order = sorted(range(self.pos, len(dues)), key=dues.__getitem__)
        self.dues = array("q", [dues[i] for i in order])
        self.tags = array("i", [tags[i] for i in order])
        self.keys = [keys[i] for i in order]
        self.pos = 0
        self.ordered = True


class DeadlineWheel:
    """(due, key, tag) entries, released in due order once a clock passes them.

    A timing wheel: entries go into buckets ``width`` wide (appends, no
    ordering work); a bucket is sorted once it comes up. Equal due times come
    out in the order they were pushed.
    """

    def __init__(self, width: int = BUCKET_MS) -> None:
        self.width = width
        self._buckets: dict[int, _Bucket] = {}
        self._order: list[int] = []  # heap of the bucket numbers in use
        self._len = 0

    def push(self, due: int, key: bytes, tag: int) -> None:
        number = due // self.width
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = _Bucket()
            heapq.heappush(self._order, number)
        elif bucket.ordered and len(bucket.dues) > bucket.pos and due < bucket.dues[-1]:
            bucket.ordered = False
        bucket.dues.append(due)
        bucket.tags.append(tag)
        bucket.keys.append(key)
        self._len += 1

    def pop_until(self, limit: int) -> Iterator[tuple[int, bytes, int]]:
        """Release every entry due at or before ``limit``, in due order.

        Entries pushed while this runs are released by it only if they land
        after the entry being released; the rest wait for the next call.
        """
        while self._order and self._order[0] * self.width <= limit:
            number = self._order[0]
            bucket = self._buckets[number]
            if not bucket.ordered:
                bucket.sort()
            while bucket.pos < len(bucket.dues) and bucket.dues[bucket.pos] <= limit:
                i = bucket.pos
                bucket.pos += 1
                key = bucket.keys[i]
                bucket.keys[i] = None  # the wheel no longer keeps the key alive
                self._len -= 1
                assert key is not None
                yield bucket.dues[i], key, bucket.tags[i]
            if bucket.pos < len(bucket.dues):
                return  # ``limit`` falls inside this bucket
            del self._buckets[number]
            heapq.heappop(self._order)

    def clear(self) -> None:
        self._buckets.clear()
        self._order.clear()
        self._len = 0

    def __len__(self) -> int:
        return self._len


class WindowDeadline(NamedTuple):
    deadline: int
    key: bytes
    funnel: str
    stage: str
    entered: int


class WindowDeadlines:
    """Per-partition wheels of conversion-window ends.

    An entry is (deadline, key, (funnel, stage) id); the time the user entered
    the stage is the deadline minus the funnel's window, given back by :meth:`due`.
    """

    def __init__(self, width: int = BUCKET_MS) -> None:
        self.width = width
        self._wheels: dict[Hashable, DeadlineWheel] = {}
        self._windows: dict[str, int] = {}  # funnel -> window length (ms)
        self._places: _Ids[tuple[str, str]] = _Ids()

    def schedule(self, partition: Hashable, key: bytes, funnel: str, stage: str, entered: int,
                 window_ms: int) -> None:
        self._windows[funnel] = window_ms
        wheel = self._wheels.get(partition)
        if wheel is None:
            wheel = self._wheels[partition] = DeadlineWheel(self.width)
        wheel.push(entered + window_ms, key, self._places.id((funnel, stage)))

    def due(self, partition: Hashable, watermark: int) -> Iterator[WindowDeadline]:
        """Release every deadline of ``partition`` at or before ``watermark``."""
        wheel = self._wheels.get(partition)
        if wheel is None:
            return
        for deadline, key, place in wheel.pop_until(watermark):
            funnel, stage = self._places.values[place]
            yield WindowDeadline(deadline, key, funnel, stage, deadline - self._windows[funnel])

    def clear(self) -> None:
        self._wheels.clear()

    def __len__(self) -> int:
        return sum(len(w) for w in self._wheels.values())


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
        self._stages: _Ids[str] = _Ids(limit=1 << 14)  # what _pack leaves for a stage id
        self._counts: Counter[tuple[str, str, int]] = Counter()
        # (next threshold, key, funnel id): current while it is the user's last
        # progress plus the threshold of the user's level.
        self._wheel = DeadlineWheel()
        self._funnels: _Ids[str] = _Ids()

    def _level(self, last: int, now: int) -> int:
        """0 active, 1 hot, 2 warm, 3 cold."""
        idle = now - last
        hot, warm, cold = self.thresholds  # ascending (checked in __init__)
        return 0 if idle < hot else 1 if idle < warm else 2 if idle < cold else 3

    @staticmethod
    def _pack(stage_id: int, last: int, level: int) -> int:
        return (last << 16) | (stage_id << 2) | level  # level < 4; times may be negative

    def _unpack(self, packed: int) -> tuple[str, int, int]:
        """stage, last progress, level."""
        return self._stages.values[(packed & 0xFFFF) >> 2], packed >> 16, packed & 3

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
        thresholds = self.thresholds
        idle = now - last
        if idle < thresholds[0]:  # active (level 0), the case of nearly every update
            users = self._users.get(funnel)
            if users is None:
                users = self._users[funnel] = {}
            users[key] = self._pack(self._stages.id(stage), last, 0)
            self._wheel.push(last + thresholds[0], key, self._funnels.id(funnel))
            return
        level = self._level(last, now)
        self._users.setdefault(funnel, {})[key] = self._pack(self._stages.id(stage), last, level)
        if level:
            self._counts[(funnel, stage, level)] += 1
        if level < len(thresholds):
            self._wheel.push(last + thresholds[level], key, self._funnels.id(funnel))

    def advance(self, now: int) -> int:
        """Move users whose next threshold passed; return how many moved."""
        moved = 0
        for due, key, funnel_id in self._wheel.pop_until(now):
            funnel = self._funnels.values[funnel_id]
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
        self._wheel.clear()

    def __len__(self) -> int:
        return sum(len(users) for users in self._users.values())
