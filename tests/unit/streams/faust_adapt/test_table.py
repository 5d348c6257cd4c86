"""streams.faust_adapt.table: the journeys table's reads and writes, its changelog bytes and batches.

Each adaptation is compared with what Faust itself does for the same call
(faust-streaming 0.15.3): a record's bytes, ``table[key] = value``.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from streams.faust_adapt.table import route_table_to
from tests.unit.streams.fakes import Event, Kafka


@pytest.fixture
def journeys(pipeline: Any) -> Any:
    return pipeline.journeys


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


def test_get_reads_the_store_once(journeys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's ``get`` asks the store for the key, then reads it: two RocksDB reads."""
    table = journeys
    store = table.data
    store[b"u1"] = {"f": {}}
    reads: list[Any] = []
    read = type(store).__getitem__

    def counted(self: Any, key: Any) -> Any:
        reads.append(key)
        return read(self, key)

    def asked(self: Any, key: Any) -> bool:
        raise AssertionError("get asked the store whether it holds the key")

    monkeypatch.setattr(type(store), "__getitem__", counted)
    monkeypatch.setattr(type(store), "__contains__", asked)
    assert table.get(b"u1") == {"f": {}}
    assert table.get(b"u2") is None
    assert table.get(b"u2", {}) == {}
    assert reads == [b"u1", b"u2", b"u2"]


def test_the_active_partitions_are_the_changelog_s_assigned_actives(
        journeys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    changelog = journeys.changelog_topic.get_topic_name()
    actives = {TP(changelog, 0), TP(changelog, 3), TP("t.visit", 1), TP("t.normalized", 2)}
    monkeypatch.setattr(journeys.app.assignor, "assigned_actives", lambda: actives)
    assert journeys.active_partitions() == {0, 3}


class _DrainingKafka(Kafka):
    """A producer whose send to ``slow`` waits, as aiokafka's does while that partition's batch drains."""

    def __init__(self, slow: int) -> None:
        super().__init__(room=100)
        self.slow, self.drained = slow, asyncio.Event()

    async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
        if partition == self.slow:
            await self.drained.wait()
        return await super().send_batch(batch, topic, partition=partition)


def test_two_writers_records_reach_the_producer_in_the_order_they_were_taken(
        journeys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last record of a key in its partition is what a restart recovers: it must be the newest.

    The ingest agent (direct path) takes its records, then its send to
    partition 0 waits; meanwhile the journey agent writes the same user
    again. Its record must still come after the ingest agent's.
    """
    kafka = _DrainingKafka(slow=0)
    monkeypatch.setattr(journeys.app.producer, "_ensure_producer", lambda: kafka)
    monkeypatch.setattr(journeys.data, "set_persisted_offset", lambda tp, offset: None)
    events = {p: Event(SimpleNamespace(topic="t.normalized", partition=p), []) for p in (0, 2)}

    async def two_writers() -> None:
        journeys.put(b"a", {"f": 1}, events[0])
        journeys.put(b"u", {"old": 1}, events[2])
        first = asyncio.ensure_future(journeys.produce_changelog(journeys.take_changelog()))
        await asyncio.sleep(0)  # the first writer now waits on partition 0
        journeys.put(b"u", {"new": 1}, events[2])
        second = asyncio.ensure_future(journeys.produce_changelog(journeys.take_changelog()))
        for _ in range(3):
            await asyncio.sleep(0)
        kafka.drained.set()
        for futures in await asyncio.gather(first, second):
            await asyncio.gather(*futures)

    asyncio.run(two_writers())
    in_partition_2 = [record for _, p, batch in kafka.sent if p == 2 for record in batch]
    assert [value for key, value in in_partition_2 if key == b"u"] == [b'{"old":1}', b'{"new":1}']
