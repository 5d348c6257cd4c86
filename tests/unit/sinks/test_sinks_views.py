"""The ClickHouse views on fixed data sets, with exact expected numbers."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from schemas import DEFAULT_FUNNEL, FunnelDefinition, FunnelsConfig, NormalizedEvent

from ..conftest import MakeEvent
from .analytics_data import load_events, query

DAY = 86400


def _journeys(make_event: MakeEvent, counts: list[int], stages: tuple[str, ...], gap: float = 600,
              **fields: Any) -> list[NormalizedEvent]:
    """counts[i] users reach stages[i] (the first counts[i] users), ``gap`` seconds apart."""
    return [
        make_event(stage, f"u{u}", at=u + i * gap, **fields)
        for i, (stage, n) in enumerate(zip(stages, counts, strict=True))
        for u in range(n)
    ]


def test_four_stage_funnel_100000_7000_5000_1000(chdb_client: Client, ch_database: str,
                                                 make_event: MakeEvent) -> None:
    stages = ("visit", "signup", "consultation", "purchase")
    config = FunnelsConfig(funnels=(FunnelDefinition(name="aida", stages=stages),))
    counts = [100_000, 7_000, 5_000, 1_000]
    load_events(chdb_client, ch_database, _journeys(make_event, counts, stages, funnel=None), config)
    rows = query(chdb_client, ch_database,
                 "SELECT stage, sum(users), any(previous_stage_users) FROM funnel.conversion_by_day_channel"
                 " GROUP BY stage, stage_index ORDER BY stage_index")
    assert [(s, n) for s, n, _ in rows] == list(zip(stages, counts, strict=True))
    overall = query(chdb_client, ch_database,
                    "SELECT countIf(stage = 'purchase') / countIf(stage = 'visit') "
                    "FROM funnel.stage_entries FINAL WHERE funnel = 'aida'")
    assert overall == [(0.01,)]
    cohort = query(chdb_client, ch_database,
                   "SELECT from_stage, to_stage, sum(entered), sum(converted) FROM funnel.cohort_conversion"
                   " GROUP BY from_stage, to_stage ORDER BY from_stage, to_stage")
    assert ("visit", "purchase", 100_000, 1_000) in cohort
    assert ("signup", "consultation", 7_000, 5_000) in cohort


def test_streaming_entries_agree_with_window_funnel(chdb_client: Client, ch_database: str,
                                                    make_event: MakeEvent) -> None:
    """An independent windowFunnel over funnel.events gives the streaming numbers exactly."""
    rng = random.Random(7)
    events = []
    for u in range(500):
        reached = 1
        while reached < 5 and rng.random() < 0.5:
            reached += 1
        t = rng.uniform(0, 3600)
        for stage in DEFAULT_FUNNEL.names[:reached]:
            events.append(make_event(stage, f"w{u}", at=t, channel=rng.choice(["seo", "ads"])))
            t += rng.uniform(1, 2 * DAY)
    # Arrival order must not matter: shuffle, the loader applies in event-time order per
    # batch, and the journey logic corrects the rest.
    rng.shuffle(events)
    load_events(chdb_client, ch_database, events, FunnelsConfig(funnels=(DEFAULT_FUNNEL,)))
    streaming = dict(query(chdb_client, ch_database,
                           "SELECT stage_index + 1, count() FROM funnel.stage_entries FINAL GROUP BY 1"))
    levels = dict(query(chdb_client, ch_database, """
        SELECT level, count() FROM (
            SELECT user_id, windowFunnel(14 * 86400)(toDateTime(ts), event_type = 'visit',
                event_type = 'signup', event_type = 'webinar', event_type = 'consultation',
                event_type = 'purchase') AS level
            FROM funnel.events FINAL WHERE funnel = 'default' GROUP BY user_id)
        GROUP BY level"""))
    at_least = {k: sum(n for level, n in levels.items() if level >= k) for k in range(1, 6)}
    assert streaming == at_least
    assert streaming[1] == 500


def test_one_event_feeds_every_funnel_with_its_stage(chdb_client: Client, ch_database: str,
                                                     make_event: MakeEvent) -> None:
    webinar = FunnelDefinition(name="webinar", stages=("visit", "webinar", "purchase"))
    config = FunnelsConfig(funnels=(DEFAULT_FUNNEL, webinar))
    events = [make_event(stage, "u1", at=i * 60, funnel=None) for i, stage in
              enumerate(("visit", "signup", "webinar", "purchase"))]
    events[-1] = make_event("purchase", "u1", at=180, funnel=None, amount="10", currency="EUR")
    events.append(make_event("signup", "u2", at=0, funnel="webinar"))  # names a funnel without it
    load_events(chdb_client, ch_database, events, config)
    assert query(chdb_client, ch_database,
                 "SELECT funnel, groupArray(stage) FROM (SELECT * FROM funnel.stage_entries FINAL "
                 "ORDER BY stage_index) GROUP BY funnel ORDER BY funnel") == [
        ("default", ["visit", "signup", "webinar", "purchase"]),
        ("webinar", ["visit", "webinar", "purchase"]),
    ]
    assert query(chdb_client, ch_database,
                 "SELECT funnel, from_stage, to_stage FROM funnel.transitions FINAL "
                 "ORDER BY funnel, to_index") == [
        ("default", "visit", "signup"), ("default", "signup", "webinar"),
        ("default", "webinar", "purchase"),
        ("webinar", "visit", "webinar"), ("webinar", "webinar", "purchase"),
    ]
    assert query(chdb_client, ch_database,
                 "SELECT funnel, toString(sum(revenue)) FROM funnel.revenue_by_channel "
                 "GROUP BY funnel ORDER BY funnel") == [("default", "10"), ("webinar", "10")]


def test_revenue_follows_a_first_touch_that_arrived_late(chdb_client: Client, ch_database: str,
                                                         make_event: MakeEvent) -> None:
    """A purchase processed before the user's earlier visit: first touch moves, last touch does not."""
    stages = ("visit", "purchase")
    config = FunnelsConfig(funnels=(
        FunnelDefinition(name="first", stages=stages),
        FunnelDefinition(name="last", stages=stages, attribution="last_touch"),
    ))
    events = [
        make_event("purchase", "u1", at=600, funnel=None, channel="email", campaign="spring",
                   amount="30", currency="EUR"),
        make_event("visit", "u1", at=0, funnel=None, channel="seo", campaign="launch"),
    ]
    load_events(chdb_client, ch_database, events, config, arrival_order=True)
    assert query(chdb_client, ch_database,
                 "SELECT funnel, channel, toString(revenue) FROM funnel.revenue_by_channel "
                 "ORDER BY funnel") == [("first", "seo", "30"), ("last", "email", "30")]
    assert query(chdb_client, ch_database,
                 "SELECT funnel, attributed_channel, campaign FROM funnel.purchases ORDER BY funnel"
                 ) == [("first", "seo", "launch"), ("last", "email", "spring")]


