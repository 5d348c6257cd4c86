"""streams.faust_adapt.recovery: table recovery takes a fetched batch of changelog records at once.

The same records are replayed through Faust's own ``Recovery._slurp_changelogs``
(faust-streaming 0.15.3) and through ``BatchRecovery.take_fetched``: the table,
the offsets and the end of recovery must be the same, and equal to the last
value per key (a record without value deletes its key).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from faust.tables.recovery import Recovery
from faust.types import TP

from streams.faust_adapt import offsets
from streams.faust_adapt.recovery import BatchRecovery
from streams.faust_adapt.table import changelog_value
from streams.pipeline import Pipeline

#: (key, value or None for a delete) in offset order, from offset 0, over two partitions' worth of keys.
CHANGES: list[tuple[bytes, Any]] = [
    (b"u1", {"stage": "visit", "n": 1}),
    (b"u2", {"stage": "visit", "n": 1}),
    (b"u1", {"stage": "signup", "n": 2}),
    (b"u3", {"stage": "visit", "n": 1}),
    (b"u2", None),  # deleted
    (b"u4", {"stage": "visit", "n": 1}),
    (b"u3", None),
    (b"u3", {"stage": "visit", "n": 5}),  # deleted, then set again
    (b"u5", {"stage": "visit", "n": 1}),
    (b"u1", {"stage": "purchase", "n": 3}),
    (b"u6", {"stage": "visit", "n": 1}),
]


def expected_table(changes: list[tuple[bytes, Any]]) -> dict[bytes, Any]:
    table: dict[bytes, Any] = {}
    for key, value in changes:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def records(tp: TP, changes: list[tuple[bytes, Any]], first: int = 0) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(tp.topic, tp.partition, first + i, 1_700_000_000_000, 0, key,
                           None if value is None else changelog_value(value), None, len(key), 0, [])
            for i, (key, value) in enumerate(changes)]


@pytest.fixture
def app(pipeline: Pipeline) -> Iterator[Any]:
    """The pipeline's app as recovery finds it: the changelog channel registered, flow on."""
    app = pipeline.app
    table = pipeline.journeys
    tables = app.tables
    tables._channels[table] = table.changelog_topic.clone_using_queue(tables.changelog_queue)
    app.flow_control.resume()
    yield app


def changelog_tp(app: Any, partition: int = 0) -> TP:
    return TP(next(iter(app.tables.changelog_topics)), partition)


def start_active_recovery(recovery: Recovery, table: Any, tp: TP, highwater: int, bufsize: int) -> None:
    """What Recovery._restart_recovery does before it resumes the changelog partitions."""
    table.recovery_buffer_size = bufsize
    recovery.add_active(table, tp)
    recovery.active_highwaters[tp] = highwater
    recovery.active_offsets[tp] = -1  # nothing read yet (earliest offset 0, less Faust's 1)
    recovery._set_recovery_started()


def run(app: Any, main: Any) -> Any:
    return app.consumer.loop.run_until_complete(main)


def faust_replay(app: Any, recovery: Recovery, fetched: list[Any]) -> None:
    """Faust's own path: every record decoded onto the changelog queue, taken off by _slurp_changelogs."""

    async def main() -> None:
        chan = app.tables._channels[app.tables["journeys"]]
        slurp = asyncio.ensure_future(Recovery._slurp_changelogs(recovery))  # type: ignore[call-arg]
        try:
            for record in fetched:
                await app.tables.changelog_queue.put(await chan.decode(app.consumer._to_message(
                    TP(record.topic, record.partition), record), propagate=True))
            await asyncio.wait_for(recovery.signal_recovery_end.wait(), 10)
            while app.tables.changelog_queue.qsize():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        finally:
            slurp.cancel()

    run(app, main())


@pytest.mark.parametrize("bufsize", [1, 3, 1000])
def test_a_batch_leaves_the_table_and_offsets_as_faust_s_loop_does(pipeline: Pipeline, app: Any,
                                                                    bufsize: int) -> None:
    table = pipeline.journeys
    recovery = app.tables.recovery
    assert isinstance(recovery, BatchRecovery)
    tp = changelog_tp(app)
    fetched = records(tp, CHANGES)
    start_active_recovery(recovery, table, tp, highwater=len(CHANGES) - 1, bufsize=bufsize)
    faust_replay(app, recovery, fetched)
    faust_table, faust_offsets = dict(table.data.data), dict(recovery.active_offsets)
    assert faust_table == expected_table(CHANGES)
    assert not recovery.in_recovery  # and it had set signal_recovery_end (faust_replay waited for it)

    table.data.data.clear()
    recovery.signal_recovery_end.clear()
    start_active_recovery(recovery, table, tp, highwater=len(CHANGES) - 1, bufsize=bufsize)
    # Two fetches, the second repeating the first's last records (a seek back): seen offsets are skipped.
    assert recovery.take_fetched(tp, fetched[:7], app.consumer._to_message) == 7
    assert recovery.in_recovery and not recovery.signal_recovery_end.is_set()
    assert recovery.take_fetched(tp, fetched[5:], app.consumer._to_message) == len(fetched) - 5
    assert dict(table.data.data) == faust_table
    assert dict(recovery.active_offsets) == faust_offsets == {tp: len(CHANGES) - 1}
    assert not recovery.in_recovery and recovery.signal_recovery_end.is_set()  # ended at the highwater
    assert not any(recovery.buffers.values())  # flushed
    assert app.tables.changelog_queue.qsize() == 0


