"""The dead-letter topic: an invalid message's original bytes, with the reason in its headers."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from schemas import InvalidEvent
from sinks import FunnelMetrics

__all__ = ["DEAD_LETTER_MAX_BYTES", "DeadLetters"]

#: Largest dead-letter value sent as is (below the producer's 1 MB request limit).
DEAD_LETTER_MAX_BYTES = 900_000


class DeadLetters:
    """Sends invalid messages to ``topic`` (a Faust topic) and counts them by reason."""

    def __init__(self, topic: Any, metrics: FunnelMetrics) -> None:
        self.topic, self.metrics = topic, metrics

    async def send(self, msg: Any, exc: InvalidEvent, source: str) -> Awaitable[Any]:
        """Send the original bytes of record ``msg`` with the reason; count it. Returns the delivery.

        A payload larger than one producer request (about 1 MB) cannot be sent
        again: its first DEAD_LETTER_MAX_BYTES go, with a ``truncated`` header
        giving the original size, rather than stopping the worker.
        """
        self.metrics.child(self.metrics.invalid_events, exc.reason).inc()
        value = msg.value or b""
        headers = [
            ("reason", exc.reason.encode()),
            ("detail", exc.detail[:1000].encode()),
            ("source", source.encode()),
        ]
        if len(value) > DEAD_LETTER_MAX_BYTES:
            headers.append(("truncated", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        return await self.topic.send(key=msg.key, value=value, headers=headers)
