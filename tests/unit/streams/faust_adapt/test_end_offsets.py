"""streams.faust_adapt.endoffsets.read_end_offsets against a consumer whose broker reports ends that are off.

The embedded broker's real quirks are in tests/integration/test_offsets.py;
here a stand-in consumer plays the broker's two answers (ListOffsets and the
fetch's high watermark) so that each disagreement is pinned down.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams.faust_adapt.endoffsets import read_end_offsets

A, B, C = (TopicPartition("t", p) for p in range(3))


class Consumer:
    """ListOffsets says ``reported``; the partition holds offsets below ``true_end``."""

    def __init__(self, reported: dict[Any, int], true_end: dict[Any, int], batch_start: dict[Any, int],
                 silent_fetches: int = 0) -> None:
        self.reported, self.true_end, self.batch_start = reported, true_end, batch_start
        self.silent_fetches = silent_fetches  # fetches that answer nothing yet (still waiting)
        self.position: dict[Any, int] = {}
        self.high: dict[Any, int] = {}

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return {tp: self.reported[tp] for tp in tps}

    def assign(self, tps: list[Any]) -> None:
        pass

    def seek(self, tp: Any, offset: int) -> None:
        self.position[tp] = offset

    async def getmany(self, *tps: Any, timeout_ms: int) -> dict[Any, list[Any]]:
        batch: dict[Any, list[Any]] = {}
        if self.silent_fetches:
            self.silent_fetches -= 1
            return batch
        for tp in tps:
            self.high[tp] = self.true_end[tp]  # every fetch answer carries the high watermark
            start = min(self.position[tp], self.batch_start[tp])  # whole batches come back
            if start < self.true_end[tp]:
                batch[tp] = [SimpleNamespace(offset=o) for o in range(start, self.true_end[tp])]
                self.position[tp] = self.true_end[tp]
        return batch

    def highwater(self, tp: Any) -> int | None:
        return self.high.get(tp)


def _ends(consumer: Consumer, timeout: float = 10.0) -> dict[Any, int]:
    return asyncio.run(read_end_offsets(consumer, [A, B, C], timeout))  # type: ignore[arg-type]


def test_an_end_reported_inside_the_last_batch_is_read_to_the_batch_s_end() -> None:
    # 10 records, then 7 in one batch from offset 10: the broker reports 11
    consumer = Consumer(reported={A: 11, B: 1, C: 0}, true_end={A: 17, B: 1, C: 0},
                        batch_start={A: 10, B: 0, C: 0})
    assert _ends(consumer) == {A: 17, B: 1, C: 0}


def test_an_end_reported_past_what_fetches_find_is_the_fetch_s() -> None:
    """The embedded broker reported 1 for an empty partition (a record it acknowledged, never stored).

    An empty partition's fetch answers only when its wait ends: the first
    rounds may tell nothing.
    """
    consumer = Consumer(reported={A: 1, B: 3, C: 0}, true_end={A: 0, B: 3, C: 0},
                        batch_start={A: 0, B: 0, C: 0}, silent_fetches=2)
    assert _ends(consumer) == {A: 0, B: 3, C: 0}


def test_without_any_fetch_answer_the_reported_ends_stand(caplog: pytest.LogCaptureFixture) -> None:
    consumer = Consumer(reported={A: 1, B: 3, C: 0}, true_end={A: 0, B: 3, C: 0},
                        batch_start={A: 0, B: 0, C: 0}, silent_fetches=10**6)
    assert _ends(consumer, timeout=0.0) == {A: 1, B: 3, C: 0}
    assert "no fetch answered for t[0], t[1] within 0 s" in caplog.text


def test_the_worker_s_fetches_wait_at_most_fetch_max_wait_ms(app_consumer: Any) -> None:
    """Faust asks for 1 500 ms; the embedded broker then holds fetches that long with records there."""
    from streams.faust_adapt.endoffsets import FETCH_MAX_WAIT_MS

    async def build() -> Any:
        consumer = app_consumer._thread._create_worker_consumer(app_consumer.transport)
        await consumer.stop()
        return consumer

    consumer = asyncio.run(build())
    assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS == 100
