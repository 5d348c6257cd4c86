"""Faust app, topics, agents (ingest, journeys, windows), embedded broker and CLI."""

from streams.journey import JourneyResult, StageEntry, Transition, apply_event
from streams.settings import Settings, load_funnels
from streams.windows import WindowAggregator, window_start

__all__ = [
    "JourneyResult",
    "Settings",
    "StageEntry",
    "Transition",
    "WindowAggregator",
    "apply_event",
    "load_funnels",
    "window_start",
]
