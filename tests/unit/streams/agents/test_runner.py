"""streams.agents.runner: acknowledge a batch after its work, retry a batch the broker refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, UnknownError
from prometheus_client import CollectorRegistry

from sinks import FunnelMetrics, SinkStopped
from streams.agents import runner as runner_module
from streams.agents.runner import BatchRunner


class FakeStream:
    def __init__(self, batches: list[list[str]]) -> None:
        self.batches = batches
        self.acked: list[str] = []

    async def noack_take(self, n: int, within: float) -> AsyncIterator[list[str]]:
        for batch in self.batches:
            yield batch

    async def ack(self, event: str) -> None:
        self.acked.append(event)


@pytest.fixture(autouse=True)
def _fake_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batches the fake stream gives, as ``take_envelopes`` would hand them over."""
    monkeypatch.setattr(runner_module, "take_envelopes",
                        lambda stream, n, within: stream.noack_take(n, within))
    monkeypatch.setattr(runner_module, "mark_done", lambda event: DONE.append(event))
    DONE.clear()


DONE: list[str] = []  # events marked done, in order


def _runner() -> BatchRunner:
    return BatchRunner(10, 0.1, FunnelMetrics(CollectorRegistry()))


def run(runner: BatchRunner, stream: FakeStream, handle: Any) -> None:
    asyncio.run(runner.run("ingest", stream, handle))  # type: ignore[arg-type]


def test_a_refused_batch_is_handled_again_then_acknowledged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "PRODUCE_RETRY_INITIAL_SECONDS", 0.01)
    runner, stream = _runner(), FakeStream([["a", "b"], ["c"]])
    calls: list[list[str]] = []
    failures = [UnknownError(), KafkaTimeoutError()]

    async def handle(_: Any, events: list[str]) -> Any:
        calls.append(list(events))

        async def finish() -> None:
            assert not set(events) & set(stream.acked)  # nothing acknowledged before its writes
            if events == ["a", "b"] and failures:
                raise failures.pop(0)  # the broker refused a produced message

        return finish

    run(runner, stream, handle)
    assert sorted(calls) == [["a", "b"], ["a", "b"], ["a", "b"], ["c"]]  # handled again twice
    assert stream.acked == DONE == ["a", "b", "c"]  # in order
    assert runner.metrics.registry.get_sample_value(
        "funnel_produce_retries_total", {"agent": "ingest"}) == 2


def test_a_batch_is_written_while_the_next_one_is_handled() -> None:
    runner, stream = _runner(), FakeStream([["a"], ["b"], ["c"]])
    log: list[str] = []

    async def handle(_: Any, events: list[str]) -> Any:
        log.append(f"handle {events[0]}")

        async def finish() -> None:
            log.append(f"write {events[0]}")
            await asyncio.sleep(0.01)
            log.append(f"written {events[0]}")

        return finish

    run(runner, stream, handle)
    assert log.index("handle b") < log.index("written a")  # overlapped
    assert log.index("written a") < log.index("write b")  # one write at a time, in order
    assert log.index("written b") < log.index("write c")
    assert stream.acked == ["a", "b", "c"]


def test_a_stopped_sink_leaves_the_batch_unacknowledged() -> None:
    runner, stream = _runner(), FakeStream([["a"], ["b"]])

    async def handle(_: Any, events: list[str]) -> Any:
        async def finish() -> None:
            raise SinkStopped("stopping")

        return finish

    run(runner, stream, handle)
    assert stream.acked == DONE == []


def test_other_errors_are_not_swallowed() -> None:
    runner, stream = _runner(), FakeStream([["a"]])

    async def handle(_: Any, events: list[str]) -> Any:
        async def finish() -> None:
            raise ValueError("a bug")

        return finish

    with pytest.raises(ValueError, match="a bug"):
        run(runner, stream, handle)
    assert stream.acked == []