def test_cohort_and_closed_conversion_respect_the_window(chdb_client: Client, ch_database: str,
                                                         make_event: MakeEvent) -> None:
    short = FunnelDefinition(name="short", stages=("visit", "signup"), conversion_window_days=1)
    now = time.time() * 1000
    events = [
        make_event("visit", "in-time", at=0), make_event("signup", "in-time", at=7200),
        make_event("visit", "too-late", at=0), make_event("signup", "too-late", at=3 * DAY),
        make_event("visit", "never", at=0),
    ]
    # Inside the window right now: open, neither converted nor lost.
    events.append({**make_event("visit", "open", at=0), "ts": int(now - 3600_000)})
    load_events(chdb_client, ch_database, [{**e, "funnel": "short"} for e in events],
                FunnelsConfig(funnels=(short,)))
    rows = query(chdb_client, ch_database,
                 "SELECT sum(entered), sum(converted), sum(timed_out), sum(open), "
                 "sum(converted) / (sum(converted) + sum(timed_out)) FROM funnel.cohort_conversion")
    assert rows == [(4, 1, 2, 1, pytest.approx(1 / 3))]


def test_revenue_new_vs_returning_and_customer_value(chdb_client: Client, ch_database: str,
                                                     make_event: MakeEvent) -> None:
    events = [
        make_event("visit", "a", at=0, channel="ads"),
        make_event("purchase", "a", at=10, amount="100", currency="EUR"),
        make_event("purchase", "a", at=20, amount="50", currency="EUR"),
        make_event("visit", "b", at=0, channel="seo"),
        make_event("purchase", "b", at=30, amount="30", currency="EUR"),
    ]
    events.append(dict(events[2]))  # a duplicate: same event_id, counted once
    load_events(chdb_client, ch_database, events, FunnelsConfig(funnels=(DEFAULT_FUNNEL,)))
    assert query(chdb_client, ch_database,
                 "SELECT channel, customer, orders, toString(revenue), toString(average_order_value) "
                 "FROM funnel.revenue_by_customer ORDER BY channel, customer") == [
        ("ads", "new", 1, "100", "100"), ("ads", "returning", 1, "50", "50"),
        ("seo", "new", 1, "30", "30"),
    ]
    assert query(chdb_client, ch_database,
                 "SELECT channel, customers, toString(revenue_per_customer) "
                 "FROM funnel.customer_value_by_channel ORDER BY channel") == [
        ("ads", 1, "150"), ("seo", 1, "30")]


