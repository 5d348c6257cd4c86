"""Stage ``ceiling``: raw aiokafka consume + ``json.loads``, what the broker and the client allow."""

from __future__ import annotations

import asyncio
import json
import time

from streams.bench.context import Context
from streams.bench.kafka import event_topics
from streams.bench.measure import rate
from streams.bench.report import Progress


async def consume_ceiling(bootstrap: str, prefix: str, expected: int, progress: Progress,
                          timeout: float = 300.0) -> tuple[int, float]:
    """Raw aiokafka consume + ``json.loads`` of every message; (messages, seconds)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*event_topics(prefix).values(), bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    count = 0
    first = None
    deadline = time.monotonic() + timeout
    try:
        while count < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                if first is None:
                    first = time.perf_counter()
                for record in records:
                    json.loads(record.value)
                count += len(records)
            progress(f"ceiling: {count}/{expected} messages")
        seconds = time.perf_counter() - (first or time.perf_counter())
    finally:
        await consumer.stop()
    return count, seconds


def stage_ceiling(ctx: Context) -> None:
    count, seconds = asyncio.run(consume_ceiling(ctx.bootstrap, ctx.prefix, ctx.sent, ctx.progress))
    ctx.progress.done(f"ceiling: {count} messages in {seconds:.2f}s")
    ctx.report.add("ceiling_events_per_s", rate(count, seconds), "events/s")
    ctx.report.details["ceiling"] = {"messages": count, "seconds": seconds}
