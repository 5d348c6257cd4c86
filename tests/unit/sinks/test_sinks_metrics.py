"""sinks.metrics: bounded channel labels and the metric names others build on."""

from __future__ import annotations

import math
import random
import string

import pytest
from prometheus_client import CollectorRegistry

from sinks import DEFAULT_CHANNELS, OTHER_CHANNEL, ChannelBounder, FunnelMetrics, Tally
from sinks.metrics import EVENT_LAG_BUCKETS, observe_all


@pytest.mark.parametrize(
    ("channel", "label"),
    [("seo", "seo"), ("SEO", "seo"), ("Ads", "ads"), ("referral", "referral"), ("tiktok", "other"),
     ("seo ", "other"), ("", "other"), (None, "other")],
)
def test_channel_bounder_default_allow_list(channel: str | None, label: str) -> None:
    assert ChannelBounder()(channel) == label


def test_channel_bounder_custom_allow_list() -> None:
    bound = ChannelBounder([" TikTok ", "", "seo"])
    assert bound.allowed == {"tiktok", "seo"}
    assert [bound(c) for c in ("tiktok", "TIKTOK", "seo", "ads")] == ["tiktok", "tiktok", "seo", "other"]


def test_flood_of_channels_stays_bounded(metrics: FunnelMetrics) -> None:
    rng = random.Random(20260131)
    flood = ["".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 24)))
             for _ in range(10_000)]
    flood += [c.upper() for c in DEFAULT_CHANNELS]
    for channel in flood:
        metrics.stage_entries.labels("default", "visit", metrics.channel(channel)).inc()
    labels = {
        s.labels["channel"]: s.value
        for family in metrics.registry.collect() if family.name == "funnel_stage_entries"
        for s in family.samples if s.name.endswith("_total")
    }
    assert set(labels) == {*DEFAULT_CHANNELS, OTHER_CHANNEL}
    assert labels[OTHER_CHANNEL] == len(flood) - len(DEFAULT_CHANNELS)
    assert sum(labels.values()) == len(flood)


def exercise(m: FunnelMetrics) -> None:
    """Touch every metric once (twice for counters) with realistic labels."""
    m.events.labels("default", "visit").inc(2)
    m.invalid_events.labels("not_json").inc(2)
    m.duplicate_events.labels("default").inc(2)
    m.late_events.labels("default").inc(2)
    m.stage_entries.labels("default", "signup", "ads").inc(2)
    m.transitions.labels("default", "visit", "signup", "ads").inc(2)
    m.transition_duration.labels("default", "visit", "signup").observe(90)
    m.dropoffs.labels("default", "webinar", "ads").inc(2)
    m.stalled_users.labels("default", "webinar", "warm").set(7)
    m.revenue.labels("default", "ads", "EUR").inc(19.9)
    m.sink_rows.labels("clickhouse", "events").inc(2)
    m.sink_errors.labels("clickhouse").inc(2)
    m.sink_pending_rows.labels("clickhouse").set(5)
    m.sink_write_seconds.labels("clickhouse").observe(0.2)
    m.event_lag.observe(1.5)


