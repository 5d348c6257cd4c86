"""streams.reports.report queries (behind the JSON API and `funnel report`), on chDB with known rows."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from schemas import DEFAULT_FUNNEL, FunnelDefinition
from streams.reports.report import BadSelection, Selection, funnel_report, select, stalled_users, trend
from tests.named_stages import B2B, B2B_STAGES

NOW_MS = 1_769_860_800_000  # 2026-01-31T12:00:00Z
CHANNELS = ("seo", "ads", "social")
STAGES = DEFAULT_FUNNEL.names
FUNNELS = {"default": DEFAULT_FUNNEL, "short": FunnelDefinition(name="short", stages=("visit", "purchase"))}

# (user prefix, attributed channel, minutes ago of the visit, users per stage). Each
# stage comes one minute after the previous one.
COHORTS = [
    ("a", "seo", 5, [10, 5, 2, 1, 1]),
    ("b", "ads", 5, [6, 3, 0, 0, 0]),
    ("c", "tiktok", 30, [4, 4, 0, 0, 0]),  # not on the allow-list: channel "other"
    ("d", "seo", 180, [20, 2, 2, 0, 0]),
    ("e", "social", 3 * 1440, [8, 0, 0, 0, 0]),
]


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@pytest.fixture
def db(chdb_client: Client, ch_database: str) -> str:
    entries, transitions = [], []
    for prefix, channel, minutes, counts in COHORTS:
        start = NOW_MS - minutes * 60_000
        for index, (stage, count) in enumerate(zip(STAGES, counts, strict=True)):
            for i in range(count):
                ts = start + index * 60_000
                entries.append(["default", stage, index, f"{prefix}{i}", _at(ts), channel, uuid.uuid4()])
                if index:
                    transitions.append(["default", STAGES[index - 1], stage, index - 1, index,
                                        f"{prefix}{i}", _at(ts - 60_000), _at(ts), 60.0 + i, channel,
                                        uuid.uuid4(), 1, 0])
    # A corrected transition's tombstone must not count; another funnel must not leak in.
    transitions.append(["default", "visit", "purchase", 0, 4, "a9", _at(NOW_MS - 300_000),
                        _at(NOW_MS - 60_000), 240.0, "seo", uuid.uuid4(), 2, 1])
    entries.append(["short", "visit", 0, "z1", _at(NOW_MS - 60_000), "seo", uuid.uuid4()])
    chdb_client.insert(f"{ch_database}.stage_entries", entries, column_names=[
        "funnel", "stage", "stage_index", "user_id", "ts", "channel", "event_id"])
    chdb_client.insert(f"{ch_database}.transitions", transitions, column_names=[
        "funnel", "from_stage", "to_stage", "from_index", "to_index", "user_id", "from_ts", "ts",
        "seconds", "channel", "event_id", "version", "is_deleted"])
    return ch_database


def _rows(client: Client) -> Callable[[str, Mapping[str, Any]], Sequence[Sequence[Any]]]:
    return lambda sql, params: client.query(sql, parameters=dict(params)).result_rows


def _sel(db: str, period: str = "24h", channel: str = "all", funnel: str = "default") -> Selection:
    return select(FUNNELS, CHANNELS, funnel=funnel, period=period, channel=channel, now_ms=NOW_MS,
                  database=db)


@pytest.mark.parametrize(("period", "channel", "users"), [
    ("15m", "all", [16, 8, 2, 1, 1]),
    ("15m", "ads", [6, 3, 0, 0, 0]),
    ("1h", "all", [20, 12, 2, 1, 1]),
    ("1h", "other", [4, 4, 0, 0, 0]),
    ("24h", "all", [40, 14, 4, 1, 1]),
    ("24h", "seo", [30, 7, 4, 1, 1]),
    ("7d", "all", [48, 14, 4, 1, 1]),
    ("all", "social", [8, 0, 0, 0, 0]),
])
def test_entries_per_stage_follow_period_and_channel(
    chdb_client: Client, db: str, period: str, channel: str, users: list[int]
) -> None:
    report = funnel_report(_rows(chdb_client), _sel(db, period, channel))
    assert [s["users"] for s in report["stages"]] == users
    assert [s["stage"] for s in report["stages"]] == list(STAGES)


def test_conversions_period_and_cohort(chdb_client: Client, db: str) -> None:
    report = funnel_report(_rows(chdb_client), _sel(db, "15m"))
    assert [s["step_conversion"] for s in report["stages"]] == [None, 0.5, 0.25, 0.5, 1.0]
    assert [s["overall_conversion"] for s in report["stages"]] == [1.0, 0.5, 0.125, 0.0625, 0.0625]
    assert report["overall_conversion"] == 0.0625
    assert report["cohort_size"] == 16
    assert [s["cohort_users"] for s in report["stages"]] == [16, 8, 2, 1, 1]
    assert report["cohort_conversion"] == 1 / 16
    assert report["since"] == "2026-01-31T11:45:00Z" and report["until"] == "2026-01-31T12:00:00Z"


def test_cohort_counts_later_stages_outside_the_period(chdb_client: Client, db: str) -> None:
    """Cohort: people who *entered the first stage* in the period, whenever they moved on."""
    # Users d* visited 180 min ago and signed up a minute later: outside the last hour
    # (no period entries) but in the 24 h cohort.
    report = funnel_report(_rows(chdb_client), _sel(db, "24h", "seo"))
    assert report["cohort_size"] == 30
    assert [s["cohort_users"] for s in report["stages"]] == [30, 7, 4, 1, 1]


def test_empty_period_has_no_ratios(chdb_client: Client, db: str) -> None:
    report = funnel_report(_rows(chdb_client), _sel(db, "15m", "social"))
    assert [s["users"] for s in report["stages"]] == [0] * 5
    assert {s["step_conversion"] for s in report["stages"][1:]} == {None}
    assert report["overall_conversion"] is None and report["cohort_conversion"] is None
    assert report["time_to_convert"] == []


def test_time_to_convert_quantiles_in_funnel_order(chdb_client: Client, db: str) -> None:
    ttc = funnel_report(_rows(chdb_client), _sel(db, "15m"))["time_to_convert"]
    assert [(t["from_stage"], t["to_stage"], t["transitions"]) for t in ttc] == [
        ("visit", "signup", 8), ("signup", "webinar", 2), ("webinar", "consultation", 1),
        ("consultation", "purchase", 1),
    ]
    # seo users a0..a4 took 60..64 s, ads users b0..b2 took 60..62 s: sorted 60 60 61 61
    # 62 62 63 64; quantileExact takes the element at floor(q * n), no interpolation.
    first = ttc[0]
    assert (first["p50_seconds"], first["p90_seconds"]) == (62.0, 64.0)
    assert first["avg_seconds"] == pytest.approx(sum([60, 61, 62, 63, 64, 60, 61, 62]) / 8)


def test_stalled_users_by_furthest_stage(chdb_client: Client, db: str) -> None:
    rows = _rows(chdb_client)
    by_hour = stalled_users(rows, _sel(db, channel="all"), "1h")
    # d*: 18 stalled at visit, 2 at webinar (3 h ago); e*: 8 at visit (3 days ago).
    assert [(s["stage"], s["users"]) for s in by_hour["stages"]] == [
        ("visit", 26), ("signup", 0), ("webinar", 2), ("consultation", 0)]
    assert by_hour["total"] == 28
    by_day = stalled_users(rows, _sel(db, channel="all"), "1d")
    assert [s["users"] for s in by_day["stages"]] == [8, 0, 0, 0]
    assert stalled_users(rows, _sel(db, channel="seo"), "1h")["total"] == 20
    assert stalled_users(rows, _sel(db), "7d")["total"] == 0


def test_trend_buckets_cover_the_period(chdb_client: Client, db: str) -> None:
    result = trend(_rows(chdb_client), _sel(db, "15m"))
    assert result["bucket_seconds"] == 60
    buckets = result["buckets"]
    assert len(buckets) == 16  # 11:45 .. 12:00 inclusive
    assert buckets[0]["start"] == "2026-01-31T11:45:00Z" and buckets[-1]["start"] == "2026-01-31T12:00:00Z"
    by_start = {b["start"]: b for b in buckets}
    visits = by_start["2026-01-31T11:55:00Z"]
    assert visits["entries"] == {"visit": 16, "signup": 0, "webinar": 0, "consultation": 0, "purchase": 0}
    assert visits["cohort_size"] == 16 and visits["cohort_converted"] == 1
    assert visits["cohort_conversion"] == 1 / 16 and visits["period_conversion"] == 0.0
    assert by_start["2026-01-31T11:59:00Z"]["entries"]["purchase"] == 1
    assert by_start["2026-01-31T11:50:00Z"]["period_conversion"] is None  # no visits: no ratio
    assert sum(b["entries"]["visit"] for b in buckets) == 16


def test_trend_all_starts_at_the_first_data(chdb_client: Client, db: str) -> None:
    buckets = trend(_rows(chdb_client), _sel(db, "all"))["buckets"]
    assert buckets[0]["start"] == "2026-01-28T00:00:00Z" and len(buckets) == 4
    assert [b["entries"]["visit"] for b in buckets] == [8, 0, 0, 40]


def test_other_funnel_is_separate(chdb_client: Client, db: str) -> None:
    report = funnel_report(_rows(chdb_client), _sel(db, "15m", funnel="short"))
    assert [(s["stage"], s["users"]) for s in report["stages"]] == [("visit", 1), ("purchase", 0)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"funnel": "nope"}, "funnel 'nope' is not one of: default, short"),
    ({"period": "2d"}, "range '2d' is not one of: 15m, 1h, 24h, 7d, all"),
    ({"channel": "tiktok"}, "channel 'tiktok' is not one of: all, seo, ads, social, other"),
    ({"channel": "seo' OR 1=1 --"}, "is not one of"),
])
def test_selection_is_checked_against_allow_lists(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(BadSelection, match=message.replace("(", r"\(")):
        select(FUNNELS, CHANNELS, now_ms=NOW_MS, **kwargs)


def test_selection_defaults() -> None:
    sel = select(FUNNELS, CHANNELS, now_ms=NOW_MS)
    assert (sel.funnel.name, sel.range, sel.channel) == ("default", "24h", "all")
    with pytest.raises(BadSelection, match="stalled threshold '2h'"):
        stalled_users(lambda sql, p: [], sel, "2h")


# -- a funnel whose stage names are not event types (tests/named_stages.py) -------------------
# (person, channel, the stages they entered, one a minute from 3 h ago). b3 skipped pricing
# (a lead who never saw the pricing page). x0 entered every stage but an exclude event took
# them out: their rows carry excluded = 1 and count nowhere.
B2B_PERSONS = [
    ("b0", "seo", ["visit", "pricing", "lead", "mql", "won"]),
    ("b1", "seo", ["visit", "pricing", "lead", "mql"]),
    ("b2", "ads", ["visit", "pricing", "lead"]),
    ("b3", "ads", ["visit", "lead"]),
    ("b4", "seo", ["visit", "pricing"]),
    ("b5", "seo", ["visit", "pricing"]),
    ("b6", "ads", ["visit", "pricing"]),
    ("b7", "seo", ["visit"]),
    ("b8", "ads", ["visit"]),
    ("b9", "seo", ["visit"]),
]
B2B_EXCLUDED = ("x0", "seo", list(B2B_STAGES))


@pytest.fixture
def b2b_db(chdb_client: Client, ch_database: str) -> str:
    start = NOW_MS - 180 * 60_000
    entries, transitions = [], []
    for (person, channel, stages), excluded in [*((p, 0) for p in B2B_PERSONS), (B2B_EXCLUDED, 1)]:
        for k, stage in enumerate(stages):
            ts = start + k * 60_000
            entries.append(["b2b", stage, B2B_STAGES.index(stage), person, _at(ts), channel, uuid.uuid4(),
                            excluded])
            if k:
                before = stages[k - 1]
                transitions.append(["b2b", before, stage, B2B_STAGES.index(before), B2B_STAGES.index(stage),
                                    person, _at(ts - 60_000), _at(ts), 60.0, channel, uuid.uuid4(), 1, 0,
                                    excluded])
    chdb_client.insert(f"{ch_database}.stage_entries", entries, column_names=[
        "funnel", "stage", "stage_index", "user_id", "ts", "channel", "event_id", "excluded"])
    chdb_client.insert(f"{ch_database}.transitions", transitions, column_names=[
        "funnel", "from_stage", "to_stage", "from_index", "to_index", "user_id", "from_ts", "ts",
        "seconds", "channel", "event_id", "version", "is_deleted", "excluded"])
    return ch_database


def _b2b(db: str, period: str = "24h", channel: str = "all") -> Selection:
    return select({"default": DEFAULT_FUNNEL, "b2b": B2B}, CHANNELS, funnel="b2b", period=period,
                  channel=channel, now_ms=NOW_MS, database=db)


def test_named_stages_report_in_funnel_order(chdb_client: Client, b2b_db: str) -> None:
    """Stages are the funnel's names (pricing is a visit, lead and mql are signups, won a
    purchase), in its order; the excluded person counts nowhere."""
    report = funnel_report(_rows(chdb_client), _b2b(b2b_db))
    assert (report["funnel"], report["stages"][0]["stage"]) == ("b2b", "visit")
    assert [(s["stage"], s["users"]) for s in report["stages"]] == [
        ("visit", 10), ("pricing", 6), ("lead", 4), ("mql", 2), ("won", 1)]
    assert [s["step_conversion"] for s in report["stages"]] == [None, 0.6, 4 / 6, 0.5, 0.5]
    assert report["overall_conversion"] == 0.1
    assert (report["cohort_size"], report["cohort_conversion"]) == (10, 0.1)
    assert [s["cohort_users"] for s in report["stages"]] == [10, 6, 4, 2, 1]
    # Transitions in funnel order, the skip visit -> lead between visit -> pricing and pricing -> lead.
    assert [(t["from_stage"], t["to_stage"], t["transitions"]) for t in report["time_to_convert"]] == [
        ("visit", "pricing", 6), ("visit", "lead", 1), ("pricing", "lead", 3), ("lead", "mql", 2),
        ("mql", "won", 1)]
    ads = funnel_report(_rows(chdb_client), _b2b(b2b_db, channel="ads"))
    assert [s["users"] for s in ads["stages"]] == [4, 2, 2, 0, 0]


def test_named_stages_trend_and_stalled(chdb_client: Client, b2b_db: str) -> None:
    rows = _rows(chdb_client)
    result = trend(rows, _b2b(b2b_db))
    assert result["stages"] == list(B2B_STAGES)
    (busy,) = [b for b in result["buckets"] if b["entries"]["visit"]]
    assert busy["start"] == "2026-01-31T09:00:00Z"
    assert busy["entries"] == {"visit": 10, "pricing": 6, "lead": 4, "mql": 2, "won": 1}
    assert busy["period_conversion"] == 0.1
    assert (busy["cohort_size"], busy["cohort_converted"]) == (10, 1)
    # Furthest stage: b1 at mql, b2 and b3 at lead, b4..b6 at pricing, b7..b9 at visit; b0 won.
    stalled = stalled_users(rows, _b2b(b2b_db), "1h")
    assert [(s["stage"], s["users"]) for s in stalled["stages"]] == [
        ("visit", 3), ("pricing", 3), ("lead", 2), ("mql", 1)]
    assert stalled["total"] == 9
    ads = stalled_users(rows, _b2b(b2b_db, channel="ads"), "1h")
    assert [s["users"] for s in ads["stages"]] == [1, 1, 2, 0]
