"""The journeys table: a lost changelog is written again from memory; a user is read once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from prometheus_client import CollectorRegistry

from streams.pipeline import Pipeline
from streams.settings import Settings, load_funnels
from tests.unit.streams.agents.test_direct import Kafka, RecordingClient, partitioner, partitions


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    settings = Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path, topic_prefix="t.")
    pipeline = Pipeline(settings, load_funnels(None), clickhouse=RecordingClient(),  # type: ignore[arg-type]
                        database="funnel", registry=CollectorRegistry())
    yield pipeline
    pipeline.close()


def _held(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, active: set[int]) -> dict[bytes, Any]:
    """Ten users' journeys in the table; the table partitions ``active`` here."""
    held = {f"u{n}".encode(): {"f": {"st": {"visit": [n, f"e{n}"]}}} for n in range(10)}
    monkeypatch.setattr(pipeline.journeys, "items", held.items)
    monkeypatch.setattr(pipeline, "_active_table_partitions", lambda: active)
    pipeline._changelog_lost = True
    return held


def test_every_journey_of_an_active_partition_is_written_again(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    held = _held(pipeline, monkeypatch, active={0, 2})
    kafka = Kafka(room=100)
    monkeypatch.setattr(pipeline.app.producer, "_ensure_producer", lambda: kafka)
    monkeypatch.setattr(pipeline.journeys.data, "set_persisted_offset", lambda tp, offset: None)
    asyncio.run(pipeline._rewrite_changelog())
    name = pipeline.journeys.changelog_topic.get_topic_name()
    written = {key: (topic, partition, orjson.loads(value or b""))
               for topic, partition, batch in kafka.sent for key, value in batch}
    # Users of a standby's partitions are left to their active worker.
    expected = {key: (name, partitioner(key, partitions, partitions), state) for key, state in held.items()
                if partitioner(key, partitions, partitions) in {0, 2}}
    assert expected and len(expected) < len(held)
    assert written == expected
    assert not pipeline._changelog_lost
    assert pipeline.journeys.take_changelog() == []


def test_a_refused_rewrite_is_tried_again_at_the_next_check(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    _held(pipeline, monkeypatch, active={0, 1, 2, 3})

    class Refusing(Kafka):
        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            raise KafkaConnectionError("the broker is away")

    monkeypatch.setattr(pipeline.app.producer, "_ensure_producer", lambda: Refusing(room=100))
    asyncio.run(pipeline._rewrite_changelog())
    assert pipeline._changelog_lost
    assert pipeline.journeys.take_changelog() == []  # nothing left behind for an agent to take


def test_get_reads_the_store_once(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's ``get`` asks the store for the key, then reads it: two RocksDB reads."""
    table = pipeline.journeys
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
