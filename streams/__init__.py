"""Faust app, topics, agents (ingest, journeys, windows), embedded broker and CLI."""

from streams.funnel.journey import apply_event
from streams.funnel.outputs import JourneyResult, StageEntry, Transition
from streams.funnel.windows import WindowAggregator, window_start
from streams.settings import Settings, load_funnels

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
