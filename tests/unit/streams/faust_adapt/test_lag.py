"""streams.faust_adapt.lag: consumer lag from Faust's own committed and read offsets."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP as tp

from streams.faust_adapt.lag import consumer_lag


def test_consumer_lag_counts_input_topics_only() -> None:
    assigned = [tp(topic="f.visit", partition=0), tp(topic="f.normalized", partition=1),
                tp(topic="f.dead-letter", partition=0), tp(topic="app-journeys-changelog", partition=0),
                tp(topic="f.visit", partition=1)]
    high = {("f.visit", 0): 120, ("f.normalized", 1): 50, ("f.dead-letter", 0): 7,
            ("app-journeys-changelog", 0): 999, ("f.visit", 1): None}
    consumer = SimpleNamespace(
        assignment=lambda: assigned,
        highwater=lambda t: high[(t.topic, t.partition)],
        _committed_offset={assigned[0]: 100, assigned[2]: 7},
        _read_offset={assigned[1]: 44},  # nothing committed yet: next after the read one
    )
    assert consumer_lag(consumer, {"f.visit", "f.normalized"}) == 20 + 5 + 0
    assert consumer_lag(None, {"f.visit"}) is None  # no consumer yet: unknown, not zero