FUNNEL_VISIT = {"funnel": "default", "event_type": "visit"}
TRANSITION = {"funnel": "default", "from_stage": "visit", "to_stage": "signup"}
EXPECTED = [
    ("funnel_events_total", FUNNEL_VISIT, 2),
    ("funnel_invalid_events_total", {"reason": "not_json"}, 2),
    ("funnel_duplicate_events_total", {"funnel": "default"}, 2),
    ("funnel_late_events_total", {"funnel": "default"}, 2),
    ("funnel_stage_entries_total", {"funnel": "default", "stage": "signup", "channel": "ads"}, 2),
    ("funnel_transitions_total", {**TRANSITION, "channel": "ads"}, 2),
    ("funnel_transition_duration_seconds_count", TRANSITION, 1),
    ("funnel_transition_duration_seconds_sum", TRANSITION, 90),
    ("funnel_transition_duration_seconds_bucket", {**TRANSITION, "le": "60.0"}, 0),
    ("funnel_transition_duration_seconds_bucket", {**TRANSITION, "le": "300.0"}, 1),
    ("funnel_dropoffs_total", {"funnel": "default", "stage": "webinar", "channel": "ads"}, 2),
    ("funnel_stalled_users", {"funnel": "default", "stage": "webinar", "temperature": "warm"}, 7),
    ("funnel_revenue_total", {"funnel": "default", "channel": "ads", "currency": "EUR"}, 19.9),
    ("funnel_sink_rows_total", {"sink": "clickhouse", "table": "events"}, 2),
    ("funnel_sink_errors_total", {"sink": "clickhouse"}, 2),
    ("funnel_sink_pending_rows", {"sink": "clickhouse"}, 5),
    ("funnel_sink_write_seconds_count", {"sink": "clickhouse"}, 1),
    ("funnel_event_lag_seconds_count", {}, 1),
    ("funnel_event_lag_seconds_bucket", {"le": "2.5"}, 1),
]


@pytest.mark.parametrize(("name", "labels", "value"), EXPECTED,
                         ids=[f"{n}{sorted(lb)}" for n, lb, _ in EXPECTED])
def test_design_metric_names_and_labels(
    metrics: FunnelMetrics, name: str, labels: dict[str, str], value: float
) -> None:
    exercise(metrics)
    assert metrics.registry.get_sample_value(name, labels) == pytest.approx(value)


def test_registry_holds_exactly_the_design_metrics(metrics: FunnelMetrics) -> None:
    # Families, so a metric nobody has touched yet (no samples) is listed too.
    families = {(f.name, f.type) for f in metrics.registry.collect()}
    counters = ("events", "invalid_events", "duplicate_events", "late_events", "stage_entries",
                "transitions", "dropoffs", "revenue", "customers", "spend", "sink_rows", "sink_errors",
                "produce_retries", "stage_entries_merged", "stage_entries_excluded", "identity_links",
                "identity_conflicts")
    assert families == {
        *((f"funnel_{c}", "counter") for c in counters),
        ("funnel_stalled_users", "gauge"), ("funnel_sink_pending_rows", "gauge"),
        ("funnel_transition_duration_seconds", "histogram"), ("funnel_sink_write_seconds", "histogram"),
        ("funnel_event_lag_seconds", "histogram"),
    }


def test_bundles_on_separate_registries_do_not_share_values() -> None:
    one, two = FunnelMetrics(CollectorRegistry()), FunnelMetrics(CollectorRegistry())
    one.events.labels("default", "visit").inc()
    assert one.registry.get_sample_value("funnel_events_total", FUNNEL_VISIT) == 1
    assert two.registry.get_sample_value("funnel_events_total", FUNNEL_VISIT) is None


def test_metrics_bound_channels_with_their_allow_list() -> None:
    m = FunnelMetrics(CollectorRegistry(), channels=["newsletter"])
    assert (m.channel("Newsletter"), m.channel("seo")) == ("newsletter", OTHER_CHANNEL)


def test_declare_exports_every_bounded_label_set_at_zero(metrics) -> None:
    from schemas import DEFAULT_FUNNEL, REASONS

    metrics.declare([DEFAULT_FUNNEL])
    value = metrics.registry.get_sample_value
    visit_other = {"funnel": "default", "stage": "visit", "channel": "other"}
    assert value("funnel_stage_entries_total", visit_other) == 0
    assert value("funnel_transitions_total", {"funnel": "default", "from_stage": "visit",
                                              "to_stage": "purchase", "channel": "seo"}) == 0
    assert value("funnel_invalid_events_total", {"reason": REASONS[0]}) == 0
    last_stage = {"funnel": "default", "stage": "purchase", "channel": "seo"}
    assert value("funnel_dropoffs_total", last_stage) is None  # nobody drops off at the end
    series = [s for m in metrics.registry.collect() if m.name == "funnel_transitions"
              for s in m.samples if s.name == "funnel_transitions_total"]
    assert len(series) == 10 * 8  # forward stage pairs x (seven allowed channels + other)


