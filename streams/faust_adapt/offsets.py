"""Reading the agents' partitions in order, none skipped, and again when the broker lost them.

A broker that loses its data (the embedded broker keeps it in memory)
starts its partitions again at offset 0, while the consumer still reads at
its old positions and may even commit them to the new broker: the first
messages of each partition would be skipped. :meth:`RewindingConsumer.rewind`
reads such partitions again from their start (the pipeline is idempotent:
journeys drop events they have seen, ClickHouse keeps one row per key) and
commits nothing for them until that start has been processed.

Faust's streams drop what arrives while flow control is suspended, and its
fetch loop takes any jump in a partition's offsets as a hole to commit past:
a restarted worker lost messages that way. :meth:`RewindingConsumer.getmany`
hands a stream partition's messages out only while flow control is on, and
only in order from the next offset it expects; after a jump the partition is
read again from there.

On the agents' topics those messages are envelopes (:mod:`streams.faust_adapt.envelopes`):
one per partition and fetch, committed by the partition's ``EnvelopeLog``
(:mod:`streams.faust_adapt.commits`) instead of Faust's acknowledged offsets.
Envelopes that Faust's stream queues drop when flow control resumes are read
again (:meth:`RewindingConsumer.reread_dropped`), and so is a partition that
is behind with nothing handed out for a while (``_reread_idle``). Fetches
wait at most ``FETCH_MAX_WAIT_MS`` at the broker (:mod:`streams.faust_adapt.endoffsets`).
Everything here adapts
faust-streaming 0.15.3 ``Consumer`` internals (pinned in pyproject.toml).
"""


from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from time import monotonic
from typing import Any

from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from streams.faust_adapt.commits import EnvelopeCommitter
from streams.faust_adapt.endoffsets import ConsumerThread
from streams.faust_adapt.envelopes import ENVELOPE_MAX_RECORDS, Envelope, EnvelopeLog
from streams.faust_adapt.recovery import BatchRecovery

__all__ = ["RewindingConsumer"]

log = logging.getLogger(__name__)

#: Most changelog records recovery takes without letting other tasks run (some 40 ms).
CHANGELOG_CHUNK = 1000
#: How often partitions are checked for being behind with nothing handed out (_reread_idle).
IDLE_CHECK_SECONDS = 5.0
#: How long a partition may be behind with nothing handed out before it is read again.
REREAD_IDLE_SECONDS = 20.0


