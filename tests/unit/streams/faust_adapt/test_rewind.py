"""streams.faust_adapt.offsets.RewindingConsumer: partitions a broker lost are read again from their start.

The consumer is the one a Pipeline's app creates (not started); the calls
that would reach the broker (assignment, earliest offsets, seek, commit) are
replaced by recorders. The broker-restart integration test runs it for real.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest
from faust.types import TP

from streams.faust_adapt import commits
from streams.faust_adapt.envelopes import Envelope, EnvelopeLog
from streams.faust_adapt.offsets import RewindingConsumer

VISIT = TP("funnel.visit", 0)
OTHER = TP("funnel.visit", 1)


class Broker:
    """What the consumer asked of the broker."""

    def __init__(self, consumer: RewindingConsumer, assigned: set[TP], earliest: int = 0,
                 committed: dict[TP, int | None] | None = None) -> None:
        self.seeks: list[dict[TP, int]] = []
        self.commits: list[dict[TP, int]] = []
        consumer.assignment = lambda: assigned  # type: ignore[method-assign]

        async def earliest_offsets(*tps: TP) -> dict[TP, int]:
            return {tp: earliest for tp in tps}

        async def seek_wait(offsets: dict[TP, int]) -> None:
            self.seeks.append(dict(offsets))

        async def commit(offsets: dict[TP, int]) -> bool:
            self.commits.append(dict(offsets))
            return True

        async def seek_to_committed() -> dict[TP, int | None]:
            # offsets committed (by default 27, as before a loss was seen)
            return {tp: 27 for tp in assigned} if committed is None else dict(committed)

        async def seek(tp: TP, offset: int) -> None:
            self.seeks.append({tp: offset})

        consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
        consumer.seek_wait = seek_wait  # type: ignore[method-assign]
        consumer._commit = commit  # type: ignore[method-assign]
        consumer._thread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
        consumer._seek = seek  # type: ignore[method-assign]


@pytest.fixture
def consumer(app_consumer: Any) -> RewindingConsumer:
    assert isinstance(app_consumer, RewindingConsumer)
    return app_consumer


def _ack(consumer: RewindingConsumer, tp: TP, offsets: range) -> None:
    """Deliver ``offsets`` of ``tp`` as one envelope, and acknowledge it."""
    _finish(consumer, _deliver(consumer, tp, offsets)[0])


def _deliver(consumer: RewindingConsumer, tp: TP, *ranges: range) -> list[Envelope]:
    """Envelopes of ``ranges`` handed out from ``tp``, as getmany records them."""
    out = []
    for offsets_ in ranges:
        envelope = Envelope(tp, [SimpleNamespace(offset=o, timestamp=None, timestamp_type=0)
                                 for o in offsets_], consumer.app.consumer_generation_id)
        consumer._envelopes.setdefault(tp, EnvelopeLog()).deliver(envelope)
        out.append(envelope)
    return out


def _finish(consumer: RewindingConsumer, envelope: Envelope) -> None:
    """What the agent does once all of ``envelope`` is written."""
    envelope.done = True
    envelope.ack(consumer)


def _run(consumer: RewindingConsumer, main: Any) -> Any:
    return consumer.loop.run_until_complete(main)


def test_a_rewind_seeks_the_assigned_partitions_to_their_start_and_commits_it(
        consumer: RewindingConsumer) -> None:
    broker = Broker(consumer, assigned={VISIT}, earliest=3)
    consumer._read_offset[VISIT] = 26
    consumer._committed_offset[VISIT] = 27
    _ack(consumer, VISIT, range(20, 27))
    consumer.rewind([VISIT, OTHER])
    _run(consumer, consumer._rewind_pending())
    assert broker.seeks == [{VISIT: 3}]
    assert broker.commits == [{VISIT: 3}]  # replaces the offset committed from the old position
    assert consumer._read_offset[VISIT] is None and consumer._committed_offset[VISIT] is None
    assert VISIT not in consumer._envelopes  # what was delivered before commits nothing
    assert consumer._rewound == {VISIT: 3, OTHER: None}  # OTHER waits until it is assigned here
    _run(consumer, consumer._rewind_pending())
    assert len(broker.seeks) == 1  # nothing left to do


def test_nothing_is_committed_for_a_rewound_partition_until_its_start_is_processed(
        consumer: RewindingConsumer) -> None:
    Broker(consumer, assigned={VISIT, OTHER})
    consumer.rewind([VISIT])
    assert consumer._filter_committable_offsets([VISIT]) == {}  # the rewind has not happened yet
    [stale] = _deliver(consumer, VISIT, range(20, 26))  # fetched before the seek
    _run(consumer, consumer._rewind_pending())
    _finish(consumer, stale)  # processed after it
    _ack(consumer, OTHER, range(0, 5))
    assert consumer._filter_committable_offsets([VISIT, OTHER]) == {OTHER: 5}
    _ack(consumer, VISIT, range(0, 20))  # read again from the start
    assert consumer._filter_committable_offsets([VISIT]) == {VISIT: 20}
    assert VISIT not in consumer._rewound


def test_a_rebalance_before_the_start_is_processed_rewinds_again(consumer: RewindingConsumer) -> None:
    broker = Broker(consumer, assigned={VISIT})
    consumer.rewind([VISIT])
    _run(consumer, consumer._rewind_pending())
    _run(consumer, consumer.perform_seek())  # Faust seeks to the stale committed offset
    assert consumer._rewound == {VISIT: None}
    _run(consumer, consumer._rewind_pending())
    assert broker.seeks == [{VISIT: 0}, {VISIT: 0}]


def test_a_partition_read_from_its_start_is_not_rewound_by_a_rebalance(consumer: RewindingConsumer) -> None:
    broker = Broker(consumer, assigned={VISIT})
    consumer.rewind([VISIT])
    _run(consumer, consumer._rewind_pending())
    _ack(consumer, VISIT, range(0, 4))
    assert consumer._filter_committable_offsets([VISIT]) == {VISIT: 4}
    _run(consumer, consumer.perform_seek())
    _run(consumer, consumer._rewind_pending())
    assert broker.seeks == [{VISIT: 0}]


def test_faust_s_gaps_are_ignored_on_stream_topics(consumer: RewindingConsumer) -> None:
    """Faust's fetch loop adds a gap after any jump past its read offset, which a seek lowers."""
    consumer._committed_offset[VISIT] = 100
    _run(consumer, consumer._add_gap(VISIT, 120, 263))  # handed out already, in flight: not done
    assert not consumer._gap[VISIT]


