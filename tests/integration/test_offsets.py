"""End offsets on the embedded broker: its ListOffsets counts batches, read_end_offsets does not."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.faust_adapt.endoffsets import end_offsets
from streams.tools.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_end_offsets_count_records_not_batches(broker: EmbeddedBroker) -> None:
    bootstrap = broker.url.removeprefix("kafka://")
    topic = f"offsets-{uuid.uuid4().hex[:8]}"

    async def run() -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 3, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
        await producer.start()
        try:
            for partition, batches in ((0, [10, 7]), (1, [1])):
                for size in batches:  # each group of sends leaves as one batch
                    futures = [await producer.send(topic, b"x", partition=partition) for _ in range(size)]
                    await asyncio.gather(*futures)
        finally:
            await producer.stop()
        tps = [TopicPartition(topic, p) for p in range(3)]
        return await end_offsets(bootstrap, tps)

    ends = asyncio.run(run())
    assert ends == {TopicPartition(topic, 0): 17, TopicPartition(topic, 1): 1, TopicPartition(topic, 2): 0}


def test_a_record_the_broker_acknowledged_but_never_stored_is_not_an_end(tmp_path: Path) -> None:
    """The embedded broker acknowledges a record for a topic it lost and stores it nowhere.

    A producer whose metadata is from before a restart sends to the topic's
    partition; once the topic is created again, ListOffsets reports an end
    of 1 there while fetches find it empty. Table recovery waited for ever
    for such a changelog record.
    """
    topic = f"lost-{uuid.uuid4().hex[:8]}"
    first = EmbeddedBroker(log_file=tmp_path / "broker.log").start()
    second: EmbeddedBroker | None = None
    bootstrap = first.url.removeprefix("kafka://")

    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 2, 1)])
        finally:
            await admin.close()

    async def run() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        nonlocal second
        await create()
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before", partition=1)
            first.stop()
            second = EmbeddedBroker(port=first.port, log_file=tmp_path / "broker.log").start()
            await producer.send_and_wait(topic, b"into nowhere", partition=1)
        finally:
            await producer.stop()
        await create()
        tps = [TopicPartition(topic, p) for p in range(2)]
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        await consumer.start()
        try:
            reported = {tp: int(offset) for tp, offset in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()
        return reported, await end_offsets(bootstrap, tps)

    try:
        reported, ends = asyncio.run(run())
    finally:
        first.stop()
        if second is not None:
            second.stop()
    tp = TopicPartition(topic, 1)
    assert reported[tp] == 1  # the broker's quirk: if this fails, it was fixed upstream
    assert ends == {TopicPartition(topic, 0): 0, tp: 0}
