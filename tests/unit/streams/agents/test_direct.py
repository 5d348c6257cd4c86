"""streams.agents.ingest and journeys: events keyed by their user id skip `normalized`, same rows."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.streams import current_event
from faust.types import TP
from prometheus_client import CollectorRegistry

from schemas import FunnelsConfig
from streams.agents.ingest import direct_partitions
from streams.pipeline import Pipeline
from streams.settings import Settings, load_funnels
from tests.unit.streams.fakes import (
    PARTITIONS,
    RecordingClient,
    envelopes,
    handled,
    home,
    message,
    partitions,
)

NOW_S = 1_790_000_000.0
#: id(pipeline) -> the (key, value) records its ingest agent sent to `normalized`
SENT: dict[int, list[tuple[bytes, bytes]]] = {}


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

    def active_partitions(self) -> set[int]:
        return set(partitions)  # a worker that is the active one for every partition

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


@pytest.fixture
def make_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setattr(time, "time", lambda: NOW_S)
    built: list[Pipeline] = []

    def make(*, direct: bool, funnels: FunnelsConfig | None = None) -> Pipeline:
        settings = Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path, topic_partitions=PARTITIONS,
                            topic_prefix="t.", direct_journeys=direct)
        pipeline = Pipeline(settings, funnels or load_funnels(None),
                            clickhouse=RecordingClient(),  # type: ignore[arg-type]
                            database="funnel", registry=CollectorRegistry())
        pipeline.journey.table = Table()  # type: ignore[assignment]
        normalized = Normalized()
        pipeline.ingest.send_normalized = normalized.send  # type: ignore[method-assign]
        SENT[id(pipeline)] = normalized.sent
        if direct:  # what direct_partitions decides for a worker that owns every partition
            pipeline.ingest.direct = frozenset(TP(t, p) for t in pipeline.names.events.values()
                                               for p in partitions)
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
    asyncio.run(handled(direct.ingest.batch(stream, envelopes(traffic(direct)))))  # type: ignore[arg-type]
    assert SENT[id(direct)] == []
    assert stream.current_event is held  # the take buffer's, untouched
    assert direct.journeys.routed == {key: home(key) for key in direct.journeys}  # type: ignore[attr-defined]

    async def through_normalized() -> None:
        await handled(hop.ingest.batch(Stream(), envelopes(traffic(hop))))  # type: ignore[arg-type]
        sent = SENT[id(hop)]
        assert len(sent) == len(traffic(hop))
        batch = [message(hop.names.normalized, home(key), offset, key, value)
                 for offset, (key, value) in enumerate(sent)]
        await handled(hop.journey.batch(Stream(), envelopes(batch)))  # type: ignore[arg-type]

    asyncio.run(through_normalized())
    assert rows(direct) == rows(hop)
    assert {"events", "stage_entries", "transitions", "stage_counts"} <= set(rows(direct))
    assert len(rows(direct)["events"]) == len(traffic(direct))
    assert dict(direct.journeys) == dict(hop.journeys)
    assert direct.journey.processed == hop.journey.processed == len(traffic(direct))


def test_events_keyed_otherwise_or_elsewhere_take_normalized(make_pipeline: Any) -> None:
    pipeline = make_pipeline(direct=True)
    visit = pipeline.names.events["visit"]
    # A user whose partition (not u0's) is left out of the direct ones.
    elsewhere = next(i for i in range(3, 99) if home(f"u{i}".encode()) != home(b"u0"))
    pipeline.ingest.direct = pipeline.ingest.direct - {TP(visit, home(f"u{elsewhere}".encode()))}
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
    asyncio.run(handled(pipeline.ingest.batch(Stream(), envelopes(batch))))  # type: ignore[arg-type]
    assert sorted(key for key, _ in SENT[id(pipeline)]) == sorted([
        b"u1", b"u2", f"u{elsewhere}".encode(), b"u99"])  # envelope by envelope
    assert list(pipeline.journeys) == [b"u0"]
    assert [row[0] for row in rows(pipeline)["events"]] == ["00000000-0000-4000-8000-000000000000"]


def test_direct_partitions_are_the_copartitioned_ones_whose_table_partition_is_here() -> None:
    assigned = {TP(t, p) for t in ("t.visit", "t.signup", "t.normalized") for p in (0, 1)}

    def decide(**counts: int) -> frozenset[TP]:
        found = {"t.normalized": 4, "t.visit": 4, "t.signup": 4}
        found.update({f"t.{topic}": count for topic, count in counts.items()})
        consumer = SimpleNamespace(topic_partitions=found.get, assignment=lambda: assigned)
        # partition 1 of the table is not active here
        return direct_partitions(consumer, "t.normalized", {"t.visit", "t.signup"}, 4, active={0})

    assert decide() == {TP("t.visit", 0), TP("t.signup", 0)}
    # A source topic with another partition count is not co-partitioned with the table.
    assert decide(signup=8) == {TP("t.visit", 0)}
    # `normalized` not as configured: everything takes the topic.
    assert decide(normalized=2) == frozenset()


def test_with_the_setting_off_everything_takes_normalized(make_pipeline: Any) -> None:
    pipeline = make_pipeline(direct=False)
    pipeline.ingest.direct = frozenset({TP("t.visit", 0)})  # left from before
    asyncio.run(pipeline._reschedule())  # a rebalance
    assert pipeline.ingest.direct == frozenset()
