"""The batch loop every agent runs: handle a batch, write what it caused, then acknowledge it.

An agent's body is a :data:`Handle`: it does a batch's work (journeys, rows,
produced messages) and returns a :data:`Finish`, what completes the batch (the
ClickHouse writes, the wait for the broker's acknowledgements). The
:class:`BatchRunner` acknowledges a batch only once its finish returned: a
crash anywhere replays the batch, and the journey logic plus idempotent sinks
make the replay harmless.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from aiokafka.errors import KafkaError
from faust import Stream
from faust.types import EventT

from sinks import FunnelMetrics, SinkStopped
from streams.agents.collector import BatchCollector
from streams.faust_adapt.envelopes import mark_done, take_envelopes

__all__ = ["BatchRunner", "Finish", "Handle", "batch_token"]

log = logging.getLogger("funnel.worker")

#: Pauses before a batch whose produced messages failed is handled again.
PRODUCE_RETRY_INITIAL_SECONDS = 0.5
PRODUCE_RETRY_MAX_SECONDS = 30.0

#: What finishes a handled batch: its ClickHouse writes, the broker's acknowledgements.
Finish = Callable[[], Awaitable[None]]
#: An agent's batch body: does the batch's work, returns what finishes it.
Handle = Callable[[Stream, Sequence[EventT]], Awaitable[Finish]]
#: What _attempt returns when a sink stopped.
_STOPPED = object()


def batch_token(agent: str, events: Sequence[EventT]) -> str:
    """A deterministic id for a batch: agent plus the offset range per partition.

    An envelope's range is its first to its last offset.
    """
    ranges: dict[tuple[str, int], list[int]] = {}
    for event in events:
        m = event.message
        first = getattr(m, "first_offset", m.offset)
        r = ranges.setdefault((m.topic, m.partition), [first, m.offset])
        r[0], r[1] = min(r[0], first), max(r[1], m.offset)
    spec = ";".join(f"{t}/{p}/{lo}-{hi}" for (t, p), (lo, hi) in sorted(ranges.items()))
    return f"{agent}:{hashlib.sha1(spec.encode()).hexdigest()}"


class BatchRunner:
    """Runs agents' batch bodies; counts the broker's refusals in ``metrics``.

    Arguments:
        max_events: records per batch at most (``FUNNEL_BATCH_MAX_EVENTS``).
        max_seconds: how long a batch may wait to fill (``FUNNEL_BATCH_MAX_SECONDS``).
    """

    def __init__(self, max_events: int, max_seconds: float, metrics: FunnelMetrics) -> None:
        self.max_events, self.max_seconds, self.metrics = max_events, max_seconds, metrics
        # The worker's garbage collection policy, told after each batch (set by the worker).
        self.collector: BatchCollector | None = None

    async def run(self, name: str, stream: Stream, handle: Handle) -> None:
        """Batch loop shared by the agents: handle, write, then acknowledge; never crash the worker.

        A batch is a list of envelopes (streams.faust_adapt.envelopes), each the records
        of one partition fetched together, up to ``FUNNEL_BATCH_MAX_EVENTS``
        records or ``FUNNEL_BATCH_MAX_SECONDS``. Acknowledging an envelope
        lets the consumer commit past it: only once all it caused is written.

        ``handle`` does a batch's work (journeys, rows, produced messages)
        and returns what finishes it: the ClickHouse writes and the wait for
        the broker's acknowledgements. A batch finishes while the next one
        is handled (the sink's thread writes while the event loop works), one
        at a time and in order; the next batch's own finish waits for it.

        A batch whose produced messages the broker refused (a topic being
        recreated, a leader moving) is handled again after a pause: Faust
        would not deliver its unacknowledged messages to a restarted agent.
        """
        previous: asyncio.Future[bool] | None = None
        try:
            async for events in take_envelopes(stream, self.max_events, self.max_seconds):
                finish = await self._attempt(name, functools.partial(handle, stream, events))
                if self.collector is not None:
                    self.collector.batch_done()
                if finish is _STOPPED or (previous is not None and not await previous):
                    return
                previous = asyncio.ensure_future(
                    self._finish(name, stream, events, handle, cast(Finish, finish)))
            if previous is not None:
                await previous
        finally:
            if previous is not None and not previous.done():
                previous.cancel()

    async def _finish(self, name: str, stream: Stream, events: Sequence[EventT], handle: Handle,
                      finish: Finish) -> bool:
        """Finish a handled batch (handling it again if the broker refused it), then acknowledge it.

        False if a sink stopped first: the batch stays unacknowledged.
        """
        current: Finish | None = finish

        async def attempt() -> None:
            nonlocal current
            if current is None:  # refused: the whole batch again
                current = await handle(stream, events)
            try:
                await current()
            except KafkaError:
                current = None
                raise

        if await self._attempt(name, attempt) is _STOPPED:
            return False
        for event in events:
            mark_done(event)
            await stream.ack(event)
        return True

    async def _attempt(self, name: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """``attempt()`` until the broker accepts it (pausing between tries); _STOPPED if a sink stopped."""
        delay = PRODUCE_RETRY_INITIAL_SECONDS
        while True:
            try:
                return await attempt()
            except SinkStopped:
                log.warning("%s: stopping with an unwritten batch; it will be consumed again", name)
                return _STOPPED
            except KafkaError as exc:
                self.metrics.produce_retries.labels(name).inc()
                log.warning("%s: the broker refused a message of this batch (%r); "
                            "handling the batch again in %.1f s", name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, PRODUCE_RETRY_MAX_SECONDS)
