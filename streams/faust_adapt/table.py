"""The journeys table and batched produce: Faust's table and producer, with fewer layers per record.

Adaptations of faust-streaming 0.15.3 internals (pinned in pyproject.toml):

* :class:`JourneyTable` overrides ``Table.get``, ``Table.send_changelog`` and
  adds ``put`` (for ``ManagedUserDict.__setitem__`` / ``Table.on_key_set``),
  and reads ``Table._sensor_on_set`` and ``Store.set_persisted_offset``: the
  changelog records are kept and produced by the agent that wrote them, in
  batches it awaits before acknowledging, instead of Faust's fire-and-forget
  producer buffer.
* :func:`produce_batches` takes aiokafka's producer from Faust's
  ``Producer._ensure_producer()`` and uses aiokafka's public batch API.
* :func:`route_table_to` sets ``faust.streams._current_event``, the context
  variable Faust's tables read the partition from.

If Faust changes any of these, tests/unit/streams/faust_adapt/test_table.py
(which compares the changelog bytes and table writes with Faust's own) fails.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

import faust
import faust.stores.memory
from faust.streams import _current_event
from faust.types import TP, AppT, EventT
from faust.utils import json as faust_json

__all__ = ["ChangelogRecord", "JourneyTable", "changelog_value", "produce_batches", "route_table_to"]

#: A changelog record: (partition, serialized key, serialized value).
ChangelogRecord = tuple[int, bytes | None, bytes | None]


_dumps = cast(Callable[[Any], bytes], faust_json.dumps)


def changelog_value(value: Any) -> bytes:
    """A journey as its changelog record's value: what Faust's "json" codec gives.

    faust-streaming 0.15.3's json codec returns ``faust.utils.json.dumps``:
    orjson's bytes when orjson is installed (JourneyTable checks it is).
    """
    return _dumps(value)


class _Kept:
    """What Faust's table reads back from ``send_changelog``: ``.message.partition``."""

    __slots__ = ("message", "partition")

    def __init__(self, partition: int) -> None:
        self.message, self.partition = self, partition


