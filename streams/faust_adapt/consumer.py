"""Faust's Kafka consumer, minus four tasks per message, and a decoder without codecs for raw bytes.

Faust's fetcher hands every message to the conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: the
callback is raced against a flow suspension (a rebalance), which costs four
tasks (callback, suspension, stopped, crashed) and an ``asyncio.wait`` per
message - the largest single cost of a worker (BENCHMARKS.md). Yet the
callback nearly always finishes without waiting for anything: it decodes the
message and puts it on a channel queue that has room.

:class:`EagerConsumer` runs the callback's first step directly. If the
callback finishes there, the race is already decided: it completed while the
flow was not suspended, which is what ``wait_first`` would have reported. If
it has to wait (flow control, a full queue), the rest of it goes through
Faust's ``wait_first`` as before, so a suspension still abandons it. The
messages, their order, acknowledgements and commits are Faust's, unchanged.

The rest runs in another task than its first step did, so that step must not
have entered anything bound to the current task (``asyncio.timeout``, which
``asyncio.wait_for`` uses from Python 3.12). The only such wait in Faust's
callback is the producer-buffer throttle (``wait_until_ebb``): while the
buffer is above its limit, messages take Faust's path from the start.

:class:`RawSchema` is the schema of topics whose keys and values stay the
broker's bytes. Faust's schema decodes each of them through its codec
registry (a lookup, the ``raw`` codec, payload checks: three frames per
message); the raw codec gives the bytes back unchanged, so this schema makes
the event from the message's own bytes.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

import faust
from faust.transport.drivers.aiokafka import Consumer
from faust.types import AppT, EventT, Message
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

__all__ = ["EagerConsumer", "RawSchema"]


async def _continue(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    return await _resume(coro, waiting)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    """Continue ``coro``, which already ran up to yielding ``waiting`` to the event loop.

    What ``yield from coro`` would do after its first step: pass what the
    loop sends or throws (a result, a cancellation) through to ``coro``.
    """
    while True:
        try:
            sent = yield waiting
        except BaseException as exc:  # cancellation included: coro decides
            try:
                waiting = coro.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as done:
                return done.value


class EagerConsumer(Consumer):
    """The aiokafka consumer whose per-message race runs its first step eagerly."""

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        if timeout is not None:
            return await super().wait_first(*coros, timeout=timeout)
        first = coros[0] if coros else None
        buffer = self.app.producer.buffer
        if (not asyncio.iscoroutine(first) or self.suspend_flow.is_set() or self._stopped.is_set()
                or self._crashed.is_set() or buffer.size > buffer.max_messages):
            return await super().wait_first(*coros)
        rest = coros[1:]
        try:
            waiting = first.send(None)
        except StopIteration as done:
            _close(rest)
            return WaitResults([first], [done.value], False)
        except BaseException:
            _close(rest)
            raise
        return await super().wait_first(_continue(first, waiting), *rest)


def _close(coros: tuple[WaitArgT, ...]) -> None:
    """Close the racers that never ran (an unawaited coroutine warns when collected)."""
    for coro in coros:
        if asyncio.iscoroutine(coro):
            coro.close()


class RawSchema(faust.Schema):
    """Keys and values as the broker's bytes (Faust's ``raw`` serializer), decoded without codecs.

    Sending is Faust's (``raw``: bytes pass unchanged). Decoding gives what
    Faust's would for bytes or no bytes under the ``raw`` codec with no
    key or value type: the message's own key and value.
    """

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def compile(self, app: AppT, **kwargs: Any) -> Any:
        create_event = app.create_event

        async def decode(message: Message, *, propagate: bool = False) -> EventT:
            return create_event(message.key, message.value, message.headers, message)

        return decode
