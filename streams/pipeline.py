"""The Faust app: topics, the journeys table, the agents and the web pages.

Data flow (README, "Data flow"):

    funnel.<type> x5 --ingest--> funnel.normalized (keyed by user id)
                     \\--------> funnel.dead-letter (raw bytes + reason headers)
                     \\--------> journeys, for events keyed by user id
                                 in the partition `normalized` would use
    funnel.normalized --journey--> ClickHouse events/stage_entries/transitions/dropoffs
                                   and stage_counts (window memberships, same batch)
    funnel.spend --spend--> ClickHouse spend

Every agent takes a batch without acknowledging it (``noack_take``), does its
work, writes its sinks and waits for its produced messages, and only then
acknowledges the batch: a crash anywhere replays the batch, and the journey
logic plus idempotent sinks make the replay harmless.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import faust
import faust.stores.memory
import orjson
from aiokafka.errors import KafkaError
from clickhouse_connect.driver.client import Client
from faust import Stream
from faust.streams import _current_event
from faust.types import TP, AppT, EventT, StreamT
from faust.utils import json as faust_json
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from schemas import Decoder, FunnelDefinition, FunnelsConfig, InvalidEvent, NormalizedEvent
from sinks import ClickHouseSink, FunnelMetrics, SinkStopped, Tally
from streams.agents.collector import BatchCollector
from streams.faust_adapt.consumer import RawSchema
from streams.faust_adapt.envelopes import mark_done, records_of, take_envelopes
from streams.faust_adapt.offsets import FunnelApp, RewindingConsumer
from streams.funnel.journey import (
    JourneyResult,
    UserState,
    apply_event,
    expire_window,
    furthest,
    route,
    routes_for,
    window_ms,
)
from streams.funnel.lifecycle import TEMPERATURES, StallTracker, WindowDeadlines
from streams.funnel.rows import dropoff_row, entry_row, event_row, transition_row
from streams.funnel.windows import Watermarks, WindowAggregator
from streams.settings import Settings, split_brokers
from streams.topics import TopicNames, ensure_topics, partition_of
from streams.web import routes as web
from streams.web.sqlguard import UnsafeQuery, check_read_only

__all__ = ["Pipeline", "batch_token"]

log = logging.getLogger("funnel.worker")

#: Pauses before a batch whose produced messages failed is handled again.
PRODUCE_RETRY_INITIAL_SECONDS = 0.5
PRODUCE_RETRY_MAX_SECONDS = 30.0

#: How often a running worker checks that its topics still exist.
TOPIC_CHECK_SECONDS = 10.0

#: How long nothing may be processed while the consumer lags before the status timer says where
#: each partition stands.
STALL_WARN_SECONDS = 30.0

#: Envelopes an agent's topic queue holds (each up to ENVELOPE_MAX_RECORDS records).
ENVELOPE_QUEUE = 64

#: Largest dead-letter value sent as is (below the producer's 1 MB request limit).
DEAD_LETTER_MAX_BYTES = 900_000

#: Producer batching. With Faust's defaults (no linger, 16 KiB batches) nearly
#: every produced message was its own produce request; waiting up to 20 ms
#: lets a batch's messages share requests (BENCHMARKS.md: -8-20 % worker CPU
#: per event, about -80 % broker CPU). Agents wait for their messages once per
#: batch, so the linger adds at most 20 ms per batch, not per message. Faust's
#: own PRODUCER_LINGER / PRODUCER_MAX_BATCH_SIZE variables still override them.
PRODUCER_LINGER_SECONDS = 0.02
PRODUCER_MAX_BATCH_BYTES = 1024 * 1024


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


#: What finishes a handled batch: its ClickHouse writes, the broker's acknowledgements.
Finish = Callable[[], Awaitable[None]]
#: An agent's batch body: does the batch's work, returns what finishes it.
Handle = Callable[[Stream, Sequence[EventT]], Awaitable[Finish]]
#: What _attempt returns when a sink stopped.
_STOPPED = object()

#: A changelog record: (partition, serialized key, serialized value).
ChangelogRecord = tuple[int, bytes | None, bytes | None]


class _Kept:
    """What Faust's table reads back from ``send_changelog``: ``.message.partition``."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int) -> None:
        self.message, self.partition = self, partition


