"""Envelopes: one fetched batch of one partition, delivered to an agent as one Faust event.

Faust hands every Kafka record to its agents one at a time: the fetch loop's
bookkeeping, the conductor's ``on_message``, the channel queue, the stream's
iteration and the acknowledgement each cost several Python frames per record
(about half of a worker's CPU at 6 000 events/s, BENCHMARKS.md). On the
topics the agents consume, the consumer (:mod:`streams.faust_adapt.offsets`) instead
wraps the records it fetched for one partition into an :class:`Envelope`, a
Faust message whose value is the list of aiokafka records, so all of that is
paid once per fetched batch. Changelog topics go to table recovery and
standbys, a fetched batch at a time (:mod:`streams.faust_adapt.recovery`).

Faust's commit tracking cannot hold envelopes: it commits the offsets after
a run of consecutive acknowledged offsets, and an envelope acknowledges one
offset for many. So envelope partitions keep their own: an
:class:`EnvelopeLog` per partition is the FIFO of delivered envelopes in
offset order; an envelope is marked done (:func:`mark_done`) by its agent,
only once everything it caused is written (sink rows, produced messages,
changelog records), not by Faust's acknowledgement, which its streams also
give to messages they skip; a commit takes the done envelopes at
the head of the FIFO and commits the last one's last offset + 1, never past
an envelope that is not done. The consumer replaces the log at every seek
and revoke, so an acknowledgement that arrives afterwards for an envelope of
the old log (a stale one) commits nothing.

:func:`take_envelopes` is Faust's ``Stream.noack_take`` counting records
instead of events: a batch is handed to the agent when it holds
``max_records`` records or ``within`` seconds have passed.

Faust adaptations here rely on faust-streaming 0.15.3 (pinned in
pyproject.toml): ``ConsumerMessage`` and its ``on_final_ack`` path, and the
stream internals ``add_processor``, ``_enable_passive``, ``_processors``,
``wait_for_stopped`` and ``current_event`` that ``noack_take`` uses.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from time import monotonic
from typing import Any, cast

from faust.streams import Stream
from faust.types import TP, EventT
from faust.types.tuples import ConsumerMessage
from mode.utils.futures import notify
from mode.utils.queues import ThrowableQueue

__all__ = [
    "ENVELOPE_MAX_RECORDS", "Envelope", "EnvelopeLog", "EnvelopeQueue", "mark_done", "records_of",
    "take_envelopes",
]

#: Most records one envelope carries: a partition's fetch beyond it is split.
ENVELOPE_MAX_RECORDS = 2000


class Envelope(ConsumerMessage):
    """Records ``first_offset`` .. ``offset`` of one partition, fetched together.

    ``value`` is the list of aiokafka ``ConsumerRecord`` objects (each with
    ``topic``, ``partition``, ``offset``, ``key``, ``value``, ``headers``);
    ``offset`` is the last record's, so Faust's fetch loop moves its read
    offset past the whole envelope.
    """

    def __init__(self, tp: TP, records: Sequence[Any], generation_id: int | None) -> None:
        last = records[-1]
        timestamp = last.timestamp / 1000.0 if last.timestamp is not None else cast(float, None)
        super().__init__(
            tp.topic, tp.partition, last.offset, timestamp, last.timestamp_type, None, None,
            cast(Any, records), None, 0, 0, tp, generation_id=generation_id,
        )
        self.records: Sequence[Any] = records
        self.first_offset: int = records[0].offset
        #: Set when the agent acknowledged it: everything it caused is written.
        self.done = False
        #: Set when the agent's batch took it from its stream.
        self.taken = False
        self.log: EnvelopeLog | None = None

    def __repr__(self) -> str:
        return (f"<Envelope {self.topic}[{self.partition}] {self.first_offset}-{self.offset} "
                f"({len(self.records)} records){' done' if self.done else ''}>")


class EnvelopeLog:
    """The envelopes delivered from one partition since its last seek, oldest first."""

    __slots__ = ("_fifo", "_waiting_since")

    def __init__(self) -> None:
        self._fifo: deque[Envelope] = deque()
        self._waiting_since: float | None = None

    def deliver(self, envelope: Envelope) -> None:
        """Record that ``envelope`` is handed out; it must follow the last one delivered."""
        if self._fifo and envelope.first_offset <= self._fifo[-1].offset:
            raise ValueError(f"{envelope!r} does not follow {self._fifo[-1]!r}")
        envelope.log = self
        self._fifo.append(envelope)

    def owns(self, envelope: Envelope) -> bool:
        """Whether ``envelope`` was delivered into this log (not a stale one from before a seek)."""
        return envelope.log is self

    def committable(self) -> int | None:
        """The offset to commit now (after the done envelopes at the head), or None.

        The done envelopes are taken off the log: the next call only looks
        at what followed them.
        """
        fifo = self._fifo
        last = None
        while fifo and fifo[0].done:
            last = fifo.popleft().offset
        if fifo and last is None and any(e.done for e in fifo):
            if self._waiting_since is None:
                self._waiting_since = monotonic()
        else:
            self._waiting_since = None
        return None if last is None else last + 1

    def drop_untaken(self) -> int | None:
        """Forget the envelopes from the first one no agent has taken (nor finished) on.

        Returns that envelope's first offset, where the partition must be
        read again, or None if every envelope held was taken. Called when
        Faust has cleared its stream queues: what was in them is gone.
        """
        fifo = self._fifo
        for i, envelope in enumerate(fifo):
            if not envelope.taken and not envelope.done:
                while len(fifo) > i:
                    fifo.pop()
                return envelope.first_offset
        return None

    def head_done(self) -> bool:
        return bool(self._fifo) and self._fifo[0].done

    def first_offset(self) -> int | None:
        """The first offset of the oldest envelope still held, or None."""
        return self._fifo[0].first_offset if self._fifo else None

    def blocked(self) -> tuple[float, int, int, int] | None:
        """Since when commits wait for the head while later envelopes are done:
        (since, head first offset, head last offset, done envelopes behind it); None if not."""
        if self._waiting_since is None or not self._fifo:
            return None
        head = self._fifo[0]
        return (self._waiting_since, head.first_offset, head.offset,
                sum(1 for e in self._fifo if e.done))

    def __len__(self) -> int:
        return len(self._fifo)


class EnvelopeQueue(ThrowableQueue):
    """Faust's stream queue, telling ``on_clear`` when it is cleared.

    Faust clears every stream queue whenever flow control resumes
    (``FlowControlEvent.resume``), also at the end of table recovery, after
    it sought the stream partitions: envelopes handed out in between are
    dropped there, unacknowledged, and nothing reads them again (a crash test
    stalled on such a partition, its commits waiting for ever). ``on_clear``
    lets the consumer read them again.
    """

    def __init__(self, *args: Any, on_clear: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_clear = on_clear

    def clear(self) -> None:
        super().clear()
        self._on_clear()


def mark_done(event: EventT) -> None:
    """Everything ``event``'s envelope caused is written: its offsets may be committed.

    The agent calls this before it acknowledges the event. An envelope of a
    log that a seek or revoke has replaced since commits nothing.
    """
    message = event.message
    if isinstance(message, Envelope):
        message.done = True


def records_of(event: EventT) -> Sequence[Any]:
    """The aiokafka records an envelope event carries."""
    return cast(Sequence[Any], event.value)


async def take_envelopes(stream: Stream, max_records: int, within: float) -> AsyncIterator[list[EventT]]:
    """Batches of envelope events, unacknowledged: Faust's ``noack_take`` counting records.

    A batch is handed over once its envelopes hold ``max_records`` records,
    or ``within`` seconds after the previous batch was handed over if it
    holds any. The caller acknowledges each event (``stream.ack``) once
    everything it caused is written.
    """
    buffer: list[EventT] = []
    records = 0
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    channel_it = stream.channel.__aiter__()
    s = cast(Any, stream)

    # Faust's take: a processor fills the buffer while the stream is consumed
    # passively in the background; it waits while a batch is being handled.
    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming, records
        try:
            if buffer_consuming is not None:
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_envelopes found current_event is None")
            if isinstance(event.message, Envelope):
                event.message.taken = True
            buffer.append(event)
            records += len(records_of(event))
            if records >= max_records:
                buffer_full.set()
                buffer_consumed.clear()
                await s.wait(buffer_consumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            s.log.exception("Error adding to take buffer: %r", exc)
            await s.crash(exc)
        return value

    enable_acks = stream.enable_acks
    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    s._enable_passive(channel_it)
    try:
        while not s.should_stop:
            await s.wait_for_stopped(buffer_full, timeout=within)
            if buffer:
                buffer_consuming = asyncio.get_running_loop().create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    records = 0
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        stream.enable_acks = enable_acks
        s._processors.remove(add_to_buffer)
