"""Events keyed by their user id skip `normalized`: the same journeys and rows, one hop less."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from faust.streams import current_event
from faust.types import TP
from prometheus_client import CollectorRegistry

from streams import pipeline as app_module
from streams.pipeline import Pipeline, route_table_to
from streams.settings import Settings, load_funnels

PARTITIONS = 4
NOW_S = 1_790_000_000.0
partitioner, partitions = DefaultPartitioner(), list(range(PARTITIONS))


class RecordingClient:
    """A clickhouse-connect client that keeps what is inserted."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)

    def create_insert_context(self, table: str, column_names: Any, column_type_names: Any = None) -> Any:
        return SimpleNamespace(table=table, column_names=column_names, settings=None, data=None)

    def insert(self, table: str = "", rows: Any = None, column_names: Any = None, settings: Any = None,
               *, data: Any = None, context: Any = None) -> None:
        if context is not None:  # the sink's reused insert context
            table, rows = context.table, data
        self.rows[table.split(".")[-1]].extend(tuple(row) for row in rows)


class Table(dict[bytes, Any]):
    """The journeys table without a broker: no changelog records to wait for.

    Keeps the partition of Faust's "current event" at each write: the one
    the real table would write to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.routed: dict[bytes, int] = {}

    def __setitem__(self, key: bytes, value: Any) -> None:
        event = current_event()
        assert event is not None, "a table write outside of any event"
        self.routed[key] = event.message.partition
        super().__setitem__(key, value)

    routes_by_event = True  # as the RocksDB store: the writer must route every write

    def put(self, key: bytes, value: Any, event: Any) -> None:
        """JourneyTable.put: the table routed to ``event``'s partition by the caller."""
        self[key] = value
        assert self.routed[key] == event.message.partition

    def take_changelog(self) -> list[Any]:
        return []

    async def produce_changelog(self, records: Any) -> list[Any]:
        return []


class Normalized:
    """Stands for the producer of `normalized`: keeps the (key, value) records the ingest agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, records: Any) -> list[Any]:
        self.sent.extend((key, value) for _, key, value in records)
        return []


class Stream:
    """An agent's stream: its shared ``current_event`` belongs to Faust (its take buffer reads it)."""

    def __init__(self) -> None:
        self.current_event = object()


class Event:
    def __init__(self, message: Any, value: Any = None) -> None:
        self.message, self.value = message, value


def message(topic: str, partition: int, offset: int, key: bytes | None, value: bytes) -> Any:
    """A fetched record."""
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, key=key, value=value,
                           tp=TP(topic, partition))


def envelopes(records: list[Any]) -> list[Event]:
    """The records as the consumer delivers them: one envelope per partition, offsets in order."""
    parts: dict[TP, list[Any]] = {}
    for record in records:
        parts.setdefault(record.tp, []).append(record)
    return [Event(SimpleNamespace(topic=tp.topic, partition=tp.partition, first_offset=part[0].offset,
                                  offset=part[-1].offset, tp=tp), part)
            for tp, part in parts.items()]


async def handled(batch: Any) -> None:
    """An agent's batch body, then what finishes it (its writes)."""
    finish = await batch
    await finish()


def home(key: bytes) -> int:
    return int(partitioner(key, partitions, partitions))


@pytest.fixture
def make_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(app_module.time, "time", lambda: NOW_S)
    built: list[Pipeline] = []

    def make(*, direct: bool) -> Pipeline:
        settings = Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path, topic_partitions=PARTITIONS,
                            topic_prefix="t.", direct_journeys=direct)
        pipeline = Pipeline(settings, load_funnels(None), clickhouse=RecordingClient(),  # type: ignore[arg-type]
                            database="funnel", registry=CollectorRegistry())
        pipeline.journeys, pipeline.normalized = Table(), Normalized()  # type: ignore[assignment]
        pipeline._send_normalized = pipeline.normalized.send  # type: ignore[attr-defined, method-assign]
        if direct:  # what _direct_partitions decides for a worker that owns every partition
            pipeline._direct = frozenset(TP(t, p) for t in pipeline.names.events.values() for p in partitions)
        built.append(pipeline)
        return pipeline

    yield make
    for pipeline in built:
        pipeline.close()