class JourneyTable(faust.Table):
    """A Faust table whose changelog records are produced in batches and awaited.

    ``table[key] = value`` makes Faust send one changelog record through its
    producer buffer (a future message, a queue, a task, its producer's
    per-message send) and forget it; its own flush gives up after 0.1 s.
    Here the record is only serialized (as Faust would) and kept. The agent
    that wrote takes its records with :meth:`take_changelog`, produces them
    with :meth:`produce_changelog` (one batch per partition, straight to the
    Kafka producer) and awaits them before it acknowledges its batch, so a
    restart never recovers journeys without changes whose offsets are
    committed. The records, their topic, partitions and bytes are Faust's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[ChangelogRecord] = []
        self._kept: dict[int, _Kept] = {}
        # Raw keys and JSON values, JSON by orjson: records are made without
        # Faust's codec layers (send_changelog).
        self._plain_codecs = (self.key_serializer == "raw" and self.value_serializer == "json"
                              and getattr(faust_json, "orjson", None) is not None)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` (or ``default``), read from the store once.

        Faust's ``get`` (``Mapping.get``) asks the store whether it holds the
        key and then reads it again: two RocksDB reads per user per batch,
        and four Python frames and a second exception for a new user.
        """
        self.on_key_get(key)
        try:
            return self.data[key]
        except KeyError:
            return default

    @functools.cached_property
    def routes_by_event(self) -> bool:
        """Whether the store reads and writes the partition of the "current event" (RocksDB).

        Faust's memory store is one dict for every partition: reading or
        writing it needs no routing (see :func:`route_table_to`).
        """
        return not isinstance(self.data, faust.stores.memory.Store)

    def put(self, key: bytes, value: Any, event: EventT) -> None:
        """``table[key] = value`` as an agent handling ``event`` would do it, with fewer layers.

        Faust's ``__setitem__`` (faust-streaming 0.15.3: ``ManagedUserDict``,
        ``Table.on_key_set``) takes the changelog partition from the current
        event, checks the source topic's partitions, sets a TTL for windowed
        tables and tells the sensors; about 2 us per changed user. Here the
        partition is ``event``'s, the table is not windowed, and the sensors
        still hear of the write. The caller routes the table to ``event``
        first where :attr:`routes_by_event` says the store needs it.
        """
        self.data[key] = value
        self.send_changelog(event.message.partition, key, value)
        self._sensor_on_set(self, key, value)

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> Any:
        if partition is None:  # not routed by an event: Faust's own way
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        if (type(key) is bytes and key_serializer is None and value_serializer is None
                and self._plain_codecs):
            # What Faust's codecs give for a bytes key under "raw" and a value
            # under "json" (faust-streaming 0.15.3's json codec returns
            # faust.utils.json.dumps, orjson's bytes when orjson is installed),
            # without their four layers per record: about 3 us per changed
            # user (test_streams_direct compares the bytes with Faust's).
            self._unsent.append((partition, key, cast(bytes, faust_json.dumps(value))))
        else:
            topic = cast(faust.Topic, self.changelog_topic)  # Faust's types name the channel's API only
            headers = topic.prepare_headers(None)
            key_bytes, headers = topic.prepare_key(key, key_serializer or self.key_serializer, None, headers)
            value_bytes, _ = topic.prepare_value(value, value_serializer or self.value_serializer, None,
                                                 headers)
            self._unsent.append((partition, key_bytes, value_bytes))
        kept = self._kept.get(partition)
        if kept is None:
            kept = self._kept[partition] = _Kept(partition)
        return kept

    def take_changelog(self) -> list[ChangelogRecord]:
        """The changelog records written since the last call, for the caller to produce.

        Two agents write the table (journey, and ingest for events keyed by
        user): each takes its records right after its writes, with no await
        in between, so each produces and awaits exactly its own.
        """
        taken, self._unsent = self._unsent, []
        return taken

    async def produce_changelog(self, records: Sequence[ChangelogRecord]) -> list[asyncio.Future[Any]]:
        """Hand ``records`` to the Kafka producer, one batch per partition; the batches' futures.

        Each delivered batch records its partition's persisted offset, as
        Faust's per-record callback does (the RocksDB store starts its
        recovery there); the batch's first offset, so a restart may read a
        few records again, never skip one.
        """
        topic = self.changelog_topic.get_topic_name()
        return await produce_batches(self.app, topic, records,
                                     lambda future, partition: self._sent(future, TP(topic, partition)))

    def _sent(self, future: asyncio.Future[Any], tp: TP) -> asyncio.Future[Any]:
        def persisted(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.data.set_persisted_offset(tp, done.result().offset)

        future.add_done_callback(persisted)
        return future


async def produce_batches(
    app: AppT, topic: str, records: Sequence[ChangelogRecord],
    sent: Callable[[asyncio.Future[Any], int], asyncio.Future[Any]] | None = None,
) -> list[asyncio.Future[Any]]:
    """Hand (partition, key, value) ``records`` to ``app``'s Kafka producer, one batch per partition.

    Returns the batches' futures (each passed through ``sent`` with its
    partition first, if given); await them before acknowledging what caused
    the records. Faust's ``Topic.send`` costs a future message, its
    producer buffer, a task and aiokafka's per-message ``send`` for each
    record; here aiokafka takes whole batches (``create_batch`` /
    ``send_batch``, its public batch API) on Faust's own producer.
    """
    if not records:
        return []
    by_partition: dict[int, list[ChangelogRecord]] = {}
    for record in records:
        by_partition.setdefault(record[0], []).append(record)
    kafka = cast(Any, app.producer)._ensure_producer()
    futures: list[asyncio.Future[Any]] = []
    for partition, part in by_partition.items():
        batch = kafka.create_batch()
        for _, key, value in part:
            if batch.append(timestamp=None, key=key, value=value) is None:  # full: send it
                future = await kafka.send_batch(batch, topic, partition=partition)
                futures.append(sent(future, partition) if sent else future)
                batch = kafka.create_batch()
                if batch.append(timestamp=None, key=key, value=value) is None:
                    raise ValueError(f"a record of {len(value or b'')} bytes exceeds a producer batch")
        future = await kafka.send_batch(batch, topic, partition=partition)
        futures.append(sent(future, partition) if sent else future)
    return futures


def route_table_to(event: EventT) -> None:
    """Make Faust's tables read and write ``event``'s partition, in this task.

    Faust's tables take the partition (of the store, of the changelog
    record) from the task's "current event". ``Stream._set_current_event``
    would also set the stream's shared ``current_event``, and the stream's
    take buffer, when it waits for the agent to finish a batch, buffers the
    stream's ``current_event`` once it may go on: set by an agent in
    between, that is one of the agent's events instead of the new one (one
    event lost, one done twice). So only the task's variable is set.
    """
    _current_event.set(weakref.ref(event))


def _view(handler: Any) -> Any:
    """Faust binds a page function as the view's ``get``: hand it a plain function."""

    async def get(view: Any, request: Any) -> Any:
        return await handler(view, request)

    get.__name__ = handler.__name__.lstrip("_")
    return get


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Faust's RocksDB options for the journeys table: one database per partition."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb << 20,
    }