class Fetches:
    """Stands in for the fetch loop's broker side: each fetch returns the next batch given."""

    def __init__(self, consumer: RewindingConsumer, *batches: dict[TP, list[int]]) -> None:
        self.batches = list(batches)
        self.seeks: list[tuple[TP, int]] = []

        async def wait_next_records(timeout: float) -> Any:
            batch = self.batches.pop(0)
            records = {tp: [SimpleNamespace(offset=o, timestamp=None, timestamp_type=0) for o in offsets]
                       for tp, offsets in batch.items()}
            return records, set(batch)

        async def seek(tp: TP, offset: int) -> None:
            self.seeks.append((tp, offset))

        consumer._wait_next_records = wait_next_records  # type: ignore[method-assign]
        consumer._to_message = lambda tp, record: SimpleNamespace(  # type: ignore
            tp=tp, offset=record.offset, generation_id=consumer.app.consumer_generation_id)
        consumer.highwater = lambda tp: 1000  # type: ignore[method-assign]
        consumer._seek = seek  # type: ignore[method-assign]
        consumer.flow_active = True
        consumer.app.flow_control.resume()


async def _hand_out_async(consumer: RewindingConsumer) -> list[tuple[TP, int]]:
    """The offsets handed out, envelope by envelope (a changelog's record by record)."""
    handed = []
    async for tp, message in consumer.getmany(timeout=0):
        if isinstance(message, Envelope):
            handed.extend((tp, record.offset) for record in message.records)
        else:
            handed.append((tp, message.offset))
    return handed


