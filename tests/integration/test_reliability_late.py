"""Reliability (issue 4): out-of-order and late events.

Phase 1, out of order (within FUNNEL_ALLOWED_LATENESS_SECONDS): users' purchases
arrive first, then their webinars, then their visits. Transitions follow event
time (a purchase seen before its visit becomes visit -> purchase), first touch
is the earliest event, and every entry and transition sits in the window of its
own event time. Phase 2, late (an hour behind the watermark): a signup before
everything else for some users (sent twice), and visits of new users. Late
events are counted, still stored, and the windows they change are corrected in
place: no row for the replaced transition is left behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    Worker,
    bootstrap_of,
    event,
    produce,
    start_worker,
    stopped_cleanly,
    stored_events,
    wait_until,
)

pytestmark = pytest.mark.integration

WINDOW = 60
LATENESS = 300
N = 40  # users per group
HOUR = 3_600_000


def test_out_of_order_and_late_events(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env = {**pipeline_env, "FUNNEL_WINDOW_SECONDS": str(WINDOW),
           "FUNNEL_ALLOWED_LATENESS_SECONDS": str(LATENESS)}
    with stopped_cleanly(start_worker(env, tmp_path / "worker.log")) as worker:
        check_out_of_order_and_late(worker)


def check_out_of_order_and_late(worker: Worker) -> None:
    now = int(time.time())
    t0 = (now - 900 - now % WINDOW) * 1000  # a window start 15 minutes ago
    a = [f"a{i}" for i in range(N)]  # purchase, then visit
    b = [f"b{i}" for i in range(N)]  # purchase, then webinar, then visit
    d = [f"d{i}" for i in range(N)]  # phase 2 only: a late visit
    purchase = {"amount": "10", "currency": "EUR", "channel": "email"}

    # -- phase 1: out of order, not late ---------------------------------------------------
    stored = send(worker, [("purchase", u, t0 + 240_000, purchase) for u in a + b], 0)
    stored = send(worker, [("webinar", u, t0 + 120_000, {"channel": "social"}) for u in b], stored)
    stored = send(worker, [("visit", u, t0, {"channel": "seo"}) for u in a + b], stored)
    assert transitions(worker) == [
        ["visit", "purchase", "seo", N, 240.0],
        ["visit", "webinar", "seo", N, 120.0],
        ["webinar", "purchase", "seo", N, 120.0],
    ]
    assert worker.metric_sum("funnel_late_events_total") == 0

    # -- phase 2: an hour late -------------------------------------------------------------
    late = [("signup", u, t0 - HOUR, {"channel": "partner"}) for u in a]
    stored = send(worker, late + [("visit", u, t0 - HOUR, {"channel": "ads"}) for u in d], stored)
    send(worker, late, stored, duplicates=True)
    assert worker.metric_sum("funnel_late_events_total") == 2 * N
    assert worker.metric_sum("funnel_duplicate_events_total") == N
    # Late events are stored like any other.
    assert worker.scalar(
        f"SELECT count() FROM funnel.events FINAL WHERE toUnixTimestamp64Milli(ts) < {t0}") == 2 * N
    assert worker.sql(
        "SELECT stage, channel, count() FROM funnel.stage_entries FINAL GROUP BY stage, channel "
        "ORDER BY stage, channel") == [
        ["purchase", "partner", N], ["purchase", "seo", N],
        ["signup", "partner", N],
        ["visit", "ads", N], ["visit", "partner", N], ["visit", "seo", N],
        ["webinar", "seo", N],
    ]
    # a: visit -> purchase is now signup -> purchase (the visit came after the signup).
    assert transitions(worker) == [
        ["signup", "purchase", "partner", N, 3_840.0],
        ["visit", "webinar", "seo", N, 120.0],
        ["webinar", "purchase", "seo", N, 120.0],
    ]
    # Windows by event time; the replaced transition and old channels left no rows.
    start = t0 // 1000

    def windows() -> list[list[Any]]:
        return worker.sql(
            f"SELECT toInt64(toUnixTimestamp(window_start)) - {start}, kind, from_stage, stage, channel, "
            "sum(users) FROM funnel.stage_counts_final GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5")

    expected = [
        [-3600, "entry", "", "signup", "partner", N], [-3600, "entry", "", "visit", "ads", N],
        [0, "entry", "", "visit", "partner", N], [0, "entry", "", "visit", "seo", N],
        [120, "entry", "", "webinar", "seo", N], [120, "transition", "visit", "webinar", "seo", N],
        [240, "entry", "", "purchase", "partner", N], [240, "entry", "", "purchase", "seo", N],
        [240, "transition", "signup", "purchase", "partner", N],
        [240, "transition", "webinar", "purchase", "seo", N],
    ]
    wait_until(lambda: worker.metric_sum("funnel_sink_pending_rows") == 0 and windows() == expected, 30,
               "the journey agent to write the corrections")
    assert windows() == expected
    # Revenue follows the corrected first touch too (README: entries, transitions and revenue carry it).
    assert worker.sql("SELECT channel, toString(sum(revenue)) FROM funnel.revenue_by_channel "
                      "GROUP BY channel ORDER BY channel") == [["partner", "400"], ["seo", "400"]]


def send(worker: Worker, items: list[tuple[str, str, int, dict[str, str]]], stored: int,
         duplicates: bool = False) -> int:
    """Produce (event_type, user, ts, fields) events and wait until ClickHouse has them all.

    ``stored`` is the count of distinct events so far; returns the new count.
    Waiting keeps each group in its own journey batch, so arrival order holds.
    """
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    produce(bootstrap_of(worker.env), [
        (f"{prefix}{t}", u.encode(), event(t, u, ts, event_id=_event_id(t, u, ts), **fields)[2])
        for t, u, ts, fields in items
    ])
    if duplicates:
        wait_until(lambda: worker.metric_sum("funnel_duplicate_events_total") >= len(items), 60, "duplicates")
        return stored
    total = stored + len(items)
    # Rows pending in no sink: the batch's entries and transitions are written too.
    wait_until(lambda: stored_events(worker) == total and worker.metric_sum("funnel_sink_pending_rows") == 0,
               60, f"{total} events stored")
    return total


def _event_id(event_type: str, user: str, ts: int) -> str:
    """Deterministic, so sending an item again is a duplicate."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{event_type}/{user}/{ts}"))


def transitions(worker: Worker) -> list[list[Any]]:
    return worker.sql(
        "SELECT from_stage, to_stage, channel, count(), max(seconds) FROM funnel.transitions FINAL "
        "GROUP BY from_stage, to_stage, channel ORDER BY from_stage, to_stage, channel")
