"""Reliability (issue 4): ClickHouse unavailable for a while.

The worker's ClickHouse inserts fail (tests/integration/faulty_worker.py) for
OUTAGE_SECONDS while traffic keeps coming. The pipeline applies backpressure:
nothing more reaches ClickHouse, the consumer group's lag grows instead,
funnel_sink_errors_total and funnel_sink_pending_rows show the outage, and
the worker's memory stays bounded. When ClickHouse is back, every row arrives
exactly once - even the first write after the outage, whose answer is lost
(written, reported as failed, retried with the same deduplication token).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .faulty_worker import FLAG_ENV
from .harness import (
    assert_never_crashed,
    pipeline_lag,
    rss_bytes,
    send_visits,
    start_faulty_worker,
    stopped_cleanly,
    stored_events,
    wait_drained,
    wait_until,
)

pytestmark = pytest.mark.integration

#: How long ClickHouse is down (the issue's 60 seconds).
OUTAGE_SECONDS = 60.0
BEFORE = 2_000  # events written before the outage
CHUNK = 1_000  # events produced every EVERY seconds during the outage
EVERY = 5.0
#: Growth of the worker's resident memory allowed over the whole outage.
RSS_GROWTH_LIMIT = 150 << 20


def users(first: int, count: int) -> list[str]:
    return [f"o{n}" for n in range(first, first + count)]


@dataclass
class Sample:
    at: float
    stored: int
    lag: int
    errors: float
    pending: float
    rss: int


def test_clickhouse_outage_backpressure_then_exactly_once(pipeline_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    flag = tmp_path / "clickhouse-down"
    with stopped_cleanly(start_faulty_worker({**pipeline_env, FLAG_ENV: str(flag)},
                                             tmp_path / "worker.log")) as worker:
        sent = send_visits(worker, users(0, BEFORE))
        wait_until(lambda: stored_events(worker) == BEFORE, 60, "the first events in ClickHouse")
        rss_before = rss_bytes(worker.proc.pid)
        flag.touch()
        down = time.monotonic()
        samples: list[Sample] = []
        while time.monotonic() - down < OUTAGE_SECONDS:
            sent += send_visits(worker, users(sent, CHUNK))
            time.sleep(max(0.0, EVERY - (time.monotonic() - down) % EVERY))
            samples.append(Sample(
                time.monotonic() - down, stored_events(worker), sum(pipeline_lag(worker).values()),
                worker.metric_sum("funnel_sink_errors_total"), worker.metric_sum("funnel_sink_pending_rows"),
                rss_bytes(worker.proc.pid)))
        flag.unlink()
        for s in samples:
            print(f"outage: {s.at:5.1f}s stored {s.stored} lag {s.lag} sink errors {s.errors:.0f} "
                  f"pending rows {s.pending:.0f} rss {s.rss >> 20} MiB")
        # Backpressure: nothing new written, the lag grows, the metrics show why.
        assert [s.stored for s in samples] == [BEFORE] * len(samples)
        lags = [s.lag for s in samples]
        assert lags == sorted(lags) and lags[-1] >= lags[0] + CHUNK * (len(samples) - 2)
        errors = [s.errors for s in samples]
        assert errors == sorted(errors) and errors[0] > 0 and errors[-1] > errors[0]
        assert all(s.pending > 0 for s in samples)
        assert max(s.rss for s in samples) - rss_before < RSS_GROWTH_LIMIT

        back = time.monotonic()
        wait_drained(worker, 180)
        print(f"outage: {sent - BEFORE} events caught up in {time.monotonic() - back:.1f}s")
        # Exactly once: FINAL and the raw rows agree (the ambiguous retry was deduplicated).
        for table in ("events", "stage_entries", "stage_counts"):
            assert worker.scalar(f"SELECT count() FROM funnel.{table} FINAL") == sent, table
            assert worker.scalar(f"SELECT count() FROM funnel.{table}") == sent, table
        assert worker.metric_sum("funnel_sink_pending_rows") == 0
        assert_never_crashed(worker)

