"""The bench's topics on the embedded broker, and producing a traffic onto them as fast as it goes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from streams.bench.measure import rate
from streams.bench.report import Progress
from streams.bench.traffic import Message

PARTITIONS = 4
#: Consumer session timeout of every group the bench starts: the embedded
#: broker waits half of it before a group's first assignment.
SESSION_TIMEOUT = 6.0


def event_topics(prefix: str) -> dict[str, str]:
    from schemas import EVENT_TYPES

    return {t: f"{prefix}{t}" for t in EVENT_TYPES}


async def create_topics(bootstrap: str, prefix: str) -> None:
    """The pipeline's topics, created as the worker would (same partition count)."""
    from streams.settings import Settings
    from streams.topics import ensure_topics

    await ensure_topics(Settings(kafka_url=bootstrap, topic_prefix=prefix,
                                 topic_partitions=PARTITIONS))


async def produce(bootstrap: str, prefix: str, messages: Sequence[Message], end_ms: int,
                  progress: Progress) -> int:
    """Send every message (and its duplicate copy) as fast as the broker takes them.

    Event times are ``end_ms`` minus the traffic's span plus each offset, so the
    traffic ends now. Returns the number of messages sent.
    """
    from aiokafka import AIOKafkaProducer

    topics = event_topics(prefix)
    base = end_ms - (messages[-1].offset_ms if messages else 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    sent = 0
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    try:
        for m in messages:
            value = m.value(base + m.offset_ms)
            for _ in range(m.copies):
                pending.append(await producer.send(topics[m.event_type], value, key=m.key))
                sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)  # surfaces a failed send
                pending.clear()
                progress(f"produce: {sent}/{len(messages)}+ messages, "
                         f"{rate(sent, time.monotonic() - started):.0f}/s")
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent
