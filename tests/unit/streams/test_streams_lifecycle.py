"""Conversion-window drop-offs and stalled-lead tracking."""

from __future__ import annotations

import pytest

from schemas import DEFAULT_FUNNEL, FunnelDefinition
from streams.journey import UserState, apply_event, expire_window, furthest, window_ms
from streams.lifecycle import StallTracker, WindowDeadline, WindowDeadlines

HOUR = 3_600_000
DAY_FUNNEL = FunnelDefinition(name="default", stages=DEFAULT_FUNNEL.stages, conversion_window_days=1)


def test_stall_tracker_moves_users_through_temperatures() -> None:
    t = StallTracker(HOUR, 24 * HOUR, 7 * 24 * HOUR)
    t.update(b"a", "f", "visit", last=0, now=0)
    t.update(b"b", "f", "signup", last=0, now=0)
    assert t.counts() == {}  # active
    assert t.advance(2 * HOUR) == 2
    assert t.counts() == {("f", "visit", "hot"): 1, ("f", "signup", "hot"): 1}
    t.update(b"b", "f", "webinar", last=2 * HOUR, now=2 * HOUR)  # b progressed: active again
    t.advance(20 * HOUR)
    assert t.counts() == {("f", "visit", "hot"): 1, ("f", "webinar", "hot"): 1}
    t.advance(30 * HOUR)  # a idle 30 h, b idle 28 h
    assert t.counts() == {("f", "visit", "warm"): 1, ("f", "webinar", "warm"): 1}
    t.update(b"a", "f", None, last=30 * HOUR, now=30 * HOUR)  # a bought: no longer a lead
    t.advance(400 * HOUR)
    assert t.counts() == {("f", "webinar", "cold"): 1}
    assert len(t) == 1


def test_stall_tracker_skips_deadlines_of_users_who_moved_on() -> None:
    t = StallTracker(HOUR, 2 * HOUR, 3 * HOUR)
    for last in range(0, 10 * HOUR, HOUR // 2):  # twenty updates, one live deadline
        t.update(b"a", "f", "visit", last=last, now=last)
    assert t.advance(10 * HOUR + HOUR) == 1
    assert t.counts() == {("f", "visit", "hot"): 1}


@pytest.mark.parametrize("last", [-7 * 24 * HOUR - 1, 0, 1_795_000_000_000, 2**50 + 3])
def test_stall_tracker_keeps_stage_level_and_time_of_many_users_and_funnels(last: int) -> None:
    stages = [f"stage-{n}" for n in range(300)]
    t = StallTracker(HOUR, 24 * HOUR, 7 * 24 * HOUR)
    for n, stage in enumerate(stages):
        t.update(f"u{n}".encode(), f"f{n % 3}", stage, last=last, now=last + n * HOUR)
    assert len(t) == len(stages)
    expected = {(f"f{n % 3}", stage, "hot" if n < 24 else "warm" if n < 168 else "cold"): 1
                for n, stage in enumerate(stages) if n}
    assert t.counts() == expected
    t.advance(last + 1000 * HOUR)  # everyone cold; each user counted once, under their stage
    assert t.counts() == {(f"f{n % 3}", stage, "cold"): 1 for n, stage in enumerate(stages)}
    t.update(b"u5", "f2", "stage-299", last=last + 1000 * HOUR, now=last + 1000 * HOUR)
    assert ("f2", "stage-5", "cold") not in t.counts() and len(t) == len(stages)


def test_stall_tracker_rejects_unordered_thresholds() -> None:
    with pytest.raises(ValueError, match="stall_after"):
        StallTracker(2 * HOUR, HOUR, 3 * HOUR)


def test_window_deadlines_release_per_partition_in_order() -> None:
    d = WindowDeadlines()
    d.schedule(0, b"late", "f", "visit", entered=5 * HOUR, window_ms=HOUR)
    d.schedule(0, b"early", "f", "visit", entered=0, window_ms=HOUR)
    d.schedule(1, b"other", "f", "visit", entered=0, window_ms=HOUR)
    assert [x.key for x in d.due(0, 2 * HOUR)] == [b"early"]
    assert [x.key for x in d.due(0, 10 * HOUR)] == [b"late"]
    assert len(d) == 1  # partition 1 has its own watermark


def test_window_deadlines_give_back_what_was_scheduled() -> None:
    d = WindowDeadlines()
    d.schedule(0, b"a", "week", "signup", entered=3 * HOUR, window_ms=7 * 24 * HOUR)
    d.schedule(0, b"b", "day", "webinar", entered=-HOUR, window_ms=24 * HOUR)
    assert list(d.due(0, 10**12)) == [
        WindowDeadline(23 * HOUR, b"b", "day", "webinar", -HOUR),
        WindowDeadline(171 * HOUR, b"a", "week", "signup", 3 * HOUR),
    ]


def test_window_expiry_drops_the_user_once_and_late_progress_retracts_it(make_event) -> None:
    state: UserState = {}
    apply_event(state, make_event("visit", "u1", at=0, channel="ads"), DAY_FUNNEL)
    stage, entered = furthest(state, DAY_FUNNEL) or ("", 0)
    drop = expire_window(state, DAY_FUNNEL, "u1", stage, entered)
    assert drop is not None
    assert (drop.stage, drop.dropped_ts - drop.entered_ts, drop.channel, drop.first) == (
        "visit", window_ms(DAY_FUNNEL), "ads", True)
    assert expire_window(state, DAY_FUNNEL, "u1", stage, entered) is None  # once
    # A signup inside the window, arriving late: not lost after all.
    result = apply_event(state, make_event("signup", "u1", at=3600), DAY_FUNNEL)
    assert [(d.stage, d.deleted, d.version > drop.version) for d in result.dropoffs] == [
        ("visit", True, True)]
    # A replay re-emits the drop-off as it stands (retracted).
    replay = apply_event(state, make_event("signup", "u1", at=3600, event_id=result.entries[0].event_id),
                         DAY_FUNNEL)
    assert replay.duplicate and [(d.stage, d.deleted) for d in replay.dropoffs] == [("visit", True)]


def test_progress_after_the_window_keeps_the_dropoff(make_event) -> None:
    state: UserState = {}
    apply_event(state, make_event("visit", "u1", at=0), DAY_FUNNEL)
    assert expire_window(state, DAY_FUNNEL, "u1", "visit", furthest(state, DAY_FUNNEL)[1]) is not None
    result = apply_event(state, make_event("signup", "u1", at=3 * 86400), DAY_FUNNEL)
    assert result.dropoffs == []  # still lost at visit: converting after the window is too late


def test_no_dropoff_for_users_who_moved_on_or_finished(make_event) -> None:
    state: UserState = {}
    apply_event(state, make_event("visit", "u1", at=0), DAY_FUNNEL)
    apply_event(state, make_event("signup", "u1", at=60), DAY_FUNNEL)
    assert expire_window(state, DAY_FUNNEL, "u1", "visit", 0) is None  # moved on
    buyer: UserState = {}
    for i, stage in enumerate(DAY_FUNNEL.stages):
        apply_event(buyer, make_event(stage, "b", at=i), DAY_FUNNEL)
    stage, entered = furthest(buyer, DAY_FUNNEL) or ("", 0)
    assert expire_window(buyer, DAY_FUNNEL, "b", stage, entered) is None  # the last stage
