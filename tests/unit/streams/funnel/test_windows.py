"""streams.funnel.windows: window assignment, per-batch memberships, per-partition watermarks."""

from __future__ import annotations

import pytest

from streams.funnel.windows import ENTRY, TRANSITION, Membership, Watermarks, WindowAggregator, window_start

MINUTE_MS = 60_000
T = 1_769_860_800  # 2026-01-31T12:00:00Z, a whole hour
MIDNIGHT = T - 12 * 3600  # 2026-01-31T00:00:00Z


@pytest.mark.parametrize(
    ("ts_ms", "size", "expected"),
    [
        pytest.param(0, 60, 0, id="epoch"),
        pytest.param(59_999, 60, 0, id="last-ms-of-first-window"),
        pytest.param(60_000, 60, 60, id="exact-boundary"),
        pytest.param(T * 1000, 60, T, id="exact-multiple"),
        pytest.param(T * 1000 - 1, 60, T - 60, id="one-ms-before"),
        pytest.param(T * 1000 + 59_999, 60, T, id="end-of-window"),
        pytest.param(T * 1000 + 1_999, 1, T + 1, id="one-second"),
        pytest.param(T * 1000 + 3_599_999, 3600, T, id="hour"),
        pytest.param(T * 1000, 86_400, MIDNIGHT, id="day-from-midnight-utc"),
        pytest.param(MIDNIGHT * 1000 - 1, 86_400, MIDNIGHT - 86_400, id="day-before"),
        pytest.param(T * 1000 + 301_000, 300, T + 300, id="five-minutes"),
    ],
)
def test_window_start(ts_ms: int, size: int, expected: int) -> None:
    assert window_start(ts_ms, size) == expected


@pytest.mark.parametrize("size", [0, -60])
def test_window_size_must_be_positive(size: int) -> None:
    with pytest.raises(ValueError, match="window size must be positive"):
        WindowAggregator(size)


def entry(agg: WindowAggregator, user: str, ts_ms: int = T * 1000, stage: str = "visit",
          channel: str = "ads", funnel: str = "default") -> Membership:
    return agg.add(ts_ms, funnel, ENTRY, "", stage, channel, user)


def test_add_returns_the_membership_row() -> None:
    agg = WindowAggregator(60)
    assert agg.add(T * 1000 + 61_500, "default", TRANSITION, "visit", "signup", "seo", "u1", 3) == (
        Membership(T + 60, 60, "default", "transition", "visit", "signup", "seo", "u1", 3, 0)
    )


def test_distinct_users_per_key() -> None:
    agg = WindowAggregator(60)
    for user in ("u1", "u2", "u1", "u3", "u2"):
        entry(agg, user)
    entry(agg, "u1", stage="signup", ts_ms=T * 1000 + 5_000)
    entry(agg, "u9", ts_ms=T * 1000 + MINUTE_MS)  # next window
    entry(agg, "u1", channel="seo", funnel="b2b")
    assert len(agg) == 6
    assert agg.counts() == {
        (T, "default", ENTRY, "", "visit", "ads"): 3,
        (T, "default", ENTRY, "", "signup", "ads"): 1,
        (T + 60, "default", ENTRY, "", "visit", "ads"): 1,
        (T, "b2b", ENTRY, "", "visit", "seo"): 1,
    }


def test_rows_are_one_per_user_and_key() -> None:
    agg = WindowAggregator(300)
    entry(agg, "u2", ts_ms=T * 1000 + 299_999)
    entry(agg, "u1")
    entry(agg, "u2")  # the same membership again (a replay within the batch)
    assert sorted(agg.rows()) == [
        Membership(T, 300, "default", ENTRY, "", "visit", "ads", "u1", 1, 0),
        Membership(T, 300, "default", ENTRY, "", "visit", "ads", "u2", 1, 0),
    ]
    agg.clear()
    assert (list(agg.rows()), agg.counts(), len(agg)) == ([], {}, 0)


def test_highest_version_wins_and_tombstones_are_not_counted() -> None:
    agg = WindowAggregator(60)
    ts = T * 1000 + 10_000
    agg.add(ts, "default", TRANSITION, "visit", "webinar", "ads", "u1", 1)
    agg.add(ts, "default", TRANSITION, "signup", "webinar", "ads", "u1", 3)
    agg.add(ts, "default", TRANSITION, "visit", "webinar", "ads", "u1", 2)  # older, arrives last
    agg.add(ts, "default", TRANSITION, "", "purchase", "ads", "u1", 4, True)
    assert sorted(agg.rows()) == [
        Membership(T, 60, "default", TRANSITION, "", "purchase", "ads", "u1", 4, 1),
        Membership(T, 60, "default", TRANSITION, "signup", "webinar", "ads", "u1", 3, 0),
    ]
    assert agg.counts() == {(T, "default", TRANSITION, "signup", "webinar", "ads"): 1}


def test_same_version_again_takes_the_later_row() -> None:
    # As ClickHouse does for equal versions: the last row written wins.
    agg = WindowAggregator(60)
    entry(agg, "u1", channel="ads")
    entry(agg, "u1", channel="seo")
    assert list(agg.rows()) == [Membership(T, 60, "default", ENTRY, "", "visit", "seo", "u1", 1, 0)]


def test_watermark_late_detection_per_partition() -> None:
    marks = Watermarks(allowed_lateness_seconds=300)
    base = T * 1000
    assert marks.observe(0, base) is False  # first event of a partition
    assert marks.observe(0, base + 600_000) is False  # advances the mark
    assert marks.observe(0, base + 300_000) is False  # exactly the allowed lateness
    assert marks.observe(0, base + 299_999) is True
    assert marks.observe(1, base) is False  # another partition has its own mark
    assert marks.observe(1, base - 300_001) is True
    assert marks.observe(0, base + 299_999) is True  # a late event does not move the mark


def test_zero_lateness_and_forgetting_partitions() -> None:
    marks = Watermarks(allowed_lateness_seconds=0)
    assert [marks.observe("p0", ts) for ts in (1000, 1000, 999)] == [False, False, True]
    marks.forget(["p0", "never-seen"])
    assert marks.observe("p0", 999) is False  # revoked and reassigned: starts afresh
