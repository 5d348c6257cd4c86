"""End offsets that hold on the embedded broker too, and the worker's fetch wait.

The embedded broker (Tansu 0.6) answers ListOffsets(latest) with the base
offset of the partition's last record *batch* plus one, not the offset after
its last record: ten records produced in one batch report an end of 1. Kafka
answers correctly. Fetch responses carry the right high watermark on both, so
the end is found by reading from the reported end minus one (the last batch's
first record): at most one batch per partition. The fetch's high watermark
wins over the reported end either way. The embedded broker acknowledges a
record produced to a topic it does not have (a producer whose metadata is
from before a restart) and stores it nowhere; once the topic is created,
ListOffsets reports an end of 1 for a partition its fetches call empty. A
worker that wrote a journey's changelog record that way waited in table
recovery for ever.

Faust's table recovery reads each changelog partition up to ``end_offsets()``;
with the embedded broker it stopped inside the last batch and a restarted
worker lost the journeys of the users written there. :class:`ConsumerThread`
gives Faust the corrected ends.

Adapts faust-streaming 0.15.3 internals (pinned in pyproject.toml):
``AIOKafkaConsumerThread._create_worker_consumer`` (the fetch wait) and
``AIOKafkaConsumerThread._highwaters`` (the ends).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from time import monotonic
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["FETCH_MAX_WAIT_MS", "ConsumerThread", "end_offsets", "read_end_offsets"]

log = logging.getLogger(__name__)

#: How long end offsets wait for a fetch to tell a partition's high watermark.
READ_END_TIMEOUT_SECONDS = 10.0

#: Longest a fetch waits at the broker for records (Faust's own is 1 500 ms; see ConsumerThread).
FETCH_MAX_WAIT_MS = 100


async def read_end_offsets(consumer: AIOKafkaConsumer, tps: Iterable[Any],
                           timeout: float = READ_END_TIMEOUT_SECONDS) -> dict[Any, int]:
    """The next offset of every partition in ``tps``, read with ``consumer``.

    ``consumer`` must be started, in no group; it is assigned ``tps`` and left
    positioned somewhere in their last batches. A partition no fetch answers
    for within ``timeout`` seconds keeps the end the broker reported.
    """
    wanted = list(tps)
    if not wanted:
        return {}
    reported = await consumer.end_offsets(wanted)
    ends = {tp: int(reported[tp]) for tp in wanted}
    consumer.assign(wanted)
    for tp in wanted:
        consumer.seek(tp, max(ends[tp] - 1, 0))
    open_tps = {tp for tp in wanted if ends[tp] > 0}
    deadline = monotonic() + timeout
    while open_tps:
        batch = await consumer.getmany(*open_tps, timeout_ms=500)
        for tp, records in batch.items():
            ends[tp] = max(ends[tp], records[-1].offset + 1)
        told = {tp for tp in open_tps if consumer.highwater(tp) is not None}
        for tp in told:  # the fetch's high watermark is the end, even below the reported one
            ends[tp] = int(cast(int, consumer.highwater(tp)))
        open_tps -= told
        if open_tps and monotonic() > deadline:
            log.warning("no fetch answered for %s within %.0f s: taking the ends the broker reported",
                        ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(open_tps)), timeout)
            break
    return ends


async def end_offsets(bootstrap_servers: str | list[str], tps: Iterable[Any],
                      **options: Any) -> dict[Any, int]:
    """The next offset of every partition in ``tps`` (a throwaway consumer, no group).

    ``options``: more keyword arguments of the consumer (TLS and SASL).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                enable_auto_commit=False, **options)
    await consumer.start()
    try:
        return await read_end_offsets(consumer, tps)
    finally:
        await consumer.stop()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        # Faust 0.15.3 builds the worker's aiokafka consumer with
        # fetch_max_wait_ms=1500 and no setting for it. The embedded broker
        # holds a fetch for most of that wait even when records are there
        # (measured: a record produced every 10 ms is received after p50
        # 0.39 s / p99 0.75 s with 1 500 ms, 0.026 / 0.051 s with 100 ms):
        # that was most of the worker's freshness. aiokafka reads the value
        # when it starts its fetcher, after this.
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        transport = cast(faust_aiokafka.Transport, self.transport)
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        conf = transport.app.conf  # the worker's own TLS and SASL, as Faust's clients get them
        auth = faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
        ends = await end_offsets(servers, [faust_aiokafka.TopicPartition(tp.topic, tp.partition)
                                           for tp in partitions], **auth)
        return {tp: ends[(tp.topic, tp.partition)] for tp in partitions}
