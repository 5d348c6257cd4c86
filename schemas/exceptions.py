"""Errors that are part of the schemas API."""

from __future__ import annotations

__all__ = ["FunnelConfigError", "InvalidEvent"]


class InvalidEvent(ValueError):
    """A message that cannot become an event.

    ``reason`` is a short machine-readable code from a fixed set (it becomes a
    Prometheus label and the dead-letter header); ``detail`` is for people.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FunnelConfigError(ValueError):
    """The funnel configuration is unusable; the message names source, funnel and problem."""
