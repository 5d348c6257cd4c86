"""End offsets on the embedded broker: its ListOffsets counts batches, read_end_offsets does not."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.broker import EmbeddedBroker
from streams.offsets import end_offsets

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
