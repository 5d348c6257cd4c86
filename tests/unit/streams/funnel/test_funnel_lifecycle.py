"""Conversion-window drop-offs and stalled-lead tracking."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from schemas import DEFAULT_FUNNEL, FunnelDefinition
from streams.funnel.journey import UserState, apply_event, expire_window, furthest, window_ms
from streams.funnel.lifecycle import DeadlineWheel, StallTracker, WindowDeadline, WindowDeadlines

HOUR = 3_600_000
DAY_FUNNEL = FunnelDefinition(name="default", stages=DEFAULT_FUNNEL.names, conversion_window_days=1)


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


@pytest.mark.parametrize("width", [1, 7, 1000, 10**9])
def test_deadline_wheel_releases_what_a_sorted_list_would(width: int) -> None:
    rng = random.Random(width)
    wheel = DeadlineWheel(width)
    pending: list[tuple[int, bytes, int]] = []
    released: list[tuple[int, bytes, int]] = []
    clock = -5_000
    for step in range(3_000):
        due = clock + rng.randint(-50, 2_000)  # some already past, most ahead
        entry = (due, f"k{step}".encode(), rng.randint(0, 3))
        wheel.push(*entry)
        pending.append(entry)
        if step % 7 == 0:
            clock += rng.randint(0, 300)
            got = list(wheel.pop_until(clock))
            assert [d for d, _, _ in got] == sorted(d for d, _, _ in got)
            released.extend(got)
    released.extend(wheel.pop_until(10**12))
    assert len(wheel) == 0
    assert sorted(released) == sorted(pending)  # each entry once, none lost


def test_deadline_wheel_releases_exactly_up_to_the_limit_and_keeps_arrival_order_for_ties() -> None:
    wheel = DeadlineWheel(100)
    for due, key in [(250, b"c"), (120, b"a"), (250, b"d"), (120, b"b"), (-30, b"n"), (400, b"z")]:
        wheel.push(due, key, 0)
    assert [k for _, k, _ in wheel.pop_until(249)] == [b"n", b"a", b"b"]
    assert len(wheel) == 3
    wheel.push(260, b"e", 0)  # into the bucket that is half released
    wheel.push(10, b"old", 0)  # already past: comes out with the next call
    assert [k for _, k, _ in wheel.pop_until(300)] == [b"old", b"c", b"d", b"e"]
    assert [k for _, k, _ in wheel.pop_until(300)] == []
    wheel.clear()
    assert len(wheel) == 0 and list(wheel.pop_until(10**9)) == []


def test_deadline_wheel_takes_pushes_while_it_releases() -> None:
    """What StallTracker.advance does: every released user is placed again, further ahead."""
    wheel = DeadlineWheel(10)
    for n in range(100):
        wheel.push(n, str(n).encode(), n)
    seen = []
    for due, key, tag in wheel.pop_until(50):
        seen.append(due)
        wheel.push(due + 51, key, tag)  # beyond the limit, maybe in the current bucket
    assert seen == list(range(51))
    assert len(wheel) == 100
    assert [d for d, _, _ in wheel.pop_until(10**6)] == sorted([*range(51, 100), *range(51, 102)])


def test_trackers_keep_a_million_users_small() -> None:
    """What the 1 GiB target for a worker with 1 000 000 users leaves the trackers (bytes per user)."""
    users = [f"user-{n:07d}".encode() for n in range(50_000)]  # the keys exist anyway (the table's)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        stalls, windows = StallTracker(HOUR, 24 * HOUR, 7 * 24 * HOUR), WindowDeadlines()
        now = 1_795_000_000_000
        for n, key in enumerate(users):
            windows.schedule(n % 4, key, "default", "visit", now + n, 14 * 24 * HOUR)
            stalls.update(key, "default", "visit", last=now + n, now=now + n)
        per_user = (tracemalloc.get_traced_memory()[0] - before) / len(users)
    finally:
        tracemalloc.stop()
    assert len(stalls) == len(windows) == len(users)
    print(f"trackers: {per_user:.0f} bytes per user")
    assert per_user < 160, per_user


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
    for i, stage in enumerate(DAY_FUNNEL.names):
        apply_event(buyer, make_event(stage, "b", at=i), DAY_FUNNEL)
    stage, entered = furthest(buyer, DAY_FUNNEL) or ("", 0)
    assert expire_window(buyer, DAY_FUNNEL, "b", stage, entered) is None  # the last stage


@pytest.mark.parametrize("channel", [None, "ads"], ids=["same-touch", "earlier-touch"])
def test_a_dropoff_whose_entry_moves_earlier_ends_its_window_that_much_earlier(make_event, channel) -> None:
    """dropped_at is entered_at + the window (the DDL says so), also once the entry moved.

    A signup at hour 10 dropped off at hour 34; a signup at hour 2 arrives
    late. Before, the drop-off kept hour 34: not written again (same touch),
    or written again by the re-attribution with entered_at hour 2 and
    dropped_at hour 34 (found by tests/unit/streams/agents/test_order_properties.py).
    """
    state: UserState = {}
    apply_event(state, make_event("signup", "u1", at=10 * 3600), DAY_FUNNEL)
    drop = expire_window(state, DAY_FUNNEL, "u1", "signup", furthest(state, DAY_FUNNEL)[1])
    assert drop is not None
    late = make_event("signup", "u1", at=2 * 3600, channel=channel)
    result = apply_event(state, late, DAY_FUNNEL)
    [moved] = set(result.dropoffs)  # once, or twice alike (the re-attribution writes every row again)
    assert (moved.entered_ts, moved.dropped_ts, moved.deleted) == (
        late["ts"], late["ts"] + window_ms(DAY_FUNNEL), False)
    assert moved.version > drop.version and not moved.first
    # Progress after the earlier window's end no longer retracts it.
    assert apply_event(state, make_event("webinar", "u1", at=30 * 3600), DAY_FUNNEL).dropoffs == []
