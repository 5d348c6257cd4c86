"""Tumbling event-time windows for stage entries and transitions.

Window counts must be exact although the pipeline is at-least-once, and
transitions can be corrected when a user's events arrive out of order (see
:mod:`streams.funnel.journey`). Counting in a Faust windowed table promises neither:
a replay after a crash adds the same entry twice and a count cannot take a
corrected transition back. So a window is the *set of its users*: the window
agent writes one membership row per (funnel, kind, stage, user) - keyed, with
the transition's version and a deleted flag - to ``funnel.stage_counts``, a
ReplacingMergeTree. A replay rewrites the same row, a correction replaces it,
a late event lands in its own (old) window; ``stage_counts_final`` counts the
members per window.

The journey agent computes the memberships of each batch from the entries and
transitions it produces and writes them with the batch's other rows (one
flush, one deduplication token scheme): no topic and no agent in between.

This module is pure: window assignment, the per-batch collection (highest
version per key) and the per-partition watermark that decides what is late.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from streams.funnel.outputs import StageEntry, Transition

__all__ = ["ENTRY", "TRANSITION", "Membership", "Watermarks", "WindowAggregator", "window_start"]

ENTRY = "entry"
TRANSITION = "transition"


def window_start(ts_ms: int, size_seconds: int) -> int:
    """Start (epoch seconds) of the tumbling window of ``size_seconds`` holding ``ts_ms``."""
    ts = ts_ms // 1000
    return ts - ts % size_seconds


class Membership(NamedTuple):
    """One row of ``stage_counts`` (column order: ``sinks.COLUMNS['stage_counts']``)."""

    window_start: int
    window_seconds: int
    funnel: str
    kind: str
    from_stage: str
    stage: str
    channel: str
    user_id: str
    version: int
    is_deleted: int


class WindowAggregator:
    """Collects window memberships of one batch, the highest version per key."""

    def __init__(self, size_seconds: int) -> None:
        if size_seconds <= 0:
            raise ValueError("window size must be positive")
        self.size = size_seconds
        self._rows: dict[tuple[str, str, str, str], Membership] = {}

    def add(
        self, ts_ms: int, funnel: str, kind: str, from_stage: str, stage: str, channel: str,
        user_id: str, version: int = 1, deleted: bool = False,
    ) -> Membership:
        row = Membership(window_start(ts_ms, self.size), self.size, funnel, kind, from_stage, stage,
                         channel, user_id, version, int(deleted))
        key = (funnel, kind, stage, user_id)
        current = self._rows.get(key)
        if current is None or current.version <= version:
            self._rows[key] = row
        return row

    def add_entry(self, x: StageEntry) -> None:
        """The window membership of a stage entry, or its tombstone (``deleted``).

        What ``add`` keeps for it, as a plain tuple (equal to the
        :class:`Membership`; a named tuple's constructor costs more than the
        rest of this, once per stage entry).
        """
        key = (x.funnel, ENTRY, x.stage, x.user_id)
        current = self._rows.get(key)
        version = x.version
        if current is None or current[8] <= version:
            size, ts = self.size, x.ts // 1000
            self._rows[key] = (ts - ts % size, size, x.funnel, ENTRY, "", x.stage, x.channel,  # type: ignore[assignment]
                               x.user_id, version, int(x.deleted or x.excluded))

    def add_transition(self, x: Transition) -> Membership:
        """The window membership of a transition, a correction or a tombstone (``deleted``).

        An excluded person's entries and transitions are no window members:
        their memberships are tombstones (marked rows stay in stage_entries
        and transitions).
        """
        return self.add(x.ts, x.funnel, TRANSITION, x.from_stage, x.to_stage, x.channel, x.user_id,
                        x.version, x.deleted or x.excluded)

    def rows(self) -> Iterator[Membership]:
        """The memberships kept (some as plain tuples of a Membership's fields, equal to it)."""
        return iter(self._rows.values())

    def counts(self) -> dict[tuple[int, str, str, str, str, str], int]:
        """Members per (window_start, funnel, kind, from_stage, stage, channel) in this batch."""
        out: dict[tuple[int, str, str, str, str, str], int] = {}
        for r in self._rows.values():
            if not r[9]:  # is_deleted (r may be a plain tuple, see add_entry)
                k = (r[0], r[2], r[3], r[4], r[5], r[6])
                out[k] = out.get(k, 0) + 1
        return out

    def clear(self) -> None:
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)


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

    def mark(self, partition: object) -> int | None:
        """The partition's watermark, or None before its first event."""
        return self._marks.get(partition)

    def forget(self, partitions: Iterable[object]) -> None:
        for p in partitions:
            self._marks.pop(p, None)
