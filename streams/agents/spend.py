"""The spend agent: marketing spend reports -> ClickHouse ``spend`` and the spend counter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from faust import Stream
from faust.types import EventT

from schemas import Decoder, InvalidEvent
from sinks import ClickHouseSink, FunnelMetrics
from streams.agents.deadletter import DeadLetters
from streams.agents.runner import Finish, batch_token
from streams.faust_adapt.envelopes import records_of

__all__ = ["SpendAgent"]


class SpendAgent:
    """Validates spend reports; invalid ones go to the dead letters."""

    def __init__(self, decoder: Decoder, metrics: FunnelMetrics, sink: ClickHouseSink,
                 dead_letters: DeadLetters) -> None:
        self.decoder, self.metrics, self.sink, self.dead_letters = decoder, metrics, sink, dead_letters

    async def batch(self, stream: Stream, events: Sequence[EventT]) -> Finish:
        """The batch body (a :data:`~streams.agents.runner.Handle`)."""
        now_ms = int(time.time() * 1000)
        pending: list[Awaitable[Any]] = []
        spend: list[tuple[Any, ...]] = []
        for event in events:
            for msg in records_of(event):
                source = f"{msg.topic}:{msg.partition}:{msg.offset}"
                try:
                    row = self.decoder.decode_spend(msg.value, source)
                except InvalidEvent as exc:
                    pending.append(await self.dead_letters.send(msg, exc, source))
                    continue
                spend.append((*row.values(), now_ms))
                self.metrics.spend.labels(self.metrics.channel(row["channel"]), row["currency"]).inc(
                    float(row["amount"])
                )
        # Added and taken with no await in between: this batch's rows only (the
        # batch before may be handled again meanwhile, see BatchRunner.run).
        self.sink.extend("spend", spend)
        rows, token = self.sink.take(), batch_token("spend", events)

        async def finish() -> None:
            await self.sink.write_taken(rows, token)
            await asyncio.gather(*pending)

        return finish
