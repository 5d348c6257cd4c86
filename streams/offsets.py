"""End offsets that hold on the embedded broker too, and a Faust app that uses them.

The embedded broker (Tansu 0.6) answers ListOffsets(latest) with the base
offset of the partition's last record *batch* plus one, not the offset after
its last record: ten records produced in one batch report an end of 1. Kafka
answers correctly. Fetch responses carry the right high watermark on both, so
the end is found by reading from the reported end minus one (the last batch's
first record): at most one batch per partition. The fetch's high watermark
wins over the reported end either way. The embedded broker acknowledges a
record produced to a topic it does not have (a producer whose metadata is
from before a restart) and stores it nowhere; once the topic is created,
ListOffsets reports an end of 1 for a partition its fetches call empty. A
worker that wrote a journey's changelog record that way waited in table
recovery for ever.

Faust's table recovery reads each changelog partition up to ``end_offsets()``;
with the embedded broker it stopped inside the last batch and a restarted
worker lost the journeys of the users written there. :class:`FunnelApp`
gives Faust the corrected ends, and the cheaper per-message consumer of
:mod:`streams.consumer`.

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
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from time import monotonic
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.consumer import ensure_TP
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

from streams.consumer import EagerConsumer

__all__ = ["FunnelApp", "RewindingConsumer", "end_offsets", "read_end_offsets"]

log = logging.getLogger(__name__)

#: How long end offsets wait for a fetch to tell a partition's high watermark.
READ_END_TIMEOUT_SECONDS = 10.0

#: How long a partition's commits may wait for unacknowledged offsets before that is logged.
BLOCKED_COMMIT_WARN_SECONDS = 60.0


async def read_end_offsets(consumer: AIOKafkaConsumer, tps: Iterable[Any],
                           timeout: float = READ_END_TIMEOUT_SECONDS) -> dict[Any, int]:
    """The next offset of every partition in ``tps``, read with ``consumer``.

    ``consumer`` must be started, in no group; it is assigned ``tps`` and left
    positioned somewhere in their last batches. A partition no fetch answers
    for within ``timeout`` seconds keeps the end the broker reported.
    """
    wanted = list(tps)
    if not wanted:
        return {}
    reported = await consumer.end_offsets(wanted)
    ends = {tp: int(reported[tp]) for tp in wanted}
    consumer.assign(wanted)
    for tp in wanted:
        consumer.seek(tp, max(ends[tp] - 1, 0))
    open_tps = {tp for tp in wanted if ends[tp] > 0}
    deadline = monotonic() + timeout
    while open_tps:
        batch = await consumer.getmany(*open_tps, timeout_ms=500)
        for tp, records in batch.items():
            ends[tp] = max(ends[tp], records[-1].offset + 1)
        told = {tp for tp in open_tps if consumer.highwater(tp) is not None}
        for tp in told:  # the fetch's high watermark is the end, even below the reported one
            ends[tp] = int(cast(int, consumer.highwater(tp)))
        open_tps -= told
        if open_tps and monotonic() > deadline:
            log.warning("no fetch answered for %s within %.0f s: taking the ends the broker reported",
                        ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(open_tps)), timeout)
            break
    return ends


async def end_offsets(bootstrap_servers: str | list[str], tps: Iterable[Any]) -> dict[Any, int]:
    """The next offset of every partition in ``tps`` (a throwaway consumer, no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await read_end_offsets(consumer, tps)
    finally:
        await consumer.stop()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        transport = cast(faust_aiokafka.Transport, self.transport)
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        ends = await end_offsets(servers, [faust_aiokafka.TopicPartition(tp.topic, tp.partition)
                                           for tp in partitions])
        return {tp: ends[(tp.topic, tp.partition)] for tp in partitions}


class RewindingConsumer(EagerConsumer):
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
        # Partition -> (since when its commits wait for unacknowledged
        # offsets, whether that was logged).
        self._blocked: dict[TP, tuple[float, bool]] = {}

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
        self._blocked.clear()
        self._next.clear()  # in place: a fetch being handed out holds this dict
        self._next.update((tp, offset) for tp, offset in self._committed_offset.items() if offset is not None)
        self._next.update(self._starts)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        """Faust's fetched messages, each partition's strictly in offset order, none skipped.

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

        Here a stream partition's messages are handed out only while flow
        control is on, and only in order from the next offset expected (the
        committed offset, or the start, after a seek). A message past it
        makes the partition be read again from there (its later messages in
        this fetch are dropped); a hole that is still there when read again is committed
        past, so a truncated topic cannot loop. Changelogs are Faust's.
        """
        expected = self._next
        refetching = self._refetching
        read_offset = self._read_offset
        flow = self.app.flow_control
        changelogs = self.app.tables.changelog_topics
        holed: set[TP] = set()
        async for tp, message in super().getmany(timeout):
            if tp.topic in changelogs:
                yield tp, message
                continue
            if not flow.is_active():
                await flow.acquire()  # a seek may come meanwhile: check offsets after
            if message.generation_id != self.app.consumer_generation_id:
                # Fetched before a rebalance (waiting for flow control or not):
                # Faust's streams would drop it and acknowledge it anyway;
                # the rebalance's seek, or the hole it leaves, reads it again.
                continue
            offset = message.offset
            want = expected.get(tp)
            if want is not None and offset != want:
                if offset < want or tp in holed:
                    continue  # handed out already, or after a hole in this fetch
                if refetching.get(tp) != want:
                    holed.add(tp)
                    await self._refetch(tp, want, offset)
                    continue
                await self._commit_past(tp, want, offset - 1)
            if refetching:
                refetching.pop(tp, None)
            expected[tp] = offset + 1
            # What Faust's loop compares with: never drop this one, see no hole.
            read_offset[tp] = offset - 1
            yield tp, message

    async def _refetch(self, tp: TP, first: int, found: int) -> None:
        log.warning("offsets %d-%d of %s[%d] were fetched but not handed out: reading them again",
                    first, found - 1, tp.topic, tp.partition)
        self._refetching[tp] = first
        try:
            await self._seek(tp, first)
        except Exception as exc:  # no longer assigned here: a rebalance seeks anyway
            log.warning("could not seek %s[%d] back to %d: %s", tp.topic, tp.partition, first, exc)

    async def _wait_next_records(self, timeout: float) -> Any:
        # Seek here, before each fetch: a seek while fetched records are
        # still being handed out would have them move the read offset past
        # the records to read again, which the fetch loop would then drop.
        await self._rewind_pending()
        return await super()._wait_next_records(timeout)

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

    async def _commit_past(self, tp: TP, first: int, last: int) -> None:
        log.warning("offsets %d-%d of %s[%d] are missing on the broker: committed past them",
                    first, last, tp.topic, tp.partition)
        await super()._add_gap(tp, first, last)

    def _filter_committable_offsets(self, tps: Iterable[TP]) -> dict[TP, int]:
        return super()._filter_committable_offsets([tp for tp in tps if not self._held(tp)])

    def _new_offset(self, tp: TP) -> int | None:
        offset = super()._new_offset(tp)
        if offset is None:
            self._watch_blocked(tp)
        else:
            self._blocked.pop(tp, None)
        return offset

    def _watch_blocked(self, tp: TP) -> None:
        """Say once when ``tp``'s commits wait for offsets that were never acknowledged."""
        acked, committed = self._acked[tp], self._committed_offset[tp]
        if not acked or not committed or min(acked) - committed <= 1:
            self._blocked.pop(tp, None)  # nothing acknowledged, or Faust's own tolerance of one
            return
        now = monotonic()
        since, told = self._blocked.setdefault(tp, (now, False))
        if not told and now - since >= BLOCKED_COMMIT_WARN_SECONDS:
            self._blocked[tp] = (since, True)
            log.warning("commits of %s[%d] have waited %.0f s at offset %d: offsets %d-%d were never "
                        "acknowledged (%d later ones were)", tp.topic, tp.partition, now - since,
                        committed, committed, min(acked) - 1, len(acked))

    def _held(self, tp: TP) -> bool:
        """Whether ``tp`` waits for its start to be processed before it commits anything."""
        if tp not in self._rewound:
            return False
        start = self._rewound[tp]
        acked = self._acked[tp]
        if start is not None and acked and min(acked) <= start:
            del self._rewound[tp]  # read again from the start: commits are whole again
            return False
        return True


class _Transport(faust_aiokafka.Transport):
    Consumer = RewindingConsumer


class FunnelApp(faust.App):
    """faust.App on the aiokafka driver with end offsets that hold on every broker."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
