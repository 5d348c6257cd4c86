"""One worker's wiring: the Faust app, its topics and journeys table, the agents, the web server.

Data flow (README, "Data flow"; docs/architecture.md names each step's module):

    funnel.<type> x5 --ingest--> funnel.normalized (keyed by person, else anonymous id)
                     \\--------> funnel.dead-letter (raw bytes + reason headers)
                     \\--------> journeys, for events keyed that way
                                 in the partition `normalized` would use
    funnel.normalized --journey--> funnel.normalized: an anonymous id's events and
                                   journey, forwarded to its person once linked
    funnel.normalized --journey--> ClickHouse events/stage_entries/transitions/dropoffs/identities
                                   and stage_counts (window memberships, same batch)
    funnel.spend --spend--> ClickHouse spend

The agents' batch bodies are in :mod:`streams.agents` (``ingest``,
``journeys``, ``spend``), the loop that runs them and acknowledges a batch
only once what it caused is written in :mod:`streams.agents.runner`, the
status timer in :mod:`streams.agents.upkeep`, every adaptation of Faust's
internals in :mod:`streams.faust_adapt`. This module only builds and connects
them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust
from clickhouse_connect.driver.client import Client
from faust import Stream
from faust.types import TP, StreamT
from prometheus_client import CollectorRegistry

from schemas import Decoder, FunnelsConfig
from sinks import ClickHouseSink, FunnelMetrics
from streams.agents.deadletter import DeadLetters
from streams.agents.ingest import IngestAgent, direct_partitions
from streams.agents.journeys import JourneyAgent
from streams.agents.runner import BatchRunner, Handle
from streams.agents.spend import SpendAgent
from streams.agents.upkeep import Upkeep
from streams.faust_adapt.app import FunnelApp
from streams.faust_adapt.consumer import RawSchema
from streams.faust_adapt.lag import consumer_lag
from streams.faust_adapt.table import ChangelogRecord, JourneyTable
from streams.funnel.lifecycle import StallTracker
from streams.funnel.routing import routes_for
from streams.kafka_security import faust_credentials
from streams.settings import Settings, split_brokers
from streams.topics import TopicNames
from streams.web import routes
from streams.web.endpoints import install_endpoints

__all__ = ["Pipeline"]

log = logging.getLogger("funnel.worker")

#: Envelopes an agent's topic queue holds (each up to ENVELOPE_MAX_RECORDS records).
ENVELOPE_QUEUE = 64

#: Producer batching. With Faust's defaults (no linger, 16 KiB batches) nearly
#: every produced message was its own produce request; waiting up to 20 ms
#: lets a batch's messages share requests (BENCHMARKS.md: -8-20 % worker CPU
#: per event, about -80 % broker CPU). Agents wait for their messages once per
#: batch, so the linger adds at most 20 ms per batch, not per message. Faust's
#: own PRODUCER_LINGER / PRODUCER_MAX_BATCH_SIZE variables still override them.
PRODUCER_LINGER_SECONDS = 0.02
PRODUCER_MAX_BATCH_BYTES = 1024 * 1024


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Faust's RocksDB options for the journeys table: one database per partition."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb << 20,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb << 20,
    }


class Pipeline:
    """Everything one worker runs. Build it, then hand ``pipeline.app`` to a Faust worker.

    Arguments:
        clickhouse: the client the sinks write with.
        database: the ClickHouse database of the tables.
        reader: a read-only client for the page, its API and ``/sql``; None: no reads.
        registry: where the Prometheus metrics are registered (a new registry if None).
    """

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
        self.metrics = FunnelMetrics(registry, settings.channel_list)
        self.metrics.declare(funnels.funnels)
        self.names = TopicNames(settings)
        key = settings.email_hash_key.get_secret_value().encode() if settings.email_hash_key else None
        decoder = Decoder(
            self.funnels,
            max_bytes=settings.max_message_bytes,
            max_future_seconds=settings.max_future_seconds,
            email_hash_key=key,
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
        self.app, table = self._build_app()
        partitions = settings.topic_partitions
        stalls = StallTracker(
            round(settings.stall_after_seconds * 1000), round(settings.stall_warm_seconds * 1000),
            round(settings.stall_cold_seconds * 1000),
        )
        self.journey = JourneyAgent(
            table, self.journey_sink, self.metrics, self.funnels, routes_for(funnels.funnels),
            # partition -> that partition of `normalized`: where watermarks and deadlines are kept
            tuple(TP(self.names.normalized, p) for p in range(partitions)),
            window_seconds=settings.window_seconds,
            allowed_lateness_seconds=settings.allowed_lateness_seconds, stalls=stalls,
            send=self._send_normalized,
        )
        dead_letters = DeadLetters(self.dead_letter, self.metrics)
        self.ingest = IngestAgent(
            app=self.app, decoder=decoder, metrics=self.metrics, event_type_of=self.names.event_type_of(),
            normalized=self.names.normalized, partitions=partitions, dead_letters=dead_letters,
            journeys=self.journey, direct_sink=self.direct_sink)
        self.spend = SpendAgent(decoder, self.metrics, self.spend_sink, dead_letters)
        self.runner = BatchRunner(settings.batch_max_events, settings.batch_max_seconds, self.metrics)
        self.upkeep = Upkeep(settings, self.names, self.app, self.journey,
                             lambda: self.pending_rows + self.spend_sink.pending, self.consumer_lag)
        self.app.agent(self.source, name="ingest")(self._agent("ingest", self.ingest.batch))
        self.app.agent(self.normalized, name="journey")(self._agent("journey", self.journey.batch))
        self.app.agent(self.spend_topic, name="spend")(self._agent("spend", self.spend.batch))
        self.app.timer(settings.status_interval_seconds)(self.upkeep.status)
        self.app.on_rebalance_complete.connect(self._reschedule)
        install_endpoints(self, self.app)
        routes.install(self, self.app)

    async def _send_normalized(self, records: Sequence[ChangelogRecord]) -> list[asyncio.Future[Any]]:
        """The journey agent's records to `normalized` (forwarded events, merges), sent as ingest sends."""
        return await self.ingest.send_normalized(records)

    def _build_app(self) -> tuple[faust.App, JourneyTable]:
        """The Faust app with its topics, and the journeys table (the agents come after)."""
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
            broker_credentials=faust_credentials(s),
        )
        raw = RawSchema()
        self.source = app.topic(*self.names.events.values(), schema=raw)
        self.dead_letter = app.topic(self.names.dead_letter, schema=raw)
        self.normalized = app.topic(self.names.normalized, partitions=s.topic_partitions, schema=raw)
        self.spend_topic = app.topic(self.names.spend, schema=raw)
        # key_type=bytes: the table's store and its changelog recovery decode
        # keys with the serializer of key_type (json by default), not the schema's.
        table = cast(JourneyTable, app.tables.add(JourneyTable(
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
        # The agents' topics deliver envelopes (streams.faust_adapt.envelopes): a short
        # queue of them keeps what waits for an agent bounded (Faust's default
        # of 4 096 would be millions of records). Set on the topics, as
        # faust-streaming 0.15.3's App.topic drops its maxsize argument.
        for topic in (self.source, self.normalized, self.spend_topic):
            topic.maxsize = ENVELOPE_QUEUE
        return app, table

    @property
    def journeys(self) -> JourneyTable:
        """The journeys table (its owner is the journey agent)."""
        return self.journey.table

    def _agent(self, name: str, body: Handle) -> Callable[[StreamT], Any]:
        """The Faust agent function that runs ``body``'s batches."""

        async def agent(stream: StreamT) -> None:
            await self.runner.run(name, cast(Stream, stream), body)

        agent.__name__ = agent.__qualname__ = f"{name}_agent"
        return agent

    async def _reschedule(self, *args: Any, **kwargs: Any) -> None:
        """After a rebalance: decide which source partitions skip `normalized`; follow the local users.

        Local: those of the table partitions this worker is the active one for.
        """
        s = self.settings
        active = self.journeys.active_partitions()
        self.ingest.direct = frozenset()
        if s.direct_journeys:
            self.ingest.direct = direct_partitions(
                self.app.consumer, self.names.normalized, set(self.names.events.values()),
                s.topic_partitions, active)
        if self.ingest.direct:
            log.info("ingest: events keyed by user id in %d source partitions go straight to the journeys",
                     len(self.ingest.direct))
        users = self.journey.follow_all(active)
        log.info("journey: following %d users for conversion windows and stalls", users)

    # -- what the web server and the tools read (streams.web.endpoints.Worker) -----------------
    @property
    def ready(self) -> bool:
        """Partitions assigned and no rebalance under way: the worker consumes."""
        return not self.app.rebalancing and bool(self.app.consumer.assignment())

    @property
    def last_event_ms(self) -> int | None:
        return self.journey.last_event_ms

    @property
    def pending_rows(self) -> int:
        return self.journey_sink.pending + self.direct_sink.pending

    def consumer_lag(self) -> int | None:
        """Messages not yet processed on this worker's partitions of the event topics and `normalized`."""
        return consumer_lag(self.app.consumer, {*self.names.events.values(), self.names.normalized})

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.journey_sink.run_blocking(fn, *args)

    def close(self) -> None:
        for sink in (self.journey_sink, self.direct_sink, self.spend_sink):
            sink.stop()
        self._executor.shutdown(wait=False, cancel_futures=True)