def _hand_out(consumer: RewindingConsumer) -> list[tuple[TP, int]]:
    """One pass of Faust's fetch loop: what it hands to agents."""
    return cast(list[tuple[TP, int]], _run(consumer, _hand_out_async(consumer)))


def test_a_partition_with_a_hole_is_fetched_again_from_the_hole(
        consumer: RewindingConsumer, caplog: pytest.LogCaptureFixture) -> None:
    """Records fetched but never handed out are read again, not committed past."""
    fetches = Fetches(consumer, {VISIT: [0, 1]}, {VISIT: [144, 145, 146], OTHER: [8, 9]}, {VISIT: [2, 3, 4]})
    assert _hand_out(consumer) == [(VISIT, 0), (VISIT, 1)]
    consumer._next[OTHER] = 8
    assert _hand_out(consumer) == [(OTHER, 8), (OTHER, 9)]  # VISIT's batch starts past offset 2
    assert fetches.seeks == [(VISIT, 2)]
    assert "offsets 2-143 of funnel.visit[0] were fetched but not handed out" in caplog.text
    assert _hand_out(consumer) == [(VISIT, 2), (VISIT, 3), (VISIT, 4)]
    assert not consumer._refetching


def test_a_hole_still_there_when_read_again_is_committed_past(
        consumer: RewindingConsumer, caplog: pytest.LogCaptureFixture) -> None:
    """Records the broker no longer has (compaction, deletion): read once more, then passed."""
    fetches = Fetches(consumer, {VISIT: [10, 11]}, {VISIT: [10, 11]}, {VISIT: [12]})
    consumer._next[VISIT] = 6
    assert _hand_out(consumer) == []
    assert _hand_out(consumer) == [(VISIT, 10), (VISIT, 11)]
    assert fetches.seeks == [(VISIT, 6)]
    assert "offsets 6-9 of funnel.visit[0] are missing on the broker: committed past them" in caplog.text
    assert _hand_out(consumer) == [(VISIT, 12)]
    assert not consumer._refetching
    for envelope in consumer._envelopes[VISIT]._fifo:
        _finish(consumer, envelope)
    assert consumer._filter_committable_offsets([VISIT]) == {VISIT: 13}  # past 6-9


def test_messages_already_handed_out_are_not_handed_out_again(consumer: RewindingConsumer) -> None:
    Fetches(consumer, {VISIT: [3, 4, 5]}, {VISIT: [4, 5, 6]})
    assert _hand_out(consumer) == [(VISIT, 3), (VISIT, 4), (VISIT, 5)]
    assert _hand_out(consumer) == [(VISIT, 6)]
    assert consumer._read_offset[VISIT] == 5  # Faust's loop compares with this: it hands 6 on


def test_messages_wait_for_flow_control_and_a_seek_meanwhile_is_obeyed(consumer: RewindingConsumer) -> None:
    """Faust's streams drop, unacknowledged, what arrives while flow control is suspended.

    Recovery suspends it while it seeks the stream partitions to their
    committed offsets; what was handed out before is read again from there.
    """
    Broker(consumer, assigned={VISIT})  # offsets committed: 27
    fetches = Fetches(consumer, {VISIT: [40, 41]}, {VISIT: [27, 28]})
    consumer._next[VISIT] = 40  # handed out up to 39 before recovery ended
    consumer.app.flow_control.suspend()

    async def recovery_ends() -> None:
        await asyncio.sleep(0.05)
        await consumer.perform_seek()
        consumer.app.flow_control.resume()

    async def both() -> list[tuple[TP, int]]:
        handed, _ = await asyncio.gather(_hand_out_async(consumer), recovery_ends())
        return handed
    assert _run(consumer, both()) == []  # 40 waited for flow control, then was past the seek
    assert fetches.seeks == [(VISIT, 27)]
    assert _hand_out(consumer) == [(VISIT, 27), (VISIT, 28)]


