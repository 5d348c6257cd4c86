"""Stand-ins shared by the streams tests: a ClickHouse client, aiokafka's producer, fetched records."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from aiokafka.partitioner import DefaultPartitioner
from faust.types import TP

PARTITIONS = 4
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
