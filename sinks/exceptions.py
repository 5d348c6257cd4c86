"""Errors that are part of the sinks API."""

from __future__ import annotations

__all__ = ["SinkConfigError", "SinkRetryableError", "SinkStopped"]


class SinkRetryableError(Exception):
    """A write failed for a reason that goes away (connection, timeout, overload).

    The write loop turns it into backoff and backpressure; nothing is dropped.
    """


class SinkStopped(Exception):
    """The sink was asked to stop while a batch was still unwritten.

    The caller must not acknowledge the batch: it will be consumed again.
    """


class SinkConfigError(ValueError):
    """A sink URL or option is unusable; the message says which and why."""