def test_after_a_seek_the_committed_offset_is_the_next_to_hand_out(consumer: RewindingConsumer) -> None:
    """Records fetched before Faust's seek to the committed offsets are read again from there.

    Faust sets its read offset to the committed offset as if that message had
    been read: a fetch starting one past it would not look like a hole.
    """
    Broker(consumer, assigned={VISIT})  # offsets committed: 27
    fetches = Fetches(consumer, {VISIT: [28, 29]}, {VISIT: [27, 28, 29]})
    consumer._next[VISIT] = 40  # handed out up to 39 before the seek
    _run(consumer, consumer.perform_seek())
    assert consumer._next == {VISIT: 27}
    assert _hand_out(consumer) == []  # a fetch that misses offset 27
    assert fetches.seeks == [(VISIT, 27)]
    assert _hand_out(consumer) == [(VISIT, 27), (VISIT, 28), (VISIT, 29)]


def test_changelog_gaps_stay_faust_s(consumer: RewindingConsumer, caplog: pytest.LogCaptureFixture) -> None:
    """Compacted changelogs have holes by design: Faust's rule applies, quietly."""
    changelog = TP(next(iter(consumer.app.tables.changelog_topics)), 0)
    _run(consumer, consumer._add_gap(changelog, 5, 9))
    assert consumer._gap[changelog]
    assert "missing on the broker" not in caplog.text