def test_recovery_ends_only_when_every_active_partition_reaches_its_highwater(pipeline: Pipeline,
                                                                             app: Any) -> None:
    table, recovery = pipeline.journeys, app.tables.recovery
    tp0, tp1 = changelog_tp(app, 0), changelog_tp(app, 1)
    start_active_recovery(recovery, table, tp0, highwater=4, bufsize=1000)
    start_active_recovery(recovery, table, tp1, highwater=5, bufsize=1000)
    recovery.take_fetched(tp0, records(tp0, CHANGES[:5]), app.consumer._to_message)
    assert recovery.in_recovery and not table.data.data  # buffered, not applied yet
    recovery.take_fetched(tp1, records(tp1, CHANGES[5:11]), app.consumer._to_message)
    assert not recovery.in_recovery and recovery.signal_recovery_end.is_set()
    assert dict(table.data.data) == {**expected_table(CHANGES[:5]), **expected_table(CHANGES[5:11])}
    assert recovery.active_remaining_total() == 0


def test_what_faust_s_decoder_rejects_and_what_follows_is_left_to_faust_s_loop(pipeline: Pipeline,
                                                                              app: Any) -> None:
    table, recovery = pipeline.journeys, app.tables.recovery
    tp = changelog_tp(app)
    fetched = records(tp, CHANGES[:6])
    fetched[3] = dataclasses.replace(fetched[3], value=b"{not json")
    start_active_recovery(recovery, table, tp, highwater=5, bufsize=1)
    assert recovery.take_fetched(tp, fetched, app.consumer._to_message) == 3
    assert recovery.active_offsets[tp] == 2 and recovery.in_recovery
    app.tables.changelog_queue.put_nowait(object())  # Faust's loop has records to take first
    assert recovery.take_fetched(tp, fetched[4:], app.consumer._to_message) == 0


def test_partitions_neither_active_nor_standby_and_suspended_flow_are_left_to_faust(pipeline: Pipeline,
                                                                                   app: Any) -> None:
    table, recovery = pipeline.journeys, app.tables.recovery
    tp = changelog_tp(app)
    assert recovery.take_fetched(tp, records(tp, CHANGES), app.consumer._to_message) == 0  # not assigned
    start_active_recovery(recovery, table, tp, highwater=len(CHANGES) - 1, bufsize=1000)
    app.flow_control.suspend()
    assert recovery.take_fetched(tp, records(tp, CHANGES), app.consumer._to_message) == 0
    assert recovery.active_offsets[tp] == -1 and not table.data.data


def test_standbys_follow_the_changelog_and_are_reported_ready(pipeline: Pipeline, app: Any) -> None:
    table, recovery = pipeline.journeys, app.tables.recovery
    tp = changelog_tp(app, 2)
    table.standby_buffer_size = 2
    recovery.add_standby(table, tp)
    recovery.standby_offsets[tp] = -1
    recovery.standby_highwaters[tp] = len(CHANGES) - 1
    app.tables.standbys_ready = False
    recovery.take_fetched(tp, records(tp, CHANGES[:4]), app.consumer._to_message)
    assert recovery.standby_offsets[tp] == 3 and not app.tables.standbys_ready
    recovery.take_fetched(tp, records(tp, CHANGES[4:], first=4), app.consumer._to_message)
    assert recovery.standby_offsets[tp] == len(CHANGES) - 1 and app.tables.standbys_ready
    recovery.flush_buffers()
    assert dict(table.data.data) == expected_table(CHANGES)


@pytest.mark.parametrize("chunk", [4, 1000])
def test_the_consumer_hands_a_fetched_changelog_batch_to_recovery_not_record_by_record(
        pipeline: Pipeline, app: Any, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offsets, "CHANGELOG_CHUNK", chunk)
    table, recovery, consumer = pipeline.journeys, app.tables.recovery, app.consumer
    tp = changelog_tp(app)
    start_active_recovery(recovery, table, tp, highwater=len(CHANGES) - 1, bufsize=1000)
    fetched = records(tp, CHANGES)

    async def wait_next_records(timeout: float) -> Any:
        return {tp: fetched}, {tp}

    consumer._wait_next_records = wait_next_records
    consumer.highwater = lambda tp: len(CHANGES)
    consumer.flow_active = True

    async def hand_out() -> list[Any]:
        return [message async for _, message in consumer.getmany(timeout=0)]

    assert run(app, hand_out()) == []  # nothing for Faust's conductor and queue
    assert dict(table.data.data) == expected_table(CHANGES)
    assert consumer._read_offset[tp] == len(CHANGES) - 1
    assert not recovery.in_recovery and recovery.signal_recovery_end.is_set()

