"""End offsets that hold on the embedded broker too, and a Faust app that uses them.

The embedded broker (Tansu 0.6) answers ListOffsets(latest) with the base
offset of the partition's last record *batch* plus one, not the offset after
its last record: ten records produced in one batch report an end of 1. Kafka
answers correctly. Fetch responses carry the right high watermark on both, so
the end is found by reading from the reported end minus one (the last batch's
first record): at most one batch per partition.

Faust's table recovery reads each changelog partition up to ``end_offsets()``;
with the embedded broker it stopped inside the last batch and a restarted
worker lost the journeys of the users written there. :class:`FunnelApp`
gives Faust the corrected ends, and the cheaper per-message consumer of
:mod:`streams.consumer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.consumer import EagerConsumer

__all__ = ["FunnelApp", "end_offsets", "read_end_offsets"]


async def read_end_offsets(consumer: AIOKafkaConsumer, tps: Iterable[Any]) -> dict[Any, int]:
    """The next offset of every partition in ``tps``, read with ``consumer``.

    ``consumer`` must be started, in no group; it is assigned ``tps`` and left
    positioned somewhere in their last batches.
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
    while open_tps:
        batch = await consumer.getmany(*open_tps, timeout_ms=500)
        if not batch:
            break
        for tp, records in batch.items():
            high = consumer.highwater(tp)
            ends[tp] = max(ends[tp], records[-1].offset + 1, high or 0)
            if high is not None:  # the fetch told the true end: done with this one
                open_tps.discard(tp)
    return ends


async def end_offsets(bootstrap_servers: str | list[str], tps: Iterable[Any]) -> dict[Any, int]:
    """The next offset of every partition in ``tps`` (a throwaway consumer, no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        return await read_end_offsets(consumer, tps)
    finally:
        await consumer.stop()


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        if self.consumer.in_transaction:
            return await super()._highwaters(partitions)
        transport = cast(faust_aiokafka.Transport, self.transport)
        servers = faust_aiokafka.server_list(transport.url, transport.default_port)
        ends = await end_offsets(servers, [faust_aiokafka.TopicPartition(tp.topic, tp.partition)
                                           for tp in partitions])
        return {tp: ends[(tp.topic, tp.partition)] for tp in partitions}


class _Consumer(EagerConsumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer


class FunnelApp(faust.App):
    """faust.App on the aiokafka driver with end offsets that hold on every broker."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)