def traffic(pipeline: Pipeline) -> list[Any]:
    """Visits, signups and purchases of twelve users, each keyed by its user id in its partition."""
    topics = pipeline.names.events
    out = []
    for i in range(12):
        user = f"u{i}"
        steps = ["visit", "signup", "purchase"][: 1 + i % 3]
        for n, step in enumerate(steps):
            body: dict[str, Any] = {"event_id": f"00000000-0000-4000-8000-{i:06d}{n:06d}", "event_type": step,
                                    "user_id": user, "ts": int(NOW_S * 1000) - 3_600_000 + n * 60_000 + i,
                                    "channel": "ads"}
            if step == "purchase":
                body.update(amount="19.90", currency="EUR", order_id=f"o{i}")
            key = user.encode()
            out.append(message(topics[step], home(key), len(out), key, orjson.dumps(body)))
    return out


def rows(pipeline: Pipeline) -> dict[str, list[tuple[Any, ...]]]:
    client: RecordingClient = pipeline.journey_sink.client  # type: ignore[assignment]
    return {table: sorted(found, key=repr) for table, found in client.rows.items()}


def test_keyed_events_skip_normalized_and_give_the_same_rows(make_pipeline: Any) -> None:
    direct, hop = make_pipeline(direct=True), make_pipeline(direct=False)

    stream = Stream()
    held = stream.current_event
    asyncio.run(handled(direct._ingest_batch(stream, envelopes(traffic(direct)))))  # type: ignore[arg-type]
    assert direct.normalized.sent == []  # type: ignore[attr-defined]
    assert stream.current_event is held  # the take buffer's, untouched
    assert direct.journeys.routed == {key: home(key) for key in direct.journeys}  # type: ignore[attr-defined]

    async def through_normalized() -> None:
        await handled(hop._ingest_batch(Stream(), envelopes(traffic(hop))))  # type: ignore[arg-type]
        sent = hop.normalized.sent  # type: ignore[attr-defined]
        assert len(sent) == len(traffic(hop))
        batch = [message(hop.names.normalized, home(key), offset, key, value)
                 for offset, (key, value) in enumerate(sent)]
        await handled(hop._journey_batch(Stream(), envelopes(batch)))  # type: ignore[arg-type]

    asyncio.run(through_normalized())
    assert rows(direct) == rows(hop)
    assert {"events", "stage_entries", "transitions", "stage_counts"} <= set(rows(direct))
    assert len(rows(direct)["events"]) == len(traffic(direct))
    assert dict(direct.journeys) == dict(hop.journeys)
    assert direct.processed == hop.processed == len(traffic(direct))


def test_events_keyed_otherwise_or_elsewhere_take_normalized(make_pipeline: Any) -> None:
    pipeline = make_pipeline(direct=True)
    visit = pipeline.names.events["visit"]
    # A user whose partition (not u0's) is left out of the direct ones.
    elsewhere = next(i for i in range(3, 99) if home(f"u{i}".encode()) != home(b"u0"))
    pipeline._direct = pipeline._direct - {TP(visit, home(f"u{elsewhere}".encode()))}
    body = {"event_type": "visit", "ts": int(NOW_S * 1000) - 60_000, "channel": "seo"}

    def visit_of(i: int, key: bytes | None, partition: int) -> Any:
        value = orjson.dumps({**body, "event_id": f"00000000-0000-4000-8000-{i:012d}", "user_id": f"u{i}"})
        return message(visit, partition, i, key, value)

    batch = [
        visit_of(0, b"u0", home(b"u0")),  # keyed by its user, in its partition: direct
        visit_of(1, None, home(b"u1")),  # no key
        visit_of(2, b"session-2", home(b"u2")),  # keyed by something else
        visit_of(elsewhere, f"u{elsewhere}".encode(), home(f"u{elsewhere}".encode())),  # not direct here
        visit_of(99, b"u99", (home(b"u99") + 1) % PARTITIONS),  # keyed by its user, another partition
    ]
    asyncio.run(handled(pipeline._ingest_batch(Stream(), envelopes(batch))))  # type: ignore[arg-type]
    assert sorted(key for key, _ in pipeline.normalized.sent) == sorted([  # type: ignore[attr-defined]
        b"u1", b"u2", f"u{elsewhere}".encode(), b"u99"])  # envelope by envelope
    assert list(pipeline.journeys) == [b"u0"]
    assert [row[0] for row in rows(pipeline)["events"]] == ["00000000-0000-4000-8000-000000000000"]