class JourneyTable(faust.Table):
    """A Faust table whose changelog records are produced in batches and awaited.

    ``table[key] = value`` makes Faust send one changelog record through its
    producer buffer (a future message, a queue, a task, its producer's
    per-message send) and forget it; its own flush gives up after 0.1 s.
    Here the record is only serialized (as Faust would) and kept. The agent
    that wrote takes its records with :meth:`take_changelog`, produces them
    with :meth:`produce_changelog` (one batch per partition, straight to the
    Kafka producer) and awaits them before it acknowledges its batch, so a
    restart never recovers journeys without changes whose offsets are
    committed. The records, their topic, partitions and bytes are Faust's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[ChangelogRecord] = []
        self._kept: dict[int, _Kept] = {}
        # Held while one caller's records are handed to the producer (see produce_changelog).
        self._producing = asyncio.Lock()
        # Raw keys and JSON values, JSON by orjson: records are made without
        # Faust's codec layers (send_changelog).
        self._plain_codecs = (self.key_serializer == "raw" and self.value_serializer == "json"
                              and getattr(faust_json, "orjson", None) is not None)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` (or ``default``), read from the store once.

        Faust's ``get`` (``Mapping.get``) asks the store whether it holds the
        key and then reads it again: two RocksDB reads per user per batch,
        and four Python frames and a second exception for a new user.
        """
        self.on_key_get(key)
        try:
            return self.data[key]
        except KeyError:
            return default

    @functools.cached_property
    def routes_by_event(self) -> bool:
        """Whether the store reads and writes the partition of the "current event" (RocksDB).

        Faust's memory store is one dict for every partition: reading or
        writing it needs no routing (see :func:`route_table_to`).
        """
        return not isinstance(self.data, faust.stores.memory.Store)

    def put(self, key: bytes, value: Any, event: EventT) -> None:
        """``table[key] = value`` as an agent handling ``event`` would do it, with fewer layers.

        Faust's ``__setitem__`` (faust-streaming 0.15.3: ``ManagedUserDict``,
        ``Table.on_key_set``) takes the changelog partition from the current
        event, checks the source topic's partitions, sets a TTL for windowed
        tables and tells the sensors; about 2 us per changed user. Here the
        partition is ``event``'s, the table is not windowed, and the sensors
        still hear of the write. The caller routes the table to ``event``
        first where :attr:`routes_by_event` says the store needs it.
        """
        self.data[key] = value
        self.send_changelog(event.message.partition, key, value)
        self._sensor_on_set(self, key, value)

    def send_changelog(self, partition: int | None, key: Any, value: Any,
                       key_serializer: Any = None, value_serializer: Any = None) -> Any:
        if partition is None:  # not routed by an event: Faust's own way
            return super().send_changelog(partition, key, value, key_serializer, value_serializer)
        if (type(key) is bytes and key_serializer is None and value_serializer is None
                and self._plain_codecs):
            # What Faust's codecs give for a bytes key under "raw" and a value
            # under "json" (faust-streaming 0.15.3's json codec returns
            # faust.utils.json.dumps, orjson's bytes when orjson is installed),
            # without their four layers per record: about 3 us per changed
            # user (tests/unit/streams/faust_adapt/test_table.py compares the bytes with Faust's).
            self._unsent.append((partition, key, _dumps(value)))
        else:
            topic = cast(faust.Topic, self.changelog_topic)  # Faust's types name the channel's API only
            headers = topic.prepare_headers(None)
            key_bytes, headers = topic.prepare_key(key, key_serializer or self.key_serializer, None, headers)
            value_bytes, _ = topic.prepare_value(value, value_serializer or self.value_serializer, None,
                                                 headers)
            self._unsent.append((partition, key_bytes, value_bytes))
        kept = self._kept.get(partition)
        if kept is None:
            kept = self._kept[partition] = _Kept(partition)
        return kept

    def active_partitions(self) -> set[int]:
        """The table's partitions this worker is the active one for (not a standby)."""
        changelog = self.changelog_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == changelog}

    def take_changelog(self) -> list[ChangelogRecord]:
        """The changelog records written since the last call, for the caller to produce.

        Two agents write the table (journey, and ingest for events keyed by
        user): each takes its records right after its writes, with no await
        in between, so each produces and awaits exactly its own.
        """
        taken, self._unsent = self._unsent, []
        return taken

    async def produce_changelog(self, records: Sequence[ChangelogRecord]) -> list[asyncio.Future[Any]]:
        """Hand ``records`` to the Kafka producer, one batch per partition; the batches' futures.

        Callers hand their records over one after the other, in the order
        they took them: a record is a key's whole value, and the last one in
        its partition is what a restart recovers. Two agents write the table
        (journey, and ingest on the direct path), and the producer may make
        a send wait (a partition's previous batch still in flight); without
        the lock, the agent that wrote a key second could get its record in
        ahead of the first one's, and a restart would recover the older
        value while the rows of the newer one are in ClickHouse (the crash
        test lost transitions that way). The lock is taken before the first
        await, so the order is that of :meth:`take_changelog`; it is held
        only while the batches are appended, not while they are delivered.

        Each delivered batch records its partition's persisted offset, as
        Faust's per-record callback does (the RocksDB store starts its
        recovery there); the batch's first offset, so a restart may read a
        few records again, never skip one.
        """
        topic = self.changelog_topic.get_topic_name()
        async with self._producing:
            return await produce_batches(self.app, topic, records,
                                         lambda future, partition: self._sent(future, TP(topic, partition)))

    def _sent(self, future: asyncio.Future[Any], tp: TP) -> asyncio.Future[Any]:
        def persisted(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.data.set_persisted_offset(tp, done.result().offset)

        future.add_done_callback(persisted)
        return future


async def produce_batches(
    app: AppT, topic: str, records: Sequence[ChangelogRecord],
    sent: Callable[[asyncio.Future[Any], int], asyncio.Future[Any]] | None = None,
) -> list[asyncio.Future[Any]]:
    """Hand (partition, key, value) ``records`` to ``app``'s Kafka producer, one batch per partition.

    Returns the batches' futures (each passed through ``sent`` with its
    partition first, if given); await them before acknowledging what caused
    the records. Faust's ``Topic.send`` costs a future message, its
    producer buffer, a task and aiokafka's per-message ``send`` for each
    record; here aiokafka takes whole batches (``create_batch`` /
    ``send_batch``, its public batch API) on Faust's own producer.
    """
    if not records:
        return []
    by_partition: dict[int, list[ChangelogRecord]] = {}
    for record in records:
        by_partition.setdefault(record[0], []).append(record)
    kafka = cast(Any, app.producer)._ensure_producer()
    futures: list[asyncio.Future[Any]] = []
    for partition, part in by_partition.items():
        batch = kafka.create_batch()
        for _, key, value in part:
            if batch.append(timestamp=None, key=key, value=value) is None:  # full: send it
                future = await kafka.send_batch(batch, topic, partition=partition)
                futures.append(sent(future, partition) if sent else future)
                batch = kafka.create_batch()
                if batch.append(timestamp=None, key=key, value=value) is None:
                    raise ValueError(f"a record of {len(value or b'')} bytes exceeds a producer batch")
        future = await kafka.send_batch(batch, topic, partition=partition)
        futures.append(sent(future, partition) if sent else future)
    return futures


def route_table_to(event: EventT) -> None:
    """Make Faust's tables read and write ``event``'s partition, in this task.

    Faust's tables take the partition (of the store, of the changelog
    record) from the task's "current event". ``Stream._set_current_event``
    would also set the stream's shared ``current_event``, and the stream's
    take buffer, when it waits for the agent to finish a batch, buffers the
    stream's ``current_event`` once it may go on: set by an agent in
    between, that is one of the agent's events instead of the new one (one
    event lost, one done twice). So only the task's variable is set.
    """
    _current_event.set(weakref.ref(event))

