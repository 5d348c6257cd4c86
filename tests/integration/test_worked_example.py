"""The worked example end to end, on the embedded broker and chDB.

1000 visits -> 100 signups -> 40 webinars -> 20 consultations -> 10 purchases
(10 %, 40 %, 50 %, 50 %, overall 1 %), plus duplicates and malformed
messages, through the five topics; exact counts in ClickHouse, on /metrics
and in the dead-letter topic.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from typing import Any

import pytest

from .harness import Worker, consume_all, event, produce, wait_until

pytestmark = pytest.mark.integration

STAGES = ["visit", "signup", "webinar", "consultation", "purchase"]
COUNTS = [1000, 100, 40, 20, 10]
CHANNELS = ["seo", "ads", "social", "email", "tiktok"]  # tiktok is not on the allow-list
WINDOW = 60
GAP = 60_000  # each stage a minute after the previous one, in event time

# (topic, bytes, reason the dead-letter record must carry)
MALFORMED: list[tuple[str, bytes, str]] = [
    ("visit", b"{not json", "not_json"),
    ("visit", b"\xff\xfe\x00\x01", "not_utf8"),
    ("signup", b"[1, 2]", "not_object"),
    ("visit", json.dumps({"user_id": "x", "ts": 1}).encode(), "missing_field"),
    ("visit", json.dumps({"event_id": str(uuid.uuid4()), "user_id": "x", "ts": 1_700_000_000_000,
                          "funnel": "nope"}).encode(), "unknown_funnel"),
    ("visit", json.dumps({"event_id": str(uuid.uuid4()), "user_id": "x",
                          "ts": int(time.time() * 1000) + 86_400_000}).encode(), "future_timestamp"),
    ("purchase", json.dumps({"event_id": str(uuid.uuid4()), "user_id": "x", "ts": 1_700_000_000_000,
                             "amount": "-5", "currency": "EUR"}).encode(), "invalid_amount"),
    ("purchase", json.dumps({"event_id": str(uuid.uuid4()), "user_id": "x", "ts": 1_700_000_000_000,
                             "amount": "5", "currency": "XYZ"}).encode(), "unknown_currency"),
    ("webinar", json.dumps({"event_id": str(uuid.uuid4()), "event_type": "visit", "user_id": "x",
                            "ts": 1_700_000_000_000}).encode(), "wrong_event_type"),
    ("visit", b"{" + b" " * 70_000 + b"}", "too_large"),
]


def _t0() -> int:
    """An event time ten minutes ago, on a window boundary (ms)."""
    now = int(time.time())
    return (now - 600 - now % WINDOW) * 1000


def test_worked_example(worker: Worker, pipeline_env: dict[str, str]) -> None:
    run_worked_example(worker, pipeline_env)


def run_worked_example(worker: Worker, pipeline_env: dict[str, str], **kafka: Any) -> None:
    """Send the worked example through ``worker``; check every count. ``kafka``: client options (TLS)."""
    prefix = pipeline_env["FUNNEL_TOPIC_PREFIX"]
    bootstrap = pipeline_env["FUNNEL_KAFKA_URL"].removeprefix("kafka://")
    t0 = _t0()
    sent: dict[str, list[bytes]] = {}

    # Stage by stage: the journey rule is "transitions in processing order",
    # so each stage is produced once the previous one has been consumed.
    for index, (stage, count) in enumerate(zip(STAGES, COUNTS, strict=True)):
        messages = []
        for i in range(count):
            fields = {"channel": CHANNELS[i % 5] if stage == "visit" else "email"}
            if stage == "purchase":
                fields.update(amount="49.90", currency="EUR", order_id=f"o{i}")
            _, _, body = event(stage, f"u{i}", t0 + index * GAP + i, **fields)
            messages.append((f"{prefix}{stage}", f"u{i}".encode(), body))
        sent[stage] = [m[2] for m in messages]
        if stage == "purchase":  # u0 buys again: revenue, not a new entry
            _, _, body = event("purchase", "u0", t0 + 5 * GAP, amount="10.00", currency="EUR")
            messages.append((f"{prefix}purchase", b"u0", body))
        n_sent = produce(bootstrap, messages, **kafka)
        wait_until(lambda s=stage, n=n_sent: worker.metric_sum(
            "funnel_events_total", event_type=s) >= n, 60, f"{stage} events consumed")

    # Duplicates (same bytes, same event_id) and malformed messages.
    duplicates = [(f"{prefix}visit", None, body) for body in sent["visit"][:30]]
    duplicates += [(f"{prefix}purchase", None, body) for body in sent["purchase"][:5]]
    produce(bootstrap, duplicates, **kafka)
    produce(bootstrap, [(f"{prefix}{topic}", None, raw) for topic, raw, _ in MALFORMED], **kafka)
    wait_until(lambda: worker.metric_sum("funnel_duplicate_events_total") >= 35, 60, "duplicates")
    wait_until(lambda: worker.metric_sum("funnel_invalid_events_total") >= len(MALFORMED), 60,
               "malformed messages dead-lettered")
    total_rows = sum(COUNTS) + 1
    # The journey agent writes its tables one after the other, stage_counts last:
    # wait for the last stage's membership rows, not merely for some rows.
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.events FINAL") == total_rows
               and worker.scalar("SELECT sum(users) FROM funnel.stage_counts_final "
                                 "WHERE stage = 'purchase'") == 2 * COUNTS[-1],
               60, "rows in ClickHouse")

    # --- ClickHouse: entries, transitions, conversion -----------------------------------
    entries = dict(worker.sql(
        "SELECT stage, count() FROM funnel.stage_entries FINAL WHERE funnel = 'default' GROUP BY stage"))
    assert entries == dict(zip(STAGES, COUNTS, strict=True))
    conversion = [entries[b] / entries[a] for a, b in itertools.pairwise(STAGES)]
    assert conversion == [0.1, 0.4, 0.5, 0.5]
    assert entries["purchase"] / entries["visit"] == 0.01

    transitions = {(f, t): (n, lo, hi) for f, t, n, lo, hi in worker.sql(
        "SELECT from_stage, to_stage, count(), min(seconds), max(seconds) "
        "FROM funnel.transitions FINAL GROUP BY from_stage, to_stage")}
    assert transitions == {
        (a, b): (n, 60.0, 60.0) for a, b, n in zip(STAGES, STAGES[1:], COUNTS[1:], strict=False)
    }
    # First-touch attribution: the signup said "email", the entry keeps the visit's channel.
    assert worker.sql(
        "SELECT channel, count() FROM funnel.stage_entries FINAL WHERE stage = 'purchase' "
        "GROUP BY channel ORDER BY channel"
    ) == [[c, 2] for c in sorted(CHANNELS)]

    # --- windowed counts: each stage sits in its own minute -------------------------------
    windows = worker.sql(
        "SELECT toUnixTimestamp(window_start), kind, from_stage, stage, sum(users) "
        "FROM funnel.stage_counts_final GROUP BY 1, 2, 3, 4 ORDER BY 1, 2")
    expected_windows = []
    for index, (stage, count) in enumerate(zip(STAGES, COUNTS, strict=True)):
        start = t0 // 1000 + index * WINDOW
        expected_windows.append([start, "entry", "", stage, count])
        if index:
            expected_windows.append([start, "transition", STAGES[index - 1], stage, count])
    assert windows == expected_windows

    # --- revenue: each event_id once, repeat purchase included -------------------------------
    assert worker.sql("SELECT currency, toString(sum(revenue)), sum(orders) "
                      "FROM funnel.revenue_by_channel GROUP BY currency") == [["EUR", "509", 11]]
    assert worker.scalar("SELECT countDistinct(channel) FROM funnel.events WHERE channel = 'tiktok'") == 1

    # --- /metrics --------------------------------------------------------------------------
    m = worker.metric_sum
    for stage, count in zip(STAGES, COUNTS, strict=True):
        assert m("funnel_stage_entries_total", funnel="default", stage=stage) == count
    assert m("funnel_events_total", event_type="purchase") == 11 + 5  # valid, duplicates included
    assert m("funnel_duplicate_events_total", funnel="default") == 35
    assert m("funnel_stage_entries_total", stage="visit", channel="other") == 200
    assert m("funnel_stage_entries_total", channel="tiktok") == 0
    for a, b, n in zip(STAGES, STAGES[1:], COUNTS[1:], strict=False):
        assert m("funnel_transitions_total", from_stage=a, to_stage=b) == n
        assert m("funnel_transition_duration_seconds_count", from_stage=a, to_stage=b) == n
        assert m("funnel_transition_duration_seconds_sum", from_stage=a, to_stage=b) == 60.0 * n
    assert m("funnel_revenue_total", funnel="default", currency="EUR") == pytest.approx(509.0)
    assert m("funnel_late_events_total") == 0
    assert m("funnel_sink_rows_total", sink="clickhouse", table="events") >= total_rows
    wait_until(lambda: m("funnel_sink_pending_rows", sink="clickhouse") == 0, 30,
               "sinks to drain (replayed duplicates reach the journey agent last)")
    for _, _, reason in MALFORMED:
        assert m("funnel_invalid_events_total", reason=reason) == 1, reason

    # --- dead-letter topic: reason header and the original bytes ----------------------------
    records = consume_all(bootstrap, f"{prefix}dead-letter", len(MALFORMED), **kafka)
    got = sorted((dict(r.headers)["reason"].decode(), r.value) for r in records)
    assert got == sorted((reason, raw) for _, raw, reason in MALFORMED)


def test_funnel_sql_asks_the_engine_owner(worker: Worker) -> None:
    """`funnel sql` with the embedded engine goes through the worker that owns it."""
    import subprocess
    import sys

    produce(worker.env["FUNNEL_KAFKA_URL"].removeprefix("kafka://"), [
        (f"{worker.env['FUNNEL_TOPIC_PREFIX']}visit", None, event("visit", f"s{i}", _t0())[2])
        for i in range(3)
    ])
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.stage_entries FINAL") == 3, 60,
               "three visits in ClickHouse")
    done = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "sql",
         "SELECT stage, count() AS users FROM funnel.stage_entries FINAL GROUP BY stage"],
        env=worker.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["stage  users", "-----  -----", "visit      3", "(1 row)"]
    refused = subprocess.run(
        [sys.executable, "-m", "streams.tools.cli", "sql", "DROP TABLE funnel.events"],
        env=worker.env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert refused.returncode == 2 and "only read-only queries" in refused.stderr
    # The readonly session holds even for a statement the gate lets through.
    with pytest.raises(AssertionError, match=r"(?i)readonly"):
        worker.sql("SELECT * FROM funnel.events SETTINGS readonly = 0")


def test_transitions_follow_event_time_whatever_the_topic_order(worker: Worker) -> None:
    """Purchases first, visits last (as when a backlog is consumed): transitions still exact."""
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    t0 = _t0()
    users = [f"r{i}" for i in range(200)]
    plan = [("visit", 0), ("signup", 30_000), ("purchase", 90_000)]  # purchase skips two stages
    for stage, offset in reversed(plan):
        extra = {"amount": "5", "currency": "USD"} if stage == "purchase" else {}
        produce(worker.env["FUNNEL_KAFKA_URL"].removeprefix("kafka://"), [
            (f"{prefix}{stage}", u.encode(), event(stage, u, t0 + offset, channel="seo", **extra)[2])
            for u in users
        ])
        wait_until(lambda s=stage: worker.metric_sum("funnel_events_total", event_type=s) >= 200, 60,
                   f"{stage} consumed")
    expected = [["signup", "visit", 200, 30.0], ["purchase", "signup", 200, 60.0]]

    def transitions() -> list[list[object]]:
        return worker.sql("SELECT to_stage, from_stage, count(), max(seconds) FROM funnel.transitions "
                          "FINAL GROUP BY to_stage, from_stage ORDER BY min(to_index)")

    wait_until(lambda: transitions() == expected, 60, f"transitions {expected}")
    windows = [["signup", "purchase", 200], ["visit", "signup", 200]]
    wait_until(lambda: worker.sql(
        "SELECT from_stage, stage, sum(users) FROM funnel.stage_counts_final "
        "WHERE kind = 'transition' GROUP BY from_stage, stage ORDER BY stage") == windows,
        60, f"transition windows {windows}")
    # Each user's first transition into a stage is counted once on /metrics.
    assert worker.metric_sum("funnel_transitions_total", to_stage="purchase") == 200
    assert worker.metric_sum("funnel_transitions_total", to_stage="signup") == 200


def test_spend_reports_give_cost_per_acquisition(worker: Worker) -> None:
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    bootstrap = worker.env["FUNNEL_KAFKA_URL"].removeprefix("kafka://")
    t0 = _t0()
    produce(bootstrap, [(f"{prefix}visit", f"p{i}".encode(), event("visit", f"p{i}", t0, channel="ads")[2])
                        for i in range(4)])
    wait_until(lambda: worker.metric_sum("funnel_events_total", event_type="visit") >= 4, 60, "visits")
    produce(bootstrap, [(f"{prefix}purchase", f"p{i}".encode(),
                         event("purchase", f"p{i}", t0 + 1000, amount="25", currency="EUR")[2])
                        for i in range(4)])
    period = {"period_start": t0 - 3_600_000, "period_end": t0 + 3_600_000}
    spend = {"event_id": str(uuid.uuid4()), "channel": "ads", "amount": "200", "currency": "EUR", **period}
    bad = {**spend, "event_id": str(uuid.uuid4()), "amount": "-1"}
    produce(bootstrap, [(f"{prefix}spend", None, json.dumps(x).encode()) for x in (spend, bad)])
    wait_until(lambda: worker.sql(
        "SELECT toString(spend), new_customers, toString(cost_per_acquisition) "
        "FROM funnel.cost_by_channel WHERE channel = 'ads'") == [["200", 4, "50"]], 60, "CPA 50")
    assert worker.metric_sum("funnel_spend_total", channel="ads", currency="EUR") == 200
    assert worker.metric_sum("funnel_customers_total", channel="ads") == 4
    assert worker.metric_sum("funnel_invalid_events_total", reason="invalid_amount") == 1


def test_oversized_message_is_dead_lettered_truncated_and_the_worker_goes_on(worker: Worker) -> None:
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    bootstrap = worker.env["FUNNEL_KAFKA_URL"].removeprefix("kafka://")
    huge = b'{"x": "' + b"a" * 950_000 + b'"}'
    produce(bootstrap, [(f"{prefix}visit", None, huge),
                        (f"{prefix}visit", b"ok", event("visit", "ok", _t0())[2])])
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.stage_entries FINAL") == 1, 60,
               "the valid visit after the huge message")
    (record,) = consume_all(bootstrap, f"{prefix}dead-letter", 1)
    headers = dict(record.headers)
    assert headers["reason"] == b"too_large" and headers["truncated"] == str(len(huge)).encode()
    assert record.value == huge[:900_000]
