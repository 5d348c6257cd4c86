"""Table recovery and standbys a fetched batch at a time: Faust's bookkeeping, not its per-record hand-off.

Faust hands every changelog record from its fetch loop to the table
manager's changelog queue through the conductor (a channel decode, a queue
put that waits while the queue is full, Faust's per-message race of four
tasks) and takes it off again in ``Recovery._slurp_changelogs`` (an
``asyncio.wait_for`` task per record, two debug f-strings, the remaining
counts recomputed per record). The fetch loop reads far faster than that
loop drains, so the queue stays full and every record pays the slow path
both ways: a restarted worker replayed some 2 000-3 000 records/s, all CPU
(tests/integration/recovery_bench.py measures it).

:meth:`BatchRecovery.take_fetched` does, for the records the consumer
fetched from one changelog partition, what ``_slurp_changelogs`` does for
each of them, in the same order: decode the record with the changelog
channel's own decoder (so the events are those Faust's queue would hold),
skip offsets already seen, advance the active or standby offset, buffer the
event in ``Recovery.buffers`` and apply the buffer to the table with
``apply_changelog_batch`` whenever it reaches the table's
``recovery_buffer_size`` (``standby_buffer_size``), then end active recovery
exactly when Faust would (no active offset short of its highwater: buffers
flushed, recovery marked ended, ``signal_recovery_end`` set) and report
standbys ready. Faust's own loop still runs, for whatever
``take_fetched`` leaves to its queue:

* a record Faust's decoder rejects, and the rest of its batch (Faust's path
  handles decode errors its way);
* every record while Faust's changelog queue holds anything (order);
* partitions that are neither active nor standby here, tables with an
  ``on_changelog_event`` callback, and records while flow control is
  suspended (a rebalance).

Adaptations of faust-streaming 0.15.3 internals (pinned in pyproject.toml):
``Recovery`` (its ``_slurp_changelogs`` loop, attributes ``active_tps``,
``standby_tps``, ``tp_to_table``, ``active_offsets``, ``standby_offsets``,
``buffers``, ``buffer_sizes``, ``_processing_times``,
``_last_active_event_processed_at``, ``_active_events_received_at``,
``_standby_events_received_at``, ``_last_flush_at``, ``_set_recovery_ended``),
``TableManager.recovery`` / ``_channels`` / ``changelog_queue`` and
``Table._on_changelog_event``; the app's ``TableManager`` setting picks
:class:`BatchTableManager`. tests/unit/streams/faust_adapt/test_recovery.py
replays the same records through Faust's loop and through this one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any, cast

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP, EventT, Message
from faust.utils.tracing import finish_span

__all__ = ["BatchRecovery", "BatchTableManager"]


class _Suspended(Exception):
    """A decoder that would have waited (Faust's never does for a valid record)."""


def _now(coro: Any) -> Any:
    """The result of a coroutine that finishes without waiting (Faust's channel decoder)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise _Suspended()


class BatchRecovery(Recovery):
    """Faust's ``Recovery`` that also takes a fetched batch of changelog records at once."""

    def take_fetched(self, tp: TP, records: Sequence[Any],
                     to_message: Callable[[TP, Any], Message]) -> int:
        """Apply ``records`` (aiokafka records of changelog partition ``tp``, in offset order) as
        ``_slurp_changelogs`` would; returns how many were taken, from the first (the rest go
        Faust's way)."""
        if not records:
            return 0
        tables = self.tables
        table = self.tp_to_table.get(tp)
        if table is None or table._on_changelog_event is not None:  # type: ignore[attr-defined]
            return 0
        channel = tables._channels.get(table)
        if channel is None or tables.changelog_queue.qsize() or not self.app.flow_control.is_active():
            return 0
        if tp in self.active_tps:
            active, offsets = True, self.active_offsets
            size_of, received = "recovery_buffer_size", self._active_events_received_at
        elif tp in self.standby_tps:
            active, offsets = False, self.standby_offsets
            size_of, received = "standby_buffer_size", self._standby_events_received_at
        else:
            return 0  # Faust's loop warns about it
        bufsize = self.buffer_sizes.get(tp)
        if bufsize is None:
            bufsize = self.buffer_sizes[tp] = getattr(table, size_of)
        decode = cast(Any, channel).decode
        buf = self.buffers[table]
        seen = offsets.get(tp)
        taken = applied = 0
        for record in records:
            offset = record.offset
            if seen is None or offset > seen:
                try:
                    event: EventT = _now(decode(to_message(tp, record), propagate=True))
                except Exception:  # a decode error: Faust's path deals with it
                    break
                seen = offsets[tp] = offset
                buf.append(event)
                applied += 1
                if len(buf) >= bufsize:
                    table.apply_changelog_batch(buf)
                    buf.clear()
                    self._last_flush_at = monotonic()
            taken += 1
        if not taken:
            return 0
        now = monotonic()
        received[tp] = now
        if active and applied:
            self._record_processing(now, applied)
        self._after_records()
        return taken

    def _record_processing(self, now: float, applied: int) -> None:
        """Faust's per-record processing times (its time-remaining estimate): the batch's, shared."""
        last = self._last_active_event_processed_at
        if last is not None:
            times = self._processing_times
            times.extend([(now - last) / applied] * applied)
            for _ in range(len(times) - self.num_samples_required_for_estimate):
                times.popleft()
        self._last_active_event_processed_at = now

    def _after_records(self) -> None:
        """What ``_slurp_changelogs`` does after each record: end active recovery, report standbys."""
        if self.in_recovery and not self.need_recovery():
            self.flush_buffers()
            self._set_recovery_ended()
            self.signal_recovery_end.set()
        tables = cast(Any, self.tables)
        if not (self._standbys_span is None and tables.standbys_ready) and not self.standby_remaining_total():
            if self._standbys_span:
                finish_span(self._standbys_span)
                self._standbys_span = None
            tables.on_standbys_ready()


class BatchTableManager(TableManager):
    """Faust's table manager with :class:`BatchRecovery`."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = BatchRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