def fake_worker(*, direct: bool = True, counts: dict[str, int] | None = None,
                assigned: set[TP] | None = None, actives: set[TP] | None = None) -> Any:
    names = SimpleNamespace(normalized="t.normalized", events={"visit": "t.visit", "signup": "t.signup"})
    counts = counts or {"t.normalized": 4, "t.visit": 4, "t.signup": 4}
    consumer = SimpleNamespace(topic_partitions=counts.get, assignment=lambda: assigned or set())
    changelog = SimpleNamespace(get_topic_name=lambda: "t.journeys-changelog")
    assignor = SimpleNamespace(assigned_actives=lambda: actives or set())
    worker = SimpleNamespace(
        settings=SimpleNamespace(direct_journeys=direct), names=names, _partitions=partitions,
        journeys=SimpleNamespace(changelog_topic=changelog),
        app=SimpleNamespace(consumer=consumer, assignor=assignor),
    )
    worker._active_table_partitions = lambda: Pipeline._active_table_partitions(worker)
    return worker


def test_direct_partitions_are_the_copartitioned_ones_whose_table_partition_is_here() -> None:
    assigned = {TP(t, p) for t in ("t.visit", "t.signup", "t.normalized") for p in (0, 1)}
    actives = assigned | {TP("t.journeys-changelog", 0)}  # partition 1 of the table is not active here
    worker = fake_worker(assigned=assigned, actives=actives)
    assert Pipeline._direct_partitions(worker) == {TP("t.visit", 0), TP("t.signup", 0)}
    # A source topic with another partition count is not co-partitioned with the table.
    worker = fake_worker(assigned=assigned, actives=actives,
                         counts={"t.normalized": 4, "t.visit": 4, "t.signup": 8})
    assert Pipeline._direct_partitions(worker) == {TP("t.visit", 0)}
    # `normalized` not as configured, or the setting off: everything takes the topic.
    worker = fake_worker(assigned=assigned, actives=actives, counts={"t.normalized": 2, "t.visit": 4})
    assert Pipeline._direct_partitions(worker) == frozenset()
    worker = fake_worker(direct=False, assigned=assigned, actives=actives)
    assert Pipeline._direct_partitions(worker) == frozenset()


class Batch:
    """aiokafka's BatchBuilder, full after ``room`` records."""

    def __init__(self, room: int) -> None:
        self.room, self.records = room, []  # type: ignore[var-annotated]

    def append(self, *, timestamp: Any, key: bytes | None, value: bytes | None) -> Any:
        if len(self.records) == self.room:
            return None
        self.records.append((key, value))
        return object()


class Kafka:
    """The Kafka producer under Faust's: batches sent, offsets handed out per partition."""

    def __init__(self, room: int) -> None:
        self.room, self.sent = room, []  # type: ignore[var-annotated]
        self.ends: dict[int, int] = defaultdict(int)

    def create_batch(self) -> Batch:
        return Batch(self.room)

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        done = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=self.ends[partition]))
        self.ends[partition] += len(batch.records)
        return done


@pytest.fixture
def journeys(tmp_path: Path) -> Iterator[Any]:
    settings = Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path, topic_prefix="t.")
    pipeline = Pipeline(settings, load_funnels(None), clickhouse=RecordingClient(),  # type: ignore[arg-type]
                        database="funnel", registry=CollectorRegistry())
    yield pipeline.journeys
    pipeline.close()


