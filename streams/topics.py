"""Topic names and creation.

Topics are created with the configured partition count *before* the Faust
worker starts, so a table and its changelog always match the partitions of
the stream that feeds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError
from murmurhash2 import murmurhash2

from schemas import EVENT_TYPES
from streams.kafka_security import check_connection, client_options
from streams.settings import Settings, split_brokers

__all__ = ["TopicNames", "ensure_topics", "partition_of"]

log = logging.getLogger(__name__)

#: The seed of Kafka's murmur2 (Java's ``Utils.murmur2``, aiokafka's ``murmur2``).
_MURMUR2_SEED = 0x9747B28C


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` among ``partitions``.

    What aiokafka's ``DefaultPartitioner`` computes (Java's too): murmur2 of
    the key, its sign bit cleared, modulo the count; here in C (the
    ``murmurhash2`` package), 0.2 us where aiokafka's pure-Python murmur2
    takes 3 us, once per event on the ingest path. tests/unit/streams/test_topics.py
    compares the two over random keys.
    """
    return (murmurhash2(key, _MURMUR2_SEED) & 0x7FFFFFFF) % partitions


class TopicNames:
    """Every topic the pipeline reads or writes, derived from the prefix."""

    def __init__(self, settings: Settings) -> None:
        self.events = {t: settings.topic(t) for t in EVENT_TYPES}
        self.dead_letter = settings.topic("dead-letter")
        self.normalized = settings.topic("normalized")
        self.spend = settings.topic("spend")

    @property
    def all(self) -> list[str]:
        return [*self.events.values(), self.spend, self.dead_letter, self.normalized]

    def event_type_of(self) -> dict[str, str]:
        return {topic: event_type for event_type, topic in self.events.items()}


async def ensure_topics(settings: Settings, timeout: float = 60.0, extra: Sequence[str] = ()) -> list[str]:
    """Create missing topics (the pipeline's, plus ``extra``); return the names created.

    Waits up to ``timeout`` seconds for the brokers (they may still be
    starting). Raises RuntimeError if an existing topic has a different
    partition count than configured.
    """
    if not settings.kafka_url:
        raise RuntimeError("FUNNEL_KAFKA_URL is not set")
    await check_connection(settings)
    names = [*TopicNames(settings).all, *extra]
    deadline = asyncio.get_running_loop().time() + timeout
    admin = AIOKafkaAdminClient(bootstrap_servers=split_brokers(settings.kafka_url),
                                **client_options(settings))
    while True:
        try:
            await admin.start()
            break
        except KafkaConnectionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.info("waiting for Kafka at %s", settings.kafka_url)
            await asyncio.sleep(1.0)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(
                    [NewTopic(n, settings.topic_partitions, settings.topic_replication) for n in missing]
                )
            log.info("created topics %s (%d partitions)", ", ".join(missing), settings.topic_partitions)
        present = [n for n in names if n in existing]
        if present:
            for desc in await admin.describe_topics(present):
                count = len(desc["partitions"])
                if count != settings.topic_partitions:
                    raise RuntimeError(
                        f"topic {desc['topic']} has {count} partitions, FUNNEL_TOPIC_PARTITIONS "
                        f"is {settings.topic_partitions}: make them equal (tables are "
                        "co-partitioned with their input)"
                    )
        return missing
    finally:
        await admin.close()