class RewindingConsumer(EnvelopeCommitter):
    """The consumer that can read partitions the broker lost again from their start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Partition -> the offset it was rewound to, or None while the rewind
        # waits for the fetch loop. No offset is committed for a partition
        # here until its start offset has been acknowledged.
        self._rewound: dict[TP, int | None] = {}
        # Partition -> the next offset to hand out: one past the last handed
        # out, or after a seek the committed offset (the start if none).
        # Exact, unlike Faust's read offsets, which a seek sets to the
        # committed offset as if that message had been read.
        self._next: dict[TP, int] = {}
        # Stream partition -> its start, for those the last seek found no
        # committed offset for (seek_to_committed fills it).
        self._starts: dict[TP, int] = {}
        # Partition -> the first offset of a hole it is reading again.
        self._refetching: dict[TP, int] = {}
        # Stream partition -> the offset to seek back to before the next
        # fetch: Faust's queues dropped what was handed out from there.
        self._dropped: dict[TP, int] = {}
        # Stream partition -> since when it is behind with nothing in flight
        # (see _reread_idle), and when to look next.
        self._idle_since: dict[TP, float] = {}
        self._next_idle_check = 0.0
        # What getmany awaits right now (for the stall log).
        self._waiting = ""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def rewind(self, tps: Iterable[TP]) -> None:
        """Read ``tps`` again from their start (those assigned here, now or later)."""
        for tp in tps:
            self._rewound[tp] = None

    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Seek to the committed offsets, and stream partitions without one to their start.

        aiokafka seeks only partitions committed past offset 0; the others
        stay where the fetcher is. After recovery suspended flow control, that
        is past the messages it fetched and Faust's streams dropped: a
        partition nobody had committed yet lost them (97 messages of a
        ``purchase`` partition in a crash test).
        """
        committed = await super().seek_to_committed()
        unset = [tp for tp in (ensure_TP(tp) for tp, offset in committed.items() if not offset)
                 if not self._is_changelog_tp(tp)]
        starts = {}
        if unset:
            starts = {tp: int(offset) for tp, offset in (await self.earliest_offsets(*unset)).items()}
        for tp, offset in starts.items():
            await self._seek(tp, offset)
        self._starts = starts
        return committed

    async def perform_seek(self) -> None:
        # After a rebalance Faust seeks to the committed offsets, which the
        # new broker may hold from before the loss was seen: rewind again.
        await super().perform_seek()
        for tp in self._rewound:
            self._rewound[tp] = None
        self._refetching.clear()
        self._forget_envelopes()  # what is in flight is read again from the committed offsets
        self._next.clear()  # in place: a fetch being handed out holds this dict
        self._next.update((tp, offset) for tp, offset in self._committed_offset.items() if offset is not None)
        self._next.update(self._starts)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """One fetch: a stream partition's records as envelopes, strictly in offset order, none skipped.

        Replaces Faust's ``Consumer.getmany`` (faust-streaming 0.15.3), which
        makes a message of every record. Changelog records go to table
        recovery a fetched batch at a time (:mod:`streams.faust_adapt.recovery`);
        what it leaves is handed out one by one, as Faust's are. The records of a stream (agent)
        partition are handed out as :class:`~streams.faust_adapt.envelopes.Envelope`
        messages of up to ``ENVELOPE_MAX_RECORDS`` records, each recorded in
        the partition's :class:`~streams.faust_adapt.envelopes.EnvelopeLog`, which decides
        what may be committed.

        Faust's fetch loop hands out any message newer than the partition's
        read offset and takes the offsets in between as done (compaction and
        transaction markers leave such holes), so commits pass them. Its
        streams also drop, unacknowledged, every message that arrives while
        flow control is suspended (while recovery ends and seeks the
        partitions it has just resumed), counting on that seek to read them
        again; but the seek lowers the read offset under the fetch loop, which
        then drops the messages read again as seen, or takes the jump to the
        next ones as a hole. A restarted worker lost 142-143 messages per
        partition that way.

        Here a stream partition's records are handed out only while flow
        control is on, only while the consumer generation they were fetched
        in lasts, and only in order from the next offset expected (the
        committed offset, or the start, after a seek). A record past it makes
        the partition be read again from there (its later records in this
        fetch are dropped); a hole that is still there when read again is
        committed past, so a truncated topic cannot loop.
        """
        self._waiting = "fetch"
        records, active = await self._wait_next_records(timeout)
        self._waiting = ""
        if records is None or self.should_stop:
            return
        app = self.app
        if not self.flow_active:  # Faust's: a rebalance or recovery stopped the flow
            try:
                self._waiting = "seek to committed (flow stopped)"
                await self.perform_seek()
            except Exception as exc:
                log.warning("could not seek to the committed offsets while flow is stopped: %s", exc)
            finally:
                self._waiting = ""
            return
        generation = app.consumer_generation_id
        changelogs = app.tables.changelog_topics
        recovery = getattr(app.tables, "recovery", None) if changelogs else None
        if not isinstance(recovery, BatchRecovery):
            recovery = None
        buffered = self._buffered_partitions
        to_message = self._to_message
        fetches = list(records.items())
        for i, (tp, fetched) in enumerate(fetches):
            if not self.flow_active or app.consumer_generation_id != generation:
                # What is left is fetched again after the seek that usually follows.
                self._reread_unhanded(tp for tp, _ in fetches[i:])
                return
            if active is not None and tp not in active and tp not in buffered:
                continue
            app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic in changelogs:
                # Recovery and standbys take the batch at once (streams.faust_adapt.recovery);
                # what they leave goes Faust's way, record by record.
                applied = 0
                while recovery is not None and applied < len(fetched):
                    chunk = fetched[applied:applied + CHANGELOG_CHUNK]
                    took = recovery.take_fetched(tp, chunk, to_message)
                    if took:
                        applied += took
                        self._read_offset[tp] = fetched[applied - 1].offset  # what Faust's loop would set
                    if took < len(chunk):
                        break
                    await asyncio.sleep(0)  # others run meanwhile, as Faust's loop lets them every 100
                for record in fetched[applied:]:
                    yield tp, to_message(tp, record)
                continue
            taken = await self._in_order(tp, fetched, generation)
            if not taken:
                if app.consumer_generation_id != generation:
                    self._reread_unhanded(tp for tp, _ in fetches[i:])
                    return
                continue
            envelopes = self._envelopes.get(tp)
            if envelopes is None:
                envelopes = self._envelopes[tp] = EnvelopeLog()
            self._idle_since.pop(tp, None)
            for i in range(0, len(taken), ENVELOPE_MAX_RECORDS):
                envelope = Envelope(tp, taken[i:i + ENVELOPE_MAX_RECORDS], generation)
                envelopes.deliver(envelope)
                # What Faust's loop compares with: never drop this one, see no hole.
                self._read_offset[tp] = envelope.offset - 1
                yield tp, envelope

    async def _in_order(self, tp: TP, fetched: Sequence[Any], generation: int) -> list[Any]:
        """The records of ``fetched`` to hand out: those from the next offset expected on, in order.

        Empty if the consumer generation changed while waiting for flow
        control (a rebalance: its seek reads them again).
        """
        flow = self.app.flow_control
        if not flow.is_active():
            self._waiting = f"flow control for {tp.topic}[{tp.partition}]"
            await flow.acquire()  # a seek may come meanwhile: check offsets after
            self._waiting = ""
            if self.app.consumer_generation_id != generation:
                return []
        expected, refetching = self._next, self._refetching
        taken: list[Any] = []
        for record in fetched:
            offset = record.offset
            want = expected.get(tp)
            if want is not None and offset != want:
                if offset < want:
                    continue  # handed out already
                if refetching.get(tp) != want:
                    self._waiting = f"seek back of {tp.topic}[{tp.partition}]"
                    await self._refetch(tp, want, offset)
                    self._waiting = ""
                    break  # its later records in this fetch are read again too
                self._commit_past(tp, want, offset - 1)
            if refetching:
                refetching.pop(tp, None)
            expected[tp] = offset + 1
            taken.append(record)
        return taken

    async def _refetch(self, tp: TP, first: int, found: int) -> None:
        log.warning("offsets %d-%d of %s[%d] were fetched but not handed out: reading them again",
                    first, found - 1, tp.topic, tp.partition)
        await self._seek_back(tp, first)

    async def _seek_back(self, tp: TP, offset: int) -> None:
        """Read ``tp`` again from ``offset`` (a hole there is committed past if it is still there)."""
        self._refetching[tp] = offset
        try:
            await self._seek(tp, offset)
        except Exception as exc:  # no longer assigned here: a rebalance seeks anyway
            log.warning("could not seek %s[%d] back to %d: %s", tp.topic, tp.partition, offset, exc)

    async def _wait_next_records(self, timeout: float) -> Any:
        # Seek here, before each fetch: a seek while fetched records are
        # still being handed out would have them move the read offset past
        # the records to read again, which the fetch loop would then drop.
        await self._rewind_pending()
        if self._dropped:
            await self._seek_dropped()
        if monotonic() >= self._next_idle_check:
            await self._reread_idle()
        return await super()._wait_next_records(timeout)

    async def _reread_idle(self) -> None:
        """Read again a stream partition that is behind but has handed nothing out for a while.

        A safety net under the rules above: records the fetcher took past
        the next offset expected, then dropped without a seek following (a
        crash test once stalled so: nothing in flight, the next offset far
        below the partition's end, no new records to reveal the gap), would
        otherwise never be read. Reading again is harmless: the pipeline is
        idempotent.
        """
        now = monotonic()
        self._next_idle_check = now + IDLE_CHECK_SECONDS
        if self.app.rebalancing or not self.flow_active or not self.app.flow_control.is_active():
            self._idle_since.clear()
            return
        for tp in self.assignment():
            want = self._next.get(tp)
            high = self.highwater(tp) if want is not None and not self._is_changelog_tp(tp) else None
            envelopes = self._envelopes.get(tp)
            if high is None or want is None or want >= high or (envelopes is not None and len(envelopes)):
                self._idle_since.pop(tp, None)
                continue
            since = self._idle_since.setdefault(tp, now)
            if now - since < REREAD_IDLE_SECONDS:
                continue
            del self._idle_since[tp]
            log.warning("%s[%d] has handed nothing out for %.0f s at offset %d of %d: reading it again "
                        "from there", tp.topic, tp.partition, now - since, want, high)
            await self._seek_back(tp, want)

    async def _rewind_pending(self) -> None:
        if not self._rewound:  # the usual case: once per fetch, keep it cheap
            return
        assigned = self.assignment()
        tps = [tp for tp, start in self._rewound.items() if start is None and tp in assigned]
        if not tps:
            return
        starts = {tp: int(offset) for tp, offset in (await self.earliest_offsets(*tps)).items()}
        for tp in tps:
            for bookkeeping in (self._read_offset, self._committed_offset, self._acked,
                                self._acked_index, self._gap, self._next):
                bookkeeping.pop(tp, None)
            self._rewound[tp] = starts[tp]
        self._forget_envelopes(tps)
        await self.seek_wait(starts)
        log.warning("reading %d partitions again from their start (the broker lost them): %s",
                    len(tps), ", ".join(f"{tp.topic}[{tp.partition}]@{starts[tp]}" for tp in sorted(tps)))
        try:  # replace offsets committed from the old positions
            await self._commit(starts)
        except Exception as exc:  # a rebalance under way: perform_seek rewinds again
            log.warning("could not commit the start offsets of rewound partitions: %s", exc)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust's fetch loop calls this when a seek lowered its read offset
        # while a message was on its way: the offsets in between are in
        # flight and get acknowledged. Holes are getmany's business, except
        # in compacted changelogs.
        if self._is_changelog_tp(tp):
            await super()._add_gap(tp, offset_from, offset_to)

    def reread_dropped(self) -> None:
        """Read again, from the first one, the envelopes no agent took: Faust's queues dropped them.

        Their partitions are sought back before the next fetch; envelopes
        after them are forgotten too and read again (a few may be handled
        twice, which the pipeline absorbs).
        """
        for tp, envelopes in self._envelopes.items():
            first = envelopes.drop_untaken()
            if first is None:
                continue
            log.warning("offsets from %d of %s[%d] were dropped by Faust's stream queue: reading them again",
                        first, tp.topic, tp.partition)
            self._next[tp] = first
            self._dropped[tp] = first

    def _reread_unhanded(self, tps: Iterable[TP]) -> None:
        """Read ``tps`` again from their next offset expected: their fetched records were not handed out.

        The fetcher's position has passed them. A rebalance's seek usually
        follows and reads them again (it replaces this); without one, a
        partition whose stream had ended would wait for new records to
        reveal the gap, or for :meth:`_reread_idle`, 20 s on.
        """
        for tp in tps:
            want = self._next.get(tp)
            if want is None or self._is_changelog_tp(tp) or tp in self._dropped:
                continue
            log.info("%s[%d]: fetched records not handed out (flow control or a rebalance came first): "
                     "reading them again from %d", tp.topic, tp.partition, want)
            self._dropped[tp] = want

    async def _seek_dropped(self) -> None:
        dropped, self._dropped = self._dropped, {}
        for tp, first in dropped.items():
            await self._seek_back(tp, first)

    def describe(self) -> str:
        """Where each stream partition stands (for a log line when nothing moves)."""
        active = self._active_partitions or set()
        parts = []
        for tp in sorted(self.assignment()):
            if self._is_changelog_tp(tp):
                continue
            envelopes = self._envelopes.get(tp)
            state = ("active" if tp in active else "buffered" if tp in self._buffered_partitions
                     else "paused" if tp in self._paused_partitions else "inactive")
            parts.append(f"{tp.topic}[{tp.partition}] {state} next={self._next.get(tp)} "
                         f"committed={self._committed_offset.get(tp)} "
                         f"envelopes={envelopes._fifo if envelopes is not None else None}")
        flow = self.app.flow_control.is_active()
        return (f"flow={'on' if flow else 'off'} consumer_flow={self.flow_active} "
                f"fetch loop waits for: {self._waiting or 'nothing (handing out)'}; " + "; ".join(parts))

    def _commit_past(self, tp: TP, first: int, last: int) -> None:
        # The next envelope starts after the hole: committing it passes the hole.
        log.warning("offsets %d-%d of %s[%d] are missing on the broker: committed past them",
                    first, last, tp.topic, tp.partition)

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        return super()._filter_committable_offsets([tp for tp in tps if not self._held(tp)])

    def _per_envelope_partition(self) -> list[dict[TP, Any]]:
        return [*super()._per_envelope_partition(), self._dropped, self._idle_since]

    def _held(self, tp: TP) -> bool:
        """Whether ``tp`` waits for its start to be processed before it commits anything."""
        if tp not in self._rewound:
            return False
        start = self._rewound[tp]
        envelopes = self._envelopes.get(tp)
        if envelopes is not None:
            first = envelopes.first_offset() if envelopes.head_done() else None
        else:
            acked = self._acked[tp]
            first = min(acked) if acked else None
        if start is not None and first is not None and first <= start:
            del self._rewound[tp]  # read again from the start: commits are whole again
            return False
        return True
