"""streams.faust_adapt.consumer: Faust's per-message race, with its first step run eagerly; raw decoding.

The consumer is the one a Pipeline's app creates (not started): only
``wait_first`` is exercised, as Faust's fetcher calls it for every message.
"""

from __future__ import annotations

import asyncio
import gc
import warnings
from typing import Any

import faust
import pytest
from faust.types import Message

from streams.faust_adapt.consumer import EagerConsumer, RawSchema


@pytest.fixture
def consumer(app_consumer: Any) -> EagerConsumer:
    assert isinstance(app_consumer, EagerConsumer)
    return app_consumer


def _run(consumer: EagerConsumer, main: Any) -> Any:
    """Run on the app's loop (Faust's services schedule their tasks there)."""
    return consumer.loop.run_until_complete(main)


def _race(consumer: EagerConsumer, callback: Any) -> Any:
    """What the fetcher does per message: race the callback against a flow suspension."""
    return consumer.wait_first(callback, consumer.suspend_flow.wait())


def test_a_callback_that_needs_no_wait_runs_without_tasks(consumer: EagerConsumer) -> None:
    ran: list[str] = []

    async def callback() -> str:
        ran.append("callback")
        return "done"

    async def main() -> Any:
        tasks = len(asyncio.all_tasks())
        result = await _race(consumer, callback())
        assert len(asyncio.all_tasks()) == tasks
        return result

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unused suspension coroutine is closed, not leaked
        result = _run(consumer, main())
        gc.collect()
    assert ran == ["callback"]
    assert (result.results, result.stopped) == (["done"], False)


def test_a_callback_that_waits_is_finished_by_fausts_race(consumer: EagerConsumer) -> None:
    steps: list[str] = []

    async def callback(gate: asyncio.Event) -> str:
        steps.append("first step")
        await gate.wait()
        await asyncio.sleep(0)
        steps.append("rest")
        return "done"

    async def main() -> Any:
        gate = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, gate.set)
        return await _race(consumer, callback(gate))

    result = _run(consumer, main())
    assert steps == ["first step", "rest"]
    assert len(result.results) == 1 and result.results[0] == "done" and not result.stopped


def test_a_suspended_flow_abandons_a_waiting_callback(consumer: EagerConsumer) -> None:
    """As in Faust: a rebalance must not wait for a message stuck on a full queue."""
    steps: list[str] = []

    async def callback(gate: asyncio.Event) -> None:
        steps.append("first step")
        try:
            await gate.wait()
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise
        steps.append("delivered")

    async def main() -> Any:
        gate = asyncio.Event()  # never set
        asyncio.get_running_loop().call_later(0.05, consumer.suspend_flow.set)
        return await _race(consumer, callback(gate))

    result = _run(consumer, main())
    assert steps == ["first step", "cancelled"]
    assert result.results == [True]  # only the suspension (its wait() returned True) finished


def test_an_error_in_the_first_step_propagates(consumer: EagerConsumer) -> None:
    async def callback() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        _run(consumer, _race(consumer, callback()))


def test_a_full_producer_buffer_takes_fausts_path_from_the_start(
    consumer: EagerConsumer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The throttle waits with a timeout bound to its task: it must not start in the fetcher's."""
    buffer = consumer.app.producer.buffer
    monkeypatch.setattr(type(buffer), "size", property(lambda self: self.max_messages + 1))
    tasks: list[asyncio.Task[Any] | None] = []

    async def callback() -> None:
        tasks.append(asyncio.current_task())

    async def main() -> asyncio.Task[Any] | None:
        await _race(consumer, callback())
        return asyncio.current_task()

    fetcher = _run(consumer, main())
    assert tasks and tasks[0] is not fetcher


@pytest.mark.parametrize(("key", "value", "headers"), [
    (b"u1", b'{"a": 1}', [("h", b"v")]), (None, b"x", []), (b"k", None, []), (None, None, None),
    (b"", b"", []),
], ids=["bytes", "no key", "no value", "neither", "empty"])
def test_raw_schema_decodes_as_fausts_raw_schema_does(app_consumer: Any, key: Any, value: Any,
                                                      headers: Any) -> None:
    app = app_consumer.app
    message = Message("t", 1, 42, 1700000000.0, 0, headers, key, value, None)
    fausts = faust.Schema(key_serializer="raw", value_serializer="raw").compile(app)
    ours = RawSchema().compile(app)
    want, got = (_run(app_consumer, decode(message)) for decode in (fausts, ours))
    assert (got.key, got.value, got.headers, got.message) == (want.key, want.value, want.headers, message)
    assert type(got) is type(want)