def test_commits_waiting_for_an_unacknowledged_envelope_are_logged_once(
        consumer: RewindingConsumer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition whose commits cannot move says which offsets it waits for."""
    monkeypatch.setattr(commits, "BLOCKED_COMMIT_WARN_SECONDS", 0.0)
    consumer._committed_offset[VISIT] = 100
    head, later = _deliver(consumer, VISIT, range(100, 105), range(105, 111))
    _finish(consumer, later)
    assert consumer._filter_committable_offsets([VISIT]) == {}
    assert consumer._filter_committable_offsets([VISIT]) == {}
    told = [r for r in caplog.records if "commits of funnel.visit[0]" in r.getMessage()]
    assert len(told) == 1
    assert ("waited 0 s at offset 100: offsets 100-104 were never acknowledged (1 later envelopes were)"
            in told[0].getMessage())
    _finish(consumer, head)
    assert consumer._filter_committable_offsets([VISIT]) == {VISIT: 111}
    assert not consumer._blocked


def test_messages_from_before_a_rebalance_are_not_handed_out(consumer: RewindingConsumer) -> None:
    """Faust's streams drop them unacknowledged; the rebalance's seek reads them again."""
    Broker(consumer, assigned={VISIT})  # offsets committed: 27
    Fetches(consumer, {VISIT: [27, 28]}, {VISIT: [27, 28]})
    consumer.app.flow_control.suspend()

    async def rebalance() -> None:
        await asyncio.sleep(0.05)
        consumer.app.consumer_generation_id += 1
        await consumer.perform_seek()
        consumer.app.flow_control.resume()

    async def both() -> list[tuple[TP, int]]:
        handed, _ = await asyncio.gather(_hand_out_async(consumer), rebalance())
        return handed
    assert _run(consumer, both()) == []
    assert _hand_out(consumer) == [(VISIT, 27), (VISIT, 28)]


async def _rebalanced_after_the_first(consumer: RewindingConsumer) -> list[tuple[TP, int]]:
    """One fetch handed out, a rebalance coming while the first envelope is handled."""
    handed = []
    async for tp, message in consumer.getmany(timeout=0):
        handed.extend((tp, record.offset) for record in message.records)
        consumer.app.consumer_generation_id += 1  # the fetch loop awaited: a rebalance came
    return handed


def test_records_of_an_older_generation_are_not_handed_out_while_flow_runs(
        consumer: RewindingConsumer) -> None:
    """A rebalance while a fetch is being handed out: streams would drop the rest and acknowledge
    them, and commits would pass them. They are read again after the rebalance's seek instead."""
    Broker(consumer, assigned={VISIT, OTHER})  # offsets committed: 27
    Fetches(consumer, {VISIT: [27, 28], OTHER: [27]}, {VISIT: [27, 28], OTHER: [27]})
    _run(consumer, consumer.perform_seek())

    assert _run(consumer, _rebalanced_after_the_first(consumer)) == [(VISIT, 27), (VISIT, 28)]
    _run(consumer, consumer.perform_seek())
    assert _hand_out(consumer) == [(VISIT, 27), (VISIT, 28), (OTHER, 27)]


def test_records_left_when_a_rebalance_stops_a_fetch_are_read_again_without_its_seek(
        consumer: RewindingConsumer) -> None:
    """The fetcher is past them: with no seek after it (the stream ended there), they would wait."""
    Broker(consumer, assigned={VISIT, OTHER})  # offsets committed: 27
    fetches = Fetches(consumer, {VISIT: [27, 28], OTHER: [27]})
    _run(consumer, consumer.perform_seek())

    assert _run(consumer, _rebalanced_after_the_first(consumer)) == [(VISIT, 27), (VISIT, 28)]
    assert consumer._dropped == {OTHER: 27}
    _run(consumer, consumer._seek_dropped())  # what the next fetch does first
    assert fetches.seeks == [(OTHER, 27)] and not consumer._dropped


def test_partitions_without_a_committed_offset_are_sought_to_their_start(consumer: RewindingConsumer) -> None:
    """aiokafka seeks only partitions committed past 0: the others would stay where the fetcher is."""
    changelog = TP(next(iter(consumer.app.tables.changelog_topics)), 0)
    broker = Broker(consumer, assigned={VISIT, OTHER, changelog}, earliest=2,
                    committed={VISIT: None, OTHER: 27, changelog: None})
    _run(consumer, consumer.perform_seek())
    assert broker.seeks == [{VISIT: 2}]  # recovery seeks the changelogs itself
    assert consumer._next == {VISIT: 2, OTHER: 27}
    assert consumer._committed_offset[VISIT] is None  # nothing was committed: Faust's view stays


def test_messages_dropped_while_flow_was_off_are_read_again_where_nothing_was_committed(
        consumer: RewindingConsumer, caplog: pytest.LogCaptureFixture) -> None:
    """A crash test lost offsets 3-99 of a partition nobody had committed yet.

    The worker handed out 0-2; recovery then suspended flow control, Faust's
    fetch loop dropped the fetch it held and sought to the committed offsets,
    which left this partition where the fetcher was, past the dropped ones.
    """
    Broker(consumer, assigned={VISIT}, committed={VISIT: None})
    fetches = Fetches(consumer, {VISIT: [0, 1, 2]}, {VISIT: [3, 4, 5]}, {VISIT: [6, 7]},
                      {VISIT: list(range(8))})
    assert _hand_out(consumer) == [(VISIT, 0), (VISIT, 1), (VISIT, 2)]
    consumer.flow_active = False  # recovery: Faust's loop drops the fetch and seeks
    assert _hand_out(consumer) == []
    consumer.flow_active = True
    assert _hand_out(consumer) == []  # 6 is past 3-5, which were never handed out
    assert fetches.seeks == [(VISIT, 0), (VISIT, 0)]  # to the start, then back to the hole
    assert "offsets 0-5 of funnel.visit[0] were fetched but not handed out" in caplog.text
    assert _hand_out(consumer) == [(VISIT, o) for o in range(8)]  # 0-2 again: the pipeline is idempotent
