"""Stage ``core``: the agents' batch bodies called directly, with Kafka and Faust stubbed out."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from streams.bench.context import Context
from streams.bench.kafka import PARTITIONS, event_topics
from streams.bench.measure import rate
from streams.faust_adapt.table import changelog_value


class _Msg(NamedTuple):
    """A fetched record, as aiokafka gives it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    tp: Any


class _Envelope(NamedTuple):
    """What an envelope event's message tells the agents (streams.faust_adapt.envelopes.Envelope)."""

    topic: str
    partition: int
    first_offset: int
    offset: int
    tp: Any


class _Event:
    __slots__ = ("__weakref__", "message", "value")  # Faust routes tables by a weak reference to it

    def __init__(self, message: _Envelope, records: list[_Msg]) -> None:
        self.message, self.value = message, records


class _Stream:
    def _set_current_event(self, event: Any) -> None:
        pass


class _Capture:
    """Stands for a topic: keeps what an agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, key: bytes | None = None, value: bytes = b"", headers: Any = None) -> Any:
        self.sent.append(("", key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Table(dict[bytes, Any]):
    """Stands for the journeys table: a write costs the changelog record's serialization."""

    def __setitem__(self, key: bytes, value: Any) -> None:
        changelog_value(value)
        super().__setitem__(key, value)

    routes_by_event = False  # as Faust's memory store

    def put(self, key: bytes, value: Any, event: Any) -> None:
        self[key] = value

    def take_changelog(self) -> list[Any]:
        """No broker here: nothing to produce or wait for."""
        return []

    async def produce_changelog(self, records: Any) -> list[Any]:
        return []


def stage_core(ctx: Context) -> None:
    """The agents' batch bodies on the pre-produced traffic, with Kafka and Faust stubbed out.

    Batches are what the agents would take (``FUNNEL_BATCH_MAX_EVENTS``); the
    sinks write to chDB and the metrics count as in the worker.
    """
    from faust.types import TP
    from prometheus_client import CollectorRegistry

    from sinks import migrate
    from streams.agents.collector import BatchCollector
    from streams.faust_adapt.envelopes import ENVELOPE_MAX_RECORDS
    from streams.pipeline import Pipeline
    from streams.settings import Settings
    from streams.tools.worker import tune_gc
    from streams.topics import partition_of

    settings = Settings(kafka_url="kafka://127.0.0.1:9",  # never connected to
                        topic_prefix=ctx.prefix, data_dir=ctx.run_dir / "core")
    client = ctx.chdb()
    migrate(client, "bench_core")
    pipeline = Pipeline(settings, ctx.funnels(), clickhouse=client, database="bench_core",
                        registry=CollectorRegistry())
    table, normalized = _Table(), _Capture()
    pipeline.journey.table = table  # type: ignore[assignment]

    async def send_normalized(records: Sequence[tuple[int, bytes | None, bytes | None]]) -> list[Any]:
        normalized.sent.extend((pipeline.names.normalized, key, value or b"") for _, key, value in records)
        return []

    pipeline.ingest.send_normalized = send_normalized  # type: ignore[method-assign]
    pipeline.ingest.dead_letters.topic = _Capture()
    partitions = list(range(PARTITIONS))
    if settings.direct_journeys:  # as a worker owning every partition would decide
        pipeline.ingest.direct = frozenset(TP(topic, p) for topic in pipeline.names.events.values()
                                           for p in partitions)

    offsets: dict[Any, int] = {}

    def envelopes(records: Iterable[tuple[str, bytes | None, bytes]]) -> list[Any]:
        """The envelopes a fetch of ``records`` (topic, key, value) would deliver."""
        parts: dict[Any, list[_Msg]] = {}
        for topic, key, value in records:
            partition = partition_of(key, PARTITIONS) if key else 0
            tp = TP(topic, partition)
            offset = offsets[tp] = offsets.get(tp, -1) + 1
            parts.setdefault(tp, []).append(_Msg(topic, partition, offset, key, value, tp))
        out = []
        for tp, msgs in parts.items():
            for i in range(0, len(msgs), ENVELOPE_MAX_RECORDS):
                chunk = msgs[i:i + ENVELOPE_MAX_RECORDS]
                out.append(_Event(_Envelope(tp.topic, tp.partition, chunk[0].offset, chunk[-1].offset, tp),
                                  chunk))
        return out

    base = int(time.time() * 1000) - (ctx.messages[-1].offset_ms if ctx.messages else 0)
    topics = event_topics(ctx.prefix)
    source = [(topics[m.event_type], m.key, m.value(base + m.offset_ms))
              for m in ctx.messages for _ in range(m.copies)]
    seconds = {"ingest": 0.0, "journey": 0.0}

    async def journeys(stream: _Stream) -> None:
        """`normalized` so far to the journey agent (which may send more: forwarded events, merges)."""
        batch, normalized.sent = envelopes(normalized.sent), []
        began = time.perf_counter()
        await (await pipeline.journey.batch(stream, batch))()  # type: ignore[arg-type]
        collector.batch_done()
        seconds["journey"] += time.perf_counter() - began

    async def run() -> None:
        stream, size = _Stream(), settings.batch_max_events
        for i in range(0, len(source), size):
            batch = envelopes(source[i:i + size])
            began = time.perf_counter()
            await (await pipeline.ingest.batch(stream, batch))()  # type: ignore[arg-type]
            collector.batch_done()
            seconds["ingest"] += time.perf_counter() - began
            await journeys(stream)
            ctx.progress(f"core: {min(i + size, len(source))}/{len(source)} events")
        while normalized.sent:
            await journeys(stream)

    thresholds = gc.get_threshold()
    tune_gc()  # as a worker runs
    collector = BatchCollector()  # as the worker's batch loop tells it
    try:
        asyncio.run(run())
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        pipeline.close()
    total = sum(seconds.values())
    ctx.progress.done(f"core: {len(source)} events in {total:.2f}s")
    ctx.report.add("core_events_per_s", rate(len(source), total), "events/s")
    ctx.report.details["core"] = {
        "events": len(source), "seconds": total, "users": len(table),
        "us_per_event": {k: round(v / max(len(source), 1) * 1e6, 1) for k, v in seconds.items()},
    }