def test_stalled_leads_by_temperature(chdb_client: Client, ch_database: str,
                                      make_event: MakeEvent) -> None:
    now = int(time.time() * 1000)
    ago = {"hot": 2 * 3600, "warm": 3 * DAY, "cold": 30 * DAY}
    events = [{**make_event("visit", name, manager="alice"), "ts": now - s * 1000}
              for name, s in ago.items()]
    events += [{**make_event("signup", "hot", manager="bob"), "ts": now - 3600_000}]
    events += [{**make_event(stage, "buyer"), "ts": now - (5 - i) * 1000}
               for i, stage in enumerate(DEFAULT_FUNNEL.names)]  # reached the end: not stalled
    load_events(chdb_client, ch_database, events, FunnelsConfig(funnels=(DEFAULT_FUNNEL,)))
    assert query(chdb_client, ch_database,
                 "SELECT user_id, stage, temperature, manager FROM funnel.stalled_leads "
                 "ORDER BY user_id") == [
        ("cold", "visit", "cold", "alice"), ("hot", "signup", "hot", "bob"),
        ("warm", "visit", "warm", "alice"),
    ]


def test_cost_per_acquisition_and_return_on_spend(chdb_client: Client, ch_database: str,
                                                  make_event: MakeEvent) -> None:
    from schemas import Decoder
    from sinks import COLUMNS

    events = [make_event("visit", u, at=0, channel="ads") for u in ("a", "b", "c")]
    events += [make_event("purchase", "a", at=60, amount="100", currency="EUR"),
               make_event("purchase", "b", at=60, amount="50", currency="EUR"),
               make_event("purchase", "a", at=120, amount="30", currency="EUR"),   # returning
               make_event("purchase", "c", at=5 * DAY, amount="999", currency="EUR")]  # after the period
    load_events(chdb_client, ch_database, events, FunnelsConfig(funnels=(DEFAULT_FUNNEL,)))
    decoder = Decoder({"default"})
    start = "2026-01-31T00:00:00Z"  # the made-up events happen on 2026-01-31 12:00

    def report(amount: str, end: str, n: int) -> bytes:
        return (f'{{"event_id": "00000000-0000-4000-8000-00000000000{n}", "channel": "ads", '
                f'"amount": "{amount}", "currency": "EUR", "period_start": "{start}", '
                f'"period_end": "{end}"}}').encode()

    rows = [(*decoder.decode_spend(report(a, e, n)).values(), n)
            for n, (a, e) in enumerate([("90", "2026-02-01T00:00:00Z"), ("300", "2026-02-01T00:00:00Z")])]
    # The second report corrects the first (same channel and period): 300 EUR.
    chdb_client.insert(f"{ch_database}.spend", rows, column_names=COLUMNS["spend"])
    assert query(chdb_client, ch_database,
                 "SELECT funnel, channel, toString(spend), new_customers, toString(revenue), "
                 "toString(cost_per_acquisition), toFloat64(return_on_spend) "
                 "FROM funnel.cost_by_channel") == [
        ("default", "ads", "300", 2, "180", "150", -0.4)]
