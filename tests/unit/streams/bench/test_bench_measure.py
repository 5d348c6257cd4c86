"""streams.bench.measure: /metrics sums, visibility latencies, percentiles."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sinks import FunnelMetrics
from streams.bench.measure import metric_sum, percentile, visibility_latencies


def test_metric_sum_reads_real_exposition() -> None:
    metrics = FunnelMetrics(CollectorRegistry())
    metrics.events.labels("default", "visit").inc(3)
    metrics.events.labels("default", "signup").inc(2)
    metrics.sink_rows.labels("clickhouse", "events").inc(7)
    metrics.sink_rows.labels("clickhouse", "stage_entries").inc(5)
    text = generate_latest(metrics.registry).decode()
    assert metric_sum(text, "funnel_events_total") == 5
    assert metric_sum(text, "funnel_events_total", event_type="signup") == 2
    assert metric_sum(text, "funnel_sink_rows_total") == 12
    assert metric_sum(text, "funnel_sink_rows_total", table="events") == 7
    assert metric_sum(text, "funnel_sink_rows_total", table="dropoffs") == 0
    assert metric_sum(text, "funnel_events") == 0  # a prefix is not a name


def test_metric_sum_unlabelled_and_exponents() -> None:
    text = "# HELP x_total x\nx_total 1.5e+06\nx_total_created 1.7e+09\nx_totalish 9\n"
    assert metric_sum(text, "x_total") == 1_500_000


def test_visibility_from_counter_samples() -> None:
    produced = [0.0, 0.1, 0.2, 0.3]
    samples = [(0.5, 0), (0.25, 1), (0.7, 3), (1.0, 4)]  # out of order on purpose
    latencies, unseen = visibility_latencies(produced, samples, until=2.0)
    assert unseen == 0
    assert latencies == pytest.approx([0.25, 0.6, 0.5, 0.7])


def test_visibility_counts_unseen_until_the_end_as_lower_bounds() -> None:
    latencies, unseen = visibility_latencies([0.0, 1.0, 2.0], [(0.5, 1)], until=10.0)
    assert unseen == 2
    assert latencies == pytest.approx([0.5, 9.0, 8.0])


def test_visibility_ignores_a_counter_going_backwards() -> None:
    latencies, _ = visibility_latencies([0.0, 0.0], [(1.0, 2), (2.0, 1)], until=3.0)
    assert latencies == [1.0, 1.0]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile(list(reversed(values)), 1) == 1
    assert percentile([], 50) != percentile([], 50)  # NaN
