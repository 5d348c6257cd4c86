"""The ingest agent: raw events from the five source topics -> `normalized`, or the dead letters.

Its batch body (:meth:`IngestAgent.batch`) decodes each envelope with one
pydantic pass (:meth:`schemas.Decoder.decode_batch`), sends each invalid
message to the dead-letter topic with its reason, and passes each valid event
on, keyed by its person (or by its anonymous id when the person is not known
yet), in one produced batch per partition of `normalized`. Events already
keyed that way, in the partition `normalized` would give them, go straight to
the journey agent (:func:`direct_partitions`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, cast

import orjson
from faust import Stream
from faust.types import TP, AppT, EventT

from schemas import Decoder, FunnelDefinition, InvalidEvent, NormalizedEvent
from sinks import ClickHouseSink, FunnelMetrics, Tally
from streams.agents.deadletter import DeadLetters
from streams.agents.journeys import JourneyAgent
from streams.agents.runner import Finish, batch_token
from streams.faust_adapt.envelopes import records_of
from streams.faust_adapt.table import ChangelogRecord, produce_batches
from streams.funnel.routing import route
from streams.topics import partition_of

__all__ = ["IngestAgent", "direct_partitions"]


class IngestAgent:
    """Decodes and routes the source topics' events.

    Arguments:
        app: the Faust app whose producer sends to `normalized`.
        normalized: the name of the `normalized` topic, with ``partitions`` partitions.
        event_type_of: source topic -> the event type it carries.
        journeys: the journey agent, for the events that skip `normalized`.
        direct_sink: the sink of those events' rows (not the journey agent's own:
            a sink's flush must not take rows another agent added).
    """

    def __init__(
        self,
        *,
        app: AppT,
        decoder: Decoder,
        metrics: FunnelMetrics,
        event_type_of: dict[str, str],
        normalized: str,
        partitions: int,
        dead_letters: DeadLetters,
        journeys: JourneyAgent,
        direct_sink: ClickHouseSink,
    ) -> None:
        self.app, self.decoder, self.metrics = app, decoder, metrics
        self.event_type_of, self.normalized, self.partitions = event_type_of, normalized, partitions
        self.dead_letters, self.journeys, self.direct_sink = dead_letters, journeys, direct_sink
        # Source partitions whose events keyed by their user id go straight
        # to the journeys (set at each rebalance, see direct_partitions).
        self.direct: frozenset[TP] = frozenset()

    async def batch(self, stream: Stream, events: Sequence[EventT]) -> Finish:
        """Decode and validate; pass valid events on by user, the invalid to the dead letters.

        An event keyed by its user id, in the partition that `normalized`
        would give it, is applied to the journeys right here (see
        :func:`direct_partitions`); the others go through `normalized`,
        produced in one batch per partition.
        """
        now_ms = int(time.time() * 1000)
        pending: list[Awaitable[Any]] = []
        onward: list[ChangelogRecord] = []  # (partition of normalized, key, value)
        direct: list[tuple[EventT, Any, NormalizedEvent]] = []
        direct_envelopes: list[EventT] = []  # those with records in ``direct``, once each
        direct_tps, count = self.direct, self.partitions
        m, tally = self.metrics, Tally()
        funnels, routes = self.journeys.funnels, self.journeys.routes

        def route_of(funnel: str | None, event_type: str) -> list[FunnelDefinition]:
            return route(cast(NormalizedEvent, {"funnel": funnel, "event_type": event_type}), funnels, routes)

        for event in events:
            msg = event.message
            event_type = self.event_type_of[msg.topic]
            records = records_of(event)
            prefix = f"{msg.topic}:{msg.partition}:"
            sources = [prefix + str(record.offset) for record in records]
            decoded = self.decoder.decode_batch([record.value for record in records], event_type,
                                                now_ms, sources)
            here = bool(direct_tps) and msg.tp in direct_tps
            named: dict[str | None, int] = {}  # the events' `funnel` field -> how many
            for record, norm, source in zip(records, decoded, sources, strict=True):
                if isinstance(norm, InvalidEvent):
                    pending.append(await self.dead_letters.send(record, norm, source))
                    continue
                funnel = norm["funnel"]
                named[funnel] = named.get(funnel, 0) + 1
                # By the person when known, else by the anonymous id: that id's
                # partition decides who it is (streams.funnel.identity).
                key = (norm["person_id"] or norm["anonymous_id"]).encode()  # type: ignore[union-attr]
                partition = partition_of(key, count)
                if here and record.key == key and partition == msg.partition:
                    if not direct_envelopes or direct_envelopes[-1] is not event:
                        direct_envelopes.append(event)
                    direct.append((event, record, norm))
                else:
                    onward.append((partition, key, orjson.dumps(norm)))
            for funnel, events_named in named.items():  # the funnels an event feeds depend on these two
                for name in [f.name for f in route_of(funnel, event_type)] or ["none"]:
                    tally.inc(m.child(m.events, name, event_type), events_named)
        delivered = await self.send_normalized(onward)
        applied = None  # what finishes the direct events' journeys
        if direct:
            applied = await self.journeys.apply(direct, self.direct_sink,
                                                batch_token("journey-direct", direct_envelopes))

        async def finish() -> None:
            if applied is not None:
                await applied()
            # Delivered before acknowledged: nothing is lost between topics.
            await asyncio.gather(*pending, *delivered)
            tally.apply()  # once: a batch handled again after a refusal is counted once

        return finish

    async def send_normalized(self, records: Sequence[ChangelogRecord]) -> list[asyncio.Future[Any]]:
        """Produce (partition, key, value) records to `normalized`; their batches' futures."""
        return await produce_batches(self.app, self.normalized, records)


def direct_partitions(consumer: Any, normalized: str, sources: Collection[str], partitions: int,
                      active: Collection[int]) -> frozenset[TP]:
    """The assigned source partitions whose user-keyed events may skip `normalized`.

    `normalized` exists so that one user's events meet in one partition
    of the journeys table. An event whose key already is its user id,
    found in the partition p that `normalized` would give it, is in the
    right place: Faust's assignor gives a worker partition p of every
    topic with the same partition count (co-partitioning), the journeys
    table's included. So only partitions of source topics with as many
    partitions as `normalized`, whose table partition is active here,
    qualify; the ingest agent checks each event's key and partition.

    ``consumer`` is the worker's Faust consumer, ``sources`` the source
    topics, ``partitions`` the configured partition count of `normalized` and
    ``active`` the table partitions this worker is the active one for.
    """
    if consumer.topic_partitions(normalized) != partitions:
        return frozenset()
    return frozenset(tp for tp in consumer.assignment()
                     if tp.topic in sources and tp.partition in active
                     and consumer.topic_partitions(tp.topic) == partitions)