def _histograms() -> tuple[CollectorRegistry, CollectorRegistry, FunnelMetrics, FunnelMetrics]:
    one, other = CollectorRegistry(), CollectorRegistry()
    return one, other, FunnelMetrics(one), FunnelMetrics(other)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() if family.name == name for s in family.samples
            if not s.name.endswith("_created")}


def test_observe_all_equals_observing_one_value_at_a_time() -> None:
    one, other, a, b = _histograms()
    rng = random.Random(7)
    # Every bound itself, values on either side of each, beyond the last
    # finite bound, negative, zero.
    values = [float(x) for x in EVENT_LAG_BUCKETS]
    values += [x * f for x in EVENT_LAG_BUCKETS for f in (0.999, 1.001)]
    values += [0.0, -3.0, 1e9, *(rng.uniform(0, 400) for _ in range(500))]
    for v in values:
        a.event_lag.observe(v)
        a.child(a.transition_duration, "default", "visit", "signup").observe(v * 1000)
    observe_all(b.event_lag, values)
    observe_all(b.child(b.transition_duration, "default", "visit", "signup"), [v * 1000 for v in values])
    for name in ("funnel_event_lag_seconds", "funnel_transition_duration_seconds"):
        want, got = _samples(one, name), _samples(other, name)
        assert want.keys() == got.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-12), key
    assert one.get_sample_value("funnel_event_lag_seconds_count") == len(values)


def test_observe_all_counts_a_nan_in_no_bucket_as_observe_does() -> None:
    one, other, a, b = _histograms()
    for v in (0.2, math.nan):
        a.event_lag.observe(v)
    observe_all(b.event_lag, [0.2, math.nan])
    buckets = {k: v for k, v in _samples(one, "funnel_event_lag_seconds").items() if "_bucket" in k[0]}
    assert buckets == {k: v for k, v in _samples(other, "funnel_event_lag_seconds").items()
                       if "_bucket" in k[0]}
    assert one.get_sample_value("funnel_event_lag_seconds_count") == 1


def test_observe_all_falls_back_to_observe_without_the_client_internals() -> None:
    seen: list[float] = []

    class Other:
        def observe(self, value: float) -> None:
            seen.append(value)

    observe_all(Other(), [1.0, 2.0])
    assert seen == [1.0, 2.0]
    with pytest.raises(ValueError, match="label"):  # a labelled parent is refused, as observe would
        observe_all(FunnelMetrics().transition_duration, [1.0])


def test_tally_applies_a_batch_once_per_child_and_then_starts_again() -> None:
    m = FunnelMetrics()
    tally = Tally()
    entries = m.child(m.stage_entries, "default", "visit", "seo")
    for _ in range(3):
        tally.inc(entries)
    tally.inc(m.child(m.revenue, "default", "seo", "EUR"), 19.5)
    tally.inc(m.child(m.revenue, "default", "seo", "EUR"), 0.5)
    tally.observe(m.event_lag, 0.2)
    tally.observe(m.event_lag, 7.0)
    get = m.registry.get_sample_value
    labels = {"funnel": "default", "stage": "visit", "channel": "seo"}
    assert get("funnel_stage_entries_total", labels) == 0  # nothing before apply
    tally.apply()
    assert get("funnel_stage_entries_total", labels) == 3
    assert get("funnel_revenue_total", {"funnel": "default", "channel": "seo", "currency": "EUR"}) == 20
    assert get("funnel_event_lag_seconds_bucket", {"le": "0.25"}) == 1
    assert get("funnel_event_lag_seconds_bucket", {"le": "10.0"}) == 2
    assert get("funnel_event_lag_seconds_sum") == pytest.approx(7.2)
    tally.apply()  # applied once: a second call adds nothing
    assert get("funnel_stage_entries_total", labels) == 3
    assert get("funnel_event_lag_seconds_count") == 2