def test_changelog_records_are_faust_s_bytes_produced_in_batches_per_partition(
        journeys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = Kafka(room=2)
    monkeypatch.setattr(journeys.app.producer, "_ensure_producer", lambda: kafka)
    persisted: dict[TP, int] = {}
    monkeypatch.setattr(journeys.data, "set_persisted_offset", persisted.__setitem__)
    writes = [(1, b"u1", {"f": {"s": [1]}}), (2, b"u2", {"f": {}}), (1, b"u3", {}), (1, b"u4", {"x": 1})]
    partition_of = {key: partition for partition, key, _ in writes}
    monkeypatch.setattr(journeys, "partition_for_key", partition_of.__getitem__)  # the current event's
    for _, key, value in writes:
        journeys.on_key_set(key, value)  # what `journeys[key] = value` calls
    records = journeys.take_changelog()
    assert journeys.take_changelog() == []  # taken once
    topic = journeys.changelog_topic

    async def faust_would_send() -> list[Any]:  # a FutureMessage needs a running loop
        return [topic.as_future_message(key=key, value=value, partition=partition,
                                        key_serializer=journeys.key_serializer,
                                        value_serializer=journeys.value_serializer).message
                for partition, key, value in writes]

    expected = asyncio.run(faust_would_send())
    assert records == [(m.partition, m.key, m.value) for m in expected]

    async def produce() -> None:
        await asyncio.gather(*await journeys.produce_changelog(records))

    asyncio.run(produce())
    name = topic.get_topic_name()
    assert [(t, p, [key for key, _ in batch]) for t, p, batch in kafka.sent] == [
        (name, 1, [b"u1", b"u3"]), (name, 1, [b"u4"]), (name, 2, [b"u2"])]
    # Each partition's persisted offset: the first offset of its last batch.
    assert persisted == {TP(name, 1): 2, TP(name, 2): 0}


def test_the_agents_queues_hold_a_few_envelopes(make_pipeline: Any) -> None:
    """Faust's default queue (4 096 messages) would be millions of records as envelopes."""
    pipeline = make_pipeline(direct=True)
    for agent in pipeline.app.agents.values():
        assert agent.channel.clone().queue.maxsize == app_module.ENVELOPE_QUEUE == 64


def test_a_stall_is_told_once_with_where_each_partition_stands(
        make_pipeline: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = make_pipeline(direct=True)
    visit = TP(pipeline.names.events["visit"], 0)
    monkeypatch.setattr(app_module, "STALL_WARN_SECONDS", 0.0)
    monkeypatch.setattr(pipeline.app.consumer, "assignment", lambda: {visit})
    pipeline._watch_stall(0, 5)  # nothing processed, 5 behind: the stall starts
    pipeline._watch_stall(0, 5)
    pipeline._watch_stall(0, 5)
    told = [r.getMessage() for r in caplog.records if "nothing processed" in r.getMessage()]
    assert len(told) == 1 and "t.visit[0]" in told[0] and "5 messages behind" in told[0]
    pipeline._watch_stall(10, 5)  # it moves again: a later stall is told again
    pipeline._watch_stall(0, 5)
    pipeline._watch_stall(0, 5)
    pipeline._watch_stall(0, 0)  # no lag: nothing to say
    assert len([r for r in caplog.records if "nothing processed" in r.getMessage()]) == 2


def test_put_writes_what_a_table_assignment_writes(journeys: Any) -> None:
    """JourneyTable.put (the agents' write) against Faust's ``table[key] = value``, same event."""
    assert journeys.routes_by_event is False  # Faust's memory store: one dict for every partition
    writes = [(1, b"u1", {"f": {"s": [1]}}), (2, b"u2", {"f": {}}), (1, b"u3", {})]
    events = {partition: Event(SimpleNamespace(topic="t.normalized", partition=partition), [])
              for partition, _, _ in writes}
    for partition, key, value in writes:
        route_table_to(events[partition])
        journeys[key] = value
    assigned = (journeys.take_changelog(), dict(journeys.data.items()))
    journeys.data.clear()
    for partition, key, value in writes:
        journeys.put(key, value, events[partition])
    assert (journeys.take_changelog(), dict(journeys.data.items())) == assigned
    assert [partition for partition, _, _ in assigned[0]] == [1, 2, 1]
