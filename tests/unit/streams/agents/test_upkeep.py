"""streams.agents.upkeep: a lost changelog is written again from memory; a stall is told once."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from faust.types import TP

from streams.agents import upkeep as upkeep_module
from streams.pipeline import Pipeline
from tests.unit.streams.fakes import Kafka, partitioner, partitions


def _held(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, active: set[int]) -> dict[bytes, Any]:
    """Ten users' journeys in the table; the table partitions ``active`` here."""
    held = {f"u{n}".encode(): {"f": {"st": {"visit": [n, f"e{n}"]}}} for n in range(10)}
    monkeypatch.setattr(pipeline.journeys, "items", held.items)
    monkeypatch.setattr(pipeline.journeys, "active_partitions", lambda: active)
    pipeline.upkeep._changelog_lost = True
    return held


def test_every_journey_of_an_active_partition_is_written_again(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    held = _held(pipeline, monkeypatch, active={0, 2})
    kafka = Kafka(room=100)
    monkeypatch.setattr(pipeline.app.producer, "_ensure_producer", lambda: kafka)
    monkeypatch.setattr(pipeline.journeys.data, "set_persisted_offset", lambda tp, offset: None)
    asyncio.run(pipeline.upkeep._rewrite_changelog())
    name = pipeline.journeys.changelog_topic.get_topic_name()
    written = {key: (topic, partition, orjson.loads(value or b""))
               for topic, partition, batch in kafka.sent for key, value in batch}
    # Users of a standby's partitions are left to their active worker.
    expected = {key: (name, partitioner(key, partitions, partitions), state) for key, state in held.items()
                if partitioner(key, partitions, partitions) in {0, 2}}
    assert expected and len(expected) < len(held)
    assert written == expected
    assert not pipeline.upkeep._changelog_lost
    assert pipeline.journeys.take_changelog() == []


def test_a_refused_rewrite_is_tried_again_at_the_next_check(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    _held(pipeline, monkeypatch, active={0, 1, 2, 3})

    class Refusing(Kafka):
        async def send_batch(self, batch: Any, topic: str, *, partition: int) -> Any:
            raise KafkaConnectionError("the broker is away")

    monkeypatch.setattr(pipeline.app.producer, "_ensure_producer", lambda: Refusing(room=100))
    asyncio.run(pipeline.upkeep._rewrite_changelog())
    assert pipeline.upkeep._changelog_lost
    assert pipeline.journeys.take_changelog() == []  # nothing left behind for an agent to take


def test_a_stall_is_told_once_with_where_each_partition_stands(
        pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    visit = TP(pipeline.names.events["visit"], 0)
    monkeypatch.setattr(upkeep_module, "STALL_WARN_SECONDS", 0.0)
    monkeypatch.setattr(pipeline.app.consumer, "assignment", lambda: {visit})
    pipeline.upkeep._watch_stall(0, 5)  # nothing processed, 5 behind: the stall starts
    pipeline.upkeep._watch_stall(0, 5)
    pipeline.upkeep._watch_stall(0, 5)
    told = [r.getMessage() for r in caplog.records if "nothing processed" in r.getMessage()]
    assert len(told) == 1 and "t.visit[0]" in told[0] and "5 messages behind" in told[0]
    pipeline.upkeep._watch_stall(10, 5)  # it moves again: a later stall is told again
    pipeline.upkeep._watch_stall(0, 5)
    pipeline.upkeep._watch_stall(0, 5)
    pipeline.upkeep._watch_stall(0, 0)  # no lag: nothing to say
    assert len([r for r in caplog.records if "nothing processed" in r.getMessage()]) == 2
