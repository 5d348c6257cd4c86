"""streams.offsets.RewindingConsumer: partitions a broker lost are read again from their start.

The consumer is the one a Pipeline's app creates (not started); the calls
that would reach the broker (assignment, earliest offsets, seek, commit) are
replaced by recorders. The broker-restart integration test runs it for real.
"""

from __future__ import annotations

from typing import Any

import pytest
from faust.types import TP

from streams.offsets import RewindingConsumer

VISIT = TP("funnel.visit", 0)
OTHER = TP("funnel.visit", 1)


class Broker:
    """What the consumer asked of the broker."""

    def __init__(self, consumer: RewindingConsumer, assigned: set[TP], earliest: int = 0) -> None:
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

        async def seek_to_committed() -> dict[TP, int]:
            return {tp: 27 for tp in assigned}  # offsets committed before the loss was seen

        consumer.earliest_offsets = earliest_offsets  # type: ignore[method-assign]
        consumer.seek_wait = seek_wait  # type: ignore[method-assign]
        consumer._commit = commit  # type: ignore[method-assign]
        consumer.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


@pytest.fixture
def consumer(app_consumer: Any) -> RewindingConsumer:
    assert isinstance(app_consumer, RewindingConsumer)
    return app_consumer


def _ack(consumer: RewindingConsumer, tp: TP, offsets: range) -> None:
    for offset in offsets:
        consumer._acked[tp].append(offset)
        consumer._acked_index[tp].add(offset)


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
    assert consumer._acked[VISIT] == [] and not consumer._acked_index[VISIT]
    assert consumer._rewound == {VISIT: 3, OTHER: None}  # OTHER waits until it is assigned here
    _run(consumer, consumer._rewind_pending())
    assert len(broker.seeks) == 1  # nothing left to do


def test_nothing_is_committed_for_a_rewound_partition_until_its_start_is_processed(
        consumer: RewindingConsumer) -> None:
    Broker(consumer, assigned={VISIT, OTHER})
    consumer.rewind([VISIT])
    assert consumer._filter_committable_offsets([VISIT]) == {}  # the rewind has not happened yet
    _run(consumer, consumer._rewind_pending())
    _ack(consumer, VISIT, range(20, 26))  # records fetched before the seek, processed after it
    _ack(consumer, OTHER, range(0, 5))
    assert consumer._filter_committable_offsets([VISIT, OTHER]) == {OTHER: 5}
    _ack(consumer, VISIT, range(0, 20))  # read again from the start
    assert consumer._filter_committable_offsets([VISIT]) == {VISIT: 26}
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


def test_a_hole_in_the_offsets_is_logged(consumer: RewindingConsumer,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """Faust commits past offsets its fetch loop skipped; the pipeline's topics never have any."""
    consumer._committed_offset[VISIT] = 100
    _run(consumer, consumer._add_gap(VISIT, 120, 263))
    assert "offsets 120-262 of funnel.visit[0] were skipped" in caplog.text
    assert consumer._gap[VISIT]  # Faust's own bookkeeping still happens
