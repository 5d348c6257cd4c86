"""Reliability (issue 4): a flood of distinct channel, campaign and product values.

Every flooded user comes with a channel, campaign and product never seen
before. Prometheus must not grow a single series (channels off the allow-list
are `other`; campaign and product are no labels at all), while ClickHouse keeps
every real value.
"""

from __future__ import annotations

import time

import pytest

from .harness import Worker, bootstrap_of, event, produce, wait_drained, wait_until

pytestmark = pytest.mark.integration

#: Flooded users, each with a new channel, campaign and product: a million distinct values.
USERS = 333_334
BUYERS_EVERY = 10  # every tenth flooded user also buys
ALLOWED = {"seo", "ads", "social", "email", "partner", "direct", "referral", "other"}


def test_label_flood_keeps_series_bounded(worker: Worker) -> None:
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    ts = int(time.time() * 1000) - 120_000

    def journey(n: int, buys: bool) -> list[tuple[str, bytes, bytes]]:
        user = f"f{n}"
        dims = {"channel": f"chan-{n}", "campaign": f"camp-{n}", "product": f"prod-{n}"}
        out = [(f"{prefix}visit", user.encode(), event("visit", user, ts, **dims)[2])]
        if buys:
            out.append((f"{prefix}purchase", user.encode(), event(
                "purchase", user, ts + 1_000, amount="1", currency="EUR", **dims)[2]))
        return out

    # Warm-up: one unknown channel through every metric the flood touches, every sink
    # table written and a status tick (it sets the stalled-users gauges) passed.
    produce(bootstrap_of(worker.env), journey(-1, buys=True))
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.events FINAL") == 2, 60, "the warm-up")
    wait_drained(worker, 60)
    time.sleep(2 * float(worker.env["FUNNEL_STATUS_INTERVAL_SECONDS"]))
    before = series(worker)

    started = time.monotonic()
    flood = [m for n in range(USERS) for m in journey(n, buys=n % BUYERS_EVERY == 0)]
    produce(bootstrap_of(worker.env), flood)
    wait_drained(worker, 900)
    elapsed = time.monotonic() - started
    users = USERS + 1

    after = series(worker)
    assert after == before, f"new series: {sorted(after - before)[:5]}"
    channels = {dict(labels)["channel"] for _, labels in after if "channel" in dict(labels)}
    assert channels <= ALLOWED
    m = worker.metric_sum
    assert m("funnel_stage_entries_total", stage="visit", channel="other") == users
    buyers = len(range(0, USERS, BUYERS_EVERY)) + 1  # the warm-up user bought too
    assert m("funnel_revenue_total", channel="other", currency="EUR") == buyers

    # ClickHouse keeps every real value.
    assert worker.sql("SELECT uniqExact(channel), uniqExact(campaign), uniqExact(product), count() "
                      "FROM funnel.events FINAL") == [[users, users, users, len(flood) + 2]]
    assert worker.scalar("SELECT uniqExact(channel) FROM funnel.stage_entries FINAL") == users
    assert 3 * USERS >= 1_000_000
    print(f"labels: {len(flood)} events with {3 * USERS} distinct values in {elapsed:.1f}s, "
          f"{len(after)} series before and after")


def series(worker: Worker) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return set(worker.metrics())