class Pipeline:
    """Everything one worker runs. Build it, then hand ``pipeline.app`` to a Faust worker."""

    def __init__(
        self,
        settings: Settings,
        funnels: FunnelsConfig,
        *,
        clickhouse: Client,
        database: str,
        reader: Client | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if not settings.kafka_url:
            raise ValueError("FUNNEL_KAFKA_URL is required to run the worker")
        self.settings = settings
        self.funnels = funnels.by_name
        self.routes = routes_for(funnels.funnels)
        self.metrics = FunnelMetrics(registry, settings.channel_list)
        self.metrics.declare(funnels.funnels)
        self.names = TopicNames(settings)
        self.event_type_of = self.names.event_type_of()
        key = settings.email_hash_key.get_secret_value().encode() if settings.email_hash_key else None
        self.decoder = Decoder(
            self.funnels,
            max_bytes=settings.max_message_bytes,
            max_future_seconds=settings.max_future_seconds,
            email_hash_key=key,
        )
        self.watermarks = Watermarks(settings.allowed_lateness_seconds)
        self.deadlines = WindowDeadlines()
        self.stalls = StallTracker(
            round(settings.stall_after_seconds * 1000), round(settings.stall_warm_seconds * 1000),
            round(settings.stall_cold_seconds * 1000),
        )
        # One thread drives ClickHouse for all agents and the /sql page.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self.journey_sink = ClickHouseSink(clickhouse, database, self.metrics, executor=self._executor)
        # The ingest agent's journeys (events keyed by user) have their own
        # buffers: a sink's flush must not take rows another agent added.
        self.direct_sink = ClickHouseSink(clickhouse, database, self.metrics, executor=self._executor)
        self.spend_sink = ClickHouseSink(clickhouse, database, self.metrics, executor=self._executor)
        self.reader = reader
        self.database = database
        self.processed = 0
        # The worker's garbage collection policy, told after each batch (set by the worker).
        self.collector: BatchCollector | None = None
        self._partitions = list(range(settings.topic_partitions))
        # Source partitions whose events keyed by their user id go straight
        # to the journeys (set at each rebalance, see _direct_partitions).
        self._direct: frozenset[TP] = frozenset()
        # partition -> that partition of `normalized`: where watermarks and deadlines are kept
        self._homes = tuple(TP(self.names.normalized, p) for p in self._partitions)
        self.last_event_ms: int | None = None  # newest event time processed
        self._next_topic_check = time.monotonic() + TOPIC_CHECK_SECONDS
        self._changelog_lost = False  # the broker lost the journey changelog: rewrite it
        self._stalled_since: float | None = None  # since when nothing is processed with a lag
        self.app = self._build_app()

    # -- wiring ---------------------------------------------------------------
    def _build_app(self) -> faust.App:
        s = self.settings
        app = FunnelApp(
            s.app_id,
            broker=[f"kafka://{h}" for h in split_brokers(s.kafka_url or "")],
            store=s.store,
            datadir=str(s.data_dir / "faust"),
            topic_partitions=s.topic_partitions,
            topic_replication_factor=s.topic_replication,
            topic_disable_leader=True,
            web_host=s.web_host,
            web_bind=s.web_host,
            web_port=s.web_port,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=1.0,
            producer_linger=PRODUCER_LINGER_SECONDS,
            producer_max_batch_size=PRODUCER_MAX_BATCH_BYTES,
            broker_session_timeout=s.kafka_session_timeout_seconds,
            broker_heartbeat_interval=min(3.0, s.kafka_session_timeout_seconds / 3),
            autodiscover=False,
        )
        raw = RawSchema()
        self.source = app.topic(*self.names.events.values(), schema=raw)
        self.dead_letter = app.topic(self.names.dead_letter, schema=raw)
        self.normalized = app.topic(self.names.normalized, partitions=s.topic_partitions, schema=raw)
        # key_type=bytes: the table's store and its changelog recovery decode
        # keys with the serializer of key_type (json by default), not the schema's.
        self.journeys = cast(JourneyTable, app.tables.add(JourneyTable(
            app,
            name="journeys",
            key_type=bytes,
            beacon=app.tables.beacon,
            partitions=s.topic_partitions,
            schema=faust.Schema(key_serializer="raw", value_serializer="json"),
            options=rocksdb_options(s) if s.store.startswith("rocksdb") else None,
        )))
        # Faust stops every stream while more than ``max_messages`` (100) table
        # changelog records wait to be produced, flushing them 100 at a time.
        # The journey agent writes up to one record per event of a batch at
        # once, so allow two batches: the buffer stays bounded, and the agent
        # awaits its batch's records before it acknowledges the batch.
        app.producer.buffer.max_messages = max(100, 2 * s.batch_max_events)
        app.agent(self.source, name="ingest")(self._ingest_agent)
        app.agent(self.normalized, name="journey")(self._journey_agent)
        self.spend_topic = app.topic(self.names.spend, schema=raw)
        # The agents' topics deliver envelopes (streams.faust_adapt.envelopes): a short
        # queue of them keeps what waits for an agent bounded (Faust's default
        # of 4 096 would be millions of records). Set on the topics, as
        # faust-streaming 0.15.3's App.topic drops its maxsize argument.
        for topic in (self.source, self.normalized, self.spend_topic):
            topic.maxsize = ENVELOPE_QUEUE
        app.agent(self.spend_topic, name="spend")(self._spend_agent)
        app.timer(s.status_interval_seconds)(self._status)
        app.on_rebalance_complete.connect(self._reschedule)
        for path, handler in (
            ("/metrics", self._metrics_page),
            ("/health", self._health_page),
            ("/sql", self._sql_page),
        ):
            app.page(path)(_view(handler))
        web.install(self, app)
        return app

    async def _run_batches(self, name: str, stream: Stream, handle: Handle) -> None:
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
        s = self.settings
        previous: asyncio.Future[bool] | None = None
        try:
            async for events in take_envelopes(stream, s.batch_max_events, s.batch_max_seconds):
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

    async def _ingest_agent(self, stream: StreamT) -> None:
        await self._run_batches("ingest", cast(Stream, stream), self._ingest_batch)

    async def _journey_agent(self, stream: StreamT) -> None:
        await self._run_batches("journey", cast(Stream, stream), self._journey_batch)

    async def _spend_agent(self, stream: StreamT) -> None:
        await self._run_batches("spend", cast(Stream, stream), self._spend_batch)

    # -- agents -----------------------------------------------------------------
    async def _ingest_batch(self, stream: Stream, events: Sequence[EventT]) -> Finish:
        """Decode and validate; pass valid events on by user, the invalid to the dead letters.

        An event keyed by its user id, in the partition that `normalized`
        would give it, is applied to the journeys right here (see
        :meth:`_direct_partitions`); the others go through `normalized`,
        produced in one batch per partition.
        """
        now_ms = int(time.time() * 1000)
        pending: list[Awaitable[Any]] = []
        onward: list[ChangelogRecord] = []  # (partition of normalized, key, value)
        direct: list[tuple[EventT, Any, NormalizedEvent]] = []
        direct_envelopes: list[EventT] = []  # those with records in ``direct``, once each
        direct_tps, count = self._direct, len(self._partitions)
        m, tally = self.metrics, Tally()
        funnels, routes = self.funnels, self.routes

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
                    pending.append(await self._dead_letter(record, norm, source))
                    continue
                funnel = norm["funnel"]
                named[funnel] = named.get(funnel, 0) + 1
                user = norm["user_id"].encode()
                partition = partition_of(user, count)
                if here and record.key == user and partition == msg.partition:
                    if not direct_envelopes or direct_envelopes[-1] is not event:
                        direct_envelopes.append(event)
                    direct.append((event, record, norm))
                else:
                    onward.append((partition, user, orjson.dumps(norm)))
            for funnel, events_named in named.items():  # the funnels an event feeds depend on these two
                for name in [f.name for f in route_of(funnel, event_type)] or ["none"]:
                    tally.inc(m.child(m.events, name, event_type), events_named)
        delivered = await self._send_normalized(onward)
        journeys = None
        if direct:
            journeys = await self._apply_journeys(direct, self.direct_sink,
                                                  batch_token("journey-direct", direct_envelopes))

        async def finish() -> None:
            if journeys is not None:
                await journeys()
            # Delivered before acknowledged: nothing is lost between topics.
            await asyncio.gather(*pending, *delivered)
            tally.apply()  # once: a batch handled again after a refusal is counted once

        return finish

    async def _send_normalized(self, records: Sequence[ChangelogRecord]) -> list[asyncio.Future[Any]]:
        """Produce (partition, key, value) records to `normalized`; their batches' futures."""
        return await produce_batches(self.app, self.names.normalized, records)

    def _direct_partitions(self) -> frozenset[TP]:
        """The assigned source partitions whose user-keyed events may skip `normalized`.

        `normalized` exists so that one user's events meet in one partition
        of the journeys table. An event whose key already is its user id,
        found in the partition p that `normalized` would give it, is in the
        right place: Faust's assignor gives a worker partition p of every
        topic with the same partition count (co-partitioning), the journeys
        table's included. So only partitions of source topics with as many
        partitions as `normalized`, whose table partition is active here,
        qualify; the ingest agent checks each event's key and partition.
        """
        if not self.settings.direct_journeys:
            return frozenset()
        consumer = self.app.consumer
        count = len(self._partitions)
        if consumer.topic_partitions(self.names.normalized) != count:
            return frozenset()
        local = self._active_table_partitions()
        sources = set(self.names.events.values())
        return frozenset(tp for tp in consumer.assignment()
                         if tp.topic in sources and tp.partition in local
                         and consumer.topic_partitions(tp.topic) == count)

    def _active_table_partitions(self) -> set[int]:
        """The journeys table's partitions this worker is the active one for."""
        changelog = self.journeys.changelog_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == changelog}

    async def _dead_letter(self, msg: Any, exc: InvalidEvent, source: str) -> Awaitable[Any]:
        """Send the original bytes to the dead-letter topic with the reason; count it.

        A payload larger than one producer request (about 1 MB) cannot be sent
        again: its first DEAD_LETTER_MAX_BYTES go, with a ``truncated`` header
        giving the original size, rather than stopping the worker.
        """
        self.metrics.child(self.metrics.invalid_events, exc.reason).inc()
        value = msg.value or b""
        headers = [
            ("reason", exc.reason.encode()),
            ("detail", exc.detail[:1000].encode()),
            ("source", source.encode()),
        ]
        if len(value) > DEAD_LETTER_MAX_BYTES:
            headers.append(("truncated", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        return await self.dead_letter.send(key=msg.key, value=value, headers=headers)

    async def _spend_batch(self, stream: Stream, events: Sequence[EventT]) -> Finish:
        now_ms = int(time.time() * 1000)
        pending: list[Awaitable[Any]] = []
        spend: list[tuple[Any, ...]] = []
        for event in events:
            for msg in records_of(event):
                source = f"{msg.topic}:{msg.partition}:{msg.offset}"
                try:
                    row = self.decoder.decode_spend(msg.value, source)
                except InvalidEvent as exc:
                    pending.append(await self._dead_letter(msg, exc, source))
                    continue
                spend.append((*row.values(), now_ms))
                self.metrics.spend.labels(self.metrics.channel(row["channel"]), row["currency"]).inc(
                    float(row["amount"])
                )
        # Added and taken with no await in between: this batch's rows only (the
        # batch before may be handled again meanwhile, see _run_batches).
        self.spend_sink.extend("spend", spend)
        rows, token = self.spend_sink.take(), batch_token("spend", events)

        async def finish() -> None:
            await self.spend_sink.write_taken(rows, token)
            await asyncio.gather(*pending)

        return finish

    async def _journey_batch(self, stream: Stream, events: Sequence[EventT]) -> Finish:
        loads = orjson.loads
        decoded = [(event, record, loads(record.value or b"{}"))
                   for event in events for record in records_of(event)]
        return await self._apply_journeys(decoded, self.journey_sink, batch_token("journey", events))

    async def _apply_journeys(self, batch: Sequence[tuple[EventT, Any, NormalizedEvent]],
                              sink: ClickHouseSink, token: str) -> Finish:
        """Apply a batch of events to the users' journeys and produce their changelog records.

        Returns what finishes the batch: its rows written, its changelog
        records acknowledged by the broker.

        ``batch`` holds (envelope event, record, normalized event) triples:
        the envelope routes the table to the record's partition.
        """
        m, tally = self.metrics, Tally()
        now = time.time()
        dirty: dict[bytes, tuple[UserState, EventT]] = {}
        # Window memberships of this batch's entries and transitions, written
        # with its other rows (stage_counts): no topic and agent in between.
        windows = WindowAggregator(self.settings.window_seconds)
        # (user, funnel) -> partition, for the users whose furthest stage or
        # last progress changed (only a new stage entry changes them)
        touched: dict[tuple[bytes, str], Any] = {}
        anchors: dict[Any, EventT] = {}  # partition -> an event of it (routes table access)
        # One user's events come from five topics, so ingest can pass them on
        # out of event-time order; applying each batch in event-time order
        # repairs that whenever they meet in one batch (stable sort: ties keep
        # arrival order).
        decoded = sorted(batch, key=lambda triple: triple[2]["ts"])
        homes, routes, journeys, observe = self._homes, self.routes, self.journeys, self.watermarks.observe
        # This batch's rows, in order, handed to the sink after the loop.
        events: list[tuple[Any, ...]] = []
        entries: list[tuple[Any, ...]] = []
        transitions: list[tuple[Any, ...]] = []
        dropoffs: list[tuple[Any, ...]] = []
        routed: EventT | None = None  # the event the table is routed by now
        by_event = journeys.routes_by_event
        for event, msg, e in decoded:
            tp = homes[msg.partition]
            key = msg.key or e["user_id"].encode()
            targets = self.targets(e) if e["funnel"] else routes.get(e["event_type"])
            if not targets:  # valid, but no configured funnel has this stage: kept
                events.append(event_row(e, "", "", ""))
                continue
            cached = dirty.get(key)
            if cached is None:
                # Faust's RocksDB store reads (and writes) the partition of the
                # "current event": point it at this message before touching the table.
                if event is not routed and by_event:
                    route_table_to(event)
                    routed = event
                state: UserState = journeys.get(key) or {}
            else:
                state = cached[0]
            dirty[key] = (state, event)
            late = observe(tp, e["ts"])
            anchors[tp] = event
            for funnel in targets:
                result = apply_event(state, e, funnel)
                if result.entries:
                    touched[key, funnel.name] = tp
                    for entry in result.entries:
                        entries.append(entry_row(entry))
                        windows.add_entry(entry)
                if result.dropoffs:
                    dropoffs.extend([dropoff_row(d) for d in result.dropoffs])
                events.append(event_row(e, funnel.name, result.channel, result.customer))
                for tr in result.transitions:
                    transitions.append(transition_row(tr))
                    windows.add_transition(tr)
                if result.duplicate:
                    tally.inc(m.child(m.duplicate_events, funnel.name))
                    continue
                tally.observe(m.event_lag, max(0.0, now - e["ts"] / 1000.0))
                if late:
                    tally.inc(m.child(m.late_events, funnel.name))
                self._count(tally, funnel.name, e, result)
        for table, rows_of in (("dropoffs", dropoffs), ("events", events), ("stage_entries", entries),
                               ("transitions", transitions)):
            sink.extend(table, rows_of)
        # Follow the users who changed first, so a window that already ended
        # (old data, a backlog) expires in this same batch.
        self._track(touched, dirty, anchors, int(now * 1000))
        self._expire_windows(sink, tally, anchors, dirty, int(now * 1000))
        # Counted as the journeys changed, before any await (as one inc per
        # update would be): a batch handled again finds its events applied.
        tally.apply()
        # One table write (and changelog record) per user per batch. Faust
        # routes it by the "current event", so point it at that user's event.
        routed = None
        put = journeys.put
        for key, (state, event) in dirty.items():
            if event is not routed and by_event:
                route_table_to(event)
                routed = event
            put(key, state, event)
        changelog = self.journeys.take_changelog()  # no await since the writes: ours only
        sink.extend("stage_counts", list(windows.rows()))
        rows = sink.take()  # no await since this batch's rows were added: its own only
        delivered = await self.journeys.produce_changelog(changelog)
        self.processed += len(decoded)
        if decoded:  # sorted by event time
            self.last_event_ms = max(self.last_event_ms or 0, decoded[-1][2]["ts"])

        async def finish() -> None:
            await sink.write_taken(rows, token)
            await asyncio.gather(*delivered)

        return finish

    def _expire_windows(self, sink: ClickHouseSink, tally: Tally, anchors: dict[Any, EventT],
                        dirty: dict[bytes, tuple[UserState, EventT]], now_ms: int) -> None:
        """Drop-offs for the conversion windows each partition's watermark has passed."""
        m = self.metrics
        for tp, anchor in anchors.items():
            mark = self.watermarks.mark(tp)
            for due in self.deadlines.due(tp, mark if mark is not None else -1):
                funnel = self.funnels.get(due.funnel)
                cached = dirty.get(due.key)
                if cached is None:
                    route_table_to(anchor)
                    state = self.journeys.get(due.key)
                    if not state or funnel is None:
                        continue
                    cached = dirty[due.key] = (state, anchor)
                if funnel is None:
                    continue
                drop = expire_window(cached[0], funnel, due.key.decode(), due.stage, due.entered)
                if drop is not None:
                    sink.add("dropoffs", dropoff_row(drop))
                    if drop.first:
                        tally.inc(m.child(m.dropoffs, funnel.name, drop.stage, m.channel(drop.channel)))

    def _track(self, touched: dict[tuple[bytes, str], Any], dirty: dict[bytes, tuple[UserState, EventT]],
               anchors: dict[Any, EventT], now_ms: int) -> None:
        """Schedule the conversion window and update the stall counts of users who changed."""
        funnels, follow = self.funnels, self._follow
        for (key, name), tp in touched.items():
            follow(tp, key, dirty[key][0], funnels[name], now_ms)

    def _follow(self, tp: Any, key: bytes, state: UserState, funnel: FunnelDefinition, now_ms: int) -> None:
        place = furthest(state, funnel)
        if place is None:
            return
        stage, entered = place
        finished = stage == funnel.stages[-1]
        if not finished:
            self.deadlines.schedule(tp, key, funnel.name, stage, entered, window_ms(funnel))
        self.stalls.update(key, funnel.name, None if finished else stage,
                           state[funnel.name]["last"], now_ms)

    async def _reschedule(self, *args: Any, **kwargs: Any) -> None:
        """After a rebalance: follow every local user again (the only full scan, once).

        Also decides which source partitions skip `normalized` from now on.
        """
        self._direct = self._direct_partitions()
        if self._direct:
            log.info("ingest: events keyed by user id in %d source partitions go straight to the journeys",
                     len(self._direct))
        self.deadlines.clear()
        self.stalls.clear()
        partitions = self._partitions
        now_ms = int(time.time() * 1000)
        users = 0
        for key, state in self.journeys.items():
            tp = self._homes[partition_of(key, len(partitions))]
            for name in state:
                if name in self.funnels:
                    self._follow(tp, key, state, self.funnels[name], now_ms)
            users += 1
        log.info("journey: following %d users for conversion windows and stalls", users)

    def targets(self, e: NormalizedEvent) -> list[FunnelDefinition]:
        return route(e, self.funnels, self.routes)

    def _count(self, tally: Tally, funnel: str, e: NormalizedEvent, result: JourneyResult) -> None:
        m = self.metrics
        channel = m.channel(result.channel)
        for entry in result.entries:
            if entry.new:
                tally.inc(m.child(m.stage_entries, funnel, entry.stage, channel))
        for tr in result.transitions:
            if tr.first:  # a correction is not a new conversion
                tally.inc(m.child(m.transitions, funnel, tr.from_stage, tr.to_stage, channel))
                tally.observe(m.child(m.transition_duration, funnel, tr.from_stage, tr.to_stage),
                              tr.seconds)
        if e["amount"] is not None:
            tally.inc(m.child(m.revenue, funnel, channel, e["currency"] or ""), float(e["amount"]))
        if result.customer == "new":
            tally.inc(m.child(m.customers, funnel, channel))

    # -- periodic and web -----------------------------------------------------------
    def _update_stalls(self) -> None:
        self.stalls.advance(int(time.time() * 1000))
        counts = self.stalls.counts()
        for funnel in self.funnels.values():
            for stage in funnel.stages[:-1]:
                for temperature in TEMPERATURES:
                    self.metrics.stalled_users.labels(funnel.name, stage, temperature).set(
                        counts.get((funnel.name, stage, temperature), 0)
                    )

    async def _check_topics(self) -> None:
        """Create topics the broker lost (an embedded, in-memory broker that restarted)."""
        if time.monotonic() < self._next_topic_check:
            return
        self._next_topic_check = time.monotonic() + TOPIC_CHECK_SECONDS
        changelog = self.journeys.changelog_topic.get_topic_name()
        try:
            created = await ensure_topics(self.settings, timeout=5.0, extra=[changelog])
        except Exception as exc:  # the broker may be down right now: the next check retries
            log.warning("topic check failed: %s", exc)
            return
        if created:
            log.warning("created missing topics %s: the broker lost them (an embedded broker restarted?)",
                        ", ".join(created))
            # Its other topics are new too (a producer may have created them
            # first): read every partition this worker consumes from the start.
            consumed = [*self.names.events.values(), self.names.spend, self.names.normalized]
            cast(RewindingConsumer, self.app.consumer).rewind(
                TP(topic, p) for topic in consumed for p in self._partitions)
            self._changelog_lost = self._changelog_lost or changelog in created
        if self._changelog_lost:
            await self._rewrite_changelog()

    async def _rewrite_changelog(self) -> None:
        """Write every journey this worker holds to the changelog again: the broker lost it.

        Only in memory now, the journeys changed before the loss would be
        missing from a later recovery (a restart, a rebalance). One record per
        user, taken with no await after reading the table, as an agent's
        batch is; a batch written later comes after it. If the broker refuses
        it, the next topic check tries again.
        """
        started = time.monotonic()
        partitions, table = self._partitions, self.journeys
        active = self._active_table_partitions()  # a standby's copy may be behind its active's
        for key, state in table.items():
            partition = partition_of(key, len(partitions))
            if partition in active:
                table.send_changelog(partition, key, state)
        records = table.take_changelog()
        try:
            await asyncio.gather(*await table.produce_changelog(records))
        except KafkaError as exc:
            log.warning("journey changelog: rewriting %d journeys failed (%r); trying again at the next "
                        "topic check", len(records), exc)
            return
        self._changelog_lost = False
        log.warning("journey changelog: wrote the %d journeys held here again (the broker lost it) in %.1f s",
                    len(records), time.monotonic() - started)

    async def _status(self) -> None:
        await self._check_topics()
        self._update_stalls()
        processed, self.processed = self.processed, 0
        rate = processed / self.settings.status_interval_seconds
        pending = self.journey_sink.pending + self.direct_sink.pending + self.spend_sink.pending
        lag = web.consumer_lag(self)
        log.info("status: %.0f events/s through journeys, consumer lag %s messages, %d rows pending in sinks",
                 rate, "unknown" if lag is None else lag, pending)
        self._watch_stall(processed, lag)

    def _watch_stall(self, processed: int, lag: int | None) -> None:
        """Say once, after STALL_WARN_SECONDS of it, that nothing is processed while the consumer lags."""
        if processed or not lag or self.app.rebalancing:
            self._stalled_since = None
            return
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= STALL_WARN_SECONDS:  # once per stall
            self._stalled_since = float("inf")
            consumer = cast(RewindingConsumer, self.app.consumer)
            log.warning("status: nothing processed for %.0f s with %d messages behind (a sink down, "
                        "or a stuck partition): %s", STALL_WARN_SECONDS, lag, consumer.describe())

    async def _metrics_page(self, web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the content type.
        content_type = CONTENT_TYPE_LATEST.split("; charset=")[0]
        return web.bytes(generate_latest(self.metrics.registry), content_type=content_type)

    @property
    def ready(self) -> bool:
        """Partitions assigned and no rebalance under way: the worker consumes."""
        return not self.app.rebalancing and bool(self.app.consumer.assignment())

    async def _health_page(self, web: Any, request: Any) -> Any:
        ready = self.ready
        return web.json(
            {"status": "ok" if ready else "starting", "ready": ready, "app_id": self.settings.app_id},
            status=200 if ready else 503,
        )

    async def _sql_page(self, web: Any, request: Any) -> Any:
        """Read-only SQL for other processes (the embedded engine has one owner)."""
        if self.reader is None:
            return web.json({"error": "this worker serves no SQL"}, status=404)
        try:
            sql = check_read_only(request.query.get("q", ""))
        except UnsafeQuery as exc:
            return web.json({"error": f"{exc} (pass one query as ?q=)"}, status=400)
        try:
            result = await self.journey_sink.run_blocking(self.reader.query, sql)
        except Exception as exc:
            return web.json({"error": str(exc)}, status=400)
        rows = [[_jsonable(v) for v in row] for row in result.result_rows]
        return web.json({"columns": list(result.column_names), "rows": rows})

    def close(self) -> None:
        for sink in (self.journey_sink, self.direct_sink, self.spend_sink):
            sink.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
