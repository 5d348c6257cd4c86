"""Prometheus metrics as an injectable bundle.

Every metric is built against the ``CollectorRegistry`` passed in, so tests use
a fresh registry and read values with ``registry.get_sample_value``. Names and
labels are a stable contract (dashboards and alert rules build on them); see
DESIGN.md. Labels are bounded: funnel and stage names come from configuration,
and channels pass through :class:`ChannelBounder` first. Never a user id,
e-mail or free text.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from schemas import REASONS, FunnelDefinition

__all__ = [
    "DEFAULT_CHANNELS",
    "EVENT_LAG_BUCKETS",
    "OTHER_CHANNEL",
    "TRANSITION_BUCKETS",
    "ChannelBounder",
    "FunnelMetrics",
    "Tally",
    "observe_all",
]

OTHER_CHANNEL = "other"
DEFAULT_CHANNELS: tuple[str, ...] = (
    "seo",
    "ads",
    "social",
    "email",
    "partner",
    "direct",
    "referral",
)

# Funnels convert in minutes (a demo) to weeks (a B2B sale): buckets from one
# second to thirty days so quantiles stay meaningful at both ends.
TRANSITION_BUCKETS: tuple[float, ...] = (
    1, 5, 15, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
)
EVENT_LAG_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600,
)
SINK_WRITE_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


#: The worker's agents that produce messages (``funnel_produce_retries_total``).
AGENTS = ("ingest", "journey", "spend")


class ChannelBounder:
    """Maps a channel value to a bounded Prometheus label.

    Values on the allow-list pass through (lower-cased); everything else,
    including a flood of made-up values, becomes ``other``. ClickHouse keeps
    the real value; only the metric label is bounded.
    """

    def __init__(self, allowed: Iterable[str] = DEFAULT_CHANNELS) -> None:
        self._allowed = frozenset(c.strip().lower() for c in allowed if c.strip())

    @property
    def allowed(self) -> frozenset[str]:
        return self._allowed

    def __call__(self, channel: str | None) -> str:
        if not channel:
            return OTHER_CHANNEL
        value = channel.lower()
        return value if value in self._allowed else OTHER_CHANNEL


class FunnelMetrics:
    """All metrics one worker exports, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        channels: Iterable[str] = DEFAULT_CHANNELS,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.channel = ChannelBounder(channels)
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        r = self.registry
        self.events = Counter(
            "funnel_events", "Valid events consumed.", ["funnel", "event_type"], registry=r
        )
        self.invalid_events = Counter(
            "funnel_invalid_events",
            "Messages sent to the dead-letter topic, by machine-readable reason.",
            ["reason"],
            registry=r,
        )
        self.duplicate_events = Counter(
            "funnel_duplicate_events",
            "Events whose event_id was already applied (counted, not applied).",
            ["funnel"],
            registry=r,
        )
        self.late_events = Counter(
            "funnel_late_events",
            "Events older than the allowed lateness behind the partition watermark.",
            ["funnel"],
            registry=r,
        )
        self.stage_entries = Counter(
            "funnel_stage_entries",
            "Users entering a stage for the first time.",
            ["funnel", "stage", "channel"],
            registry=r,
        )
        self.stage_entries_merged = Counter(
            "funnel_stage_entries_merged",
            "Stage entries counted twice for one person: each of two journeys (an anonymous id and "
            "the user id it was linked to) had entered the stage before they were merged. "
            "Persons entering a stage = funnel_stage_entries_total - this.",
            ["funnel", "stage"],
            registry=r,
        )
        self.stage_entries_excluded = Counter(
            "funnel_stage_entries_excluded",
            "Stage entries of persons an exclude event took out of the funnel, counted when it did "
            "(a person no longer excluded has their entries counted in funnel_stage_entries_total "
            "again). Persons entering a stage = funnel_stage_entries_total - "
            "funnel_stage_entries_merged_total - this.",
            ["funnel", "stage"],
            registry=r,
        )
        self.identity_links = Counter(
            "funnel_identity_links",
            "Anonymous ids linked to a user id (the first event carrying both).",
            registry=r,
        )
        self.identity_conflicts = Counter(
            "funnel_identity_conflicts",
            "Events carrying an anonymous id already linked to another user id (the link is not "
            "applied; the event counts for its own user id; kept in ClickHouse identities).",
            registry=r,
        )
        self.transitions = Counter(
            "funnel_transitions",
            "Users advancing from their furthest stage to a later one.",
            ["funnel", "from_stage", "to_stage", "channel"],
            registry=r,
        )
        self.transition_duration = Histogram(
            "funnel_transition_duration_seconds",
            "Seconds from entering from_stage to entering to_stage.",
            ["funnel", "from_stage", "to_stage"],
            buckets=TRANSITION_BUCKETS,
            registry=r,
        )
        self.dropoffs = Counter(
            "funnel_dropoffs",
            "Users whose conversion window expired at a stage without advancing (closed lost).",
            ["funnel", "stage", "channel"],
            registry=r,
        )
        self.stalled_users = Gauge(
            "funnel_stalled_users",
            "Users whose furthest stage is this one and who made no progress for longer "
            "than the stall threshold, by temperature (hot, warm, cold).",
            ["funnel", "stage", "temperature"],
            registry=r,
        )
        self.revenue = Counter(
            "funnel_revenue",
            "Purchase amounts, in the purchase currency.",
            ["funnel", "channel", "currency"],
            registry=r,
        )
        self.customers = Counter(
            "funnel_customers",
            "New customers: users whose first purchase this was.",
            ["funnel", "channel"],
            registry=r,
        )
        self.spend = Counter(
            "funnel_spend",
            "Marketing spend reported on the spend topic (cost per acquisition = spend / customers).",
            ["channel", "currency"],
            registry=r,
        )
        self.sink_rows = Counter(
            "funnel_sink_rows", "Rows written by a sink.", ["sink", "table"], registry=r
        )
        self.sink_errors = Counter(
            "funnel_sink_errors", "Failed sink write attempts.", ["sink"], registry=r
        )
        self.produce_retries = Counter(
            "funnel_produce_retries",
            "Batches handled again because the broker refused a message they produced.",
            ["agent"],
            registry=r,
        )
        self.sink_pending_rows = Gauge(
            "funnel_sink_pending_rows",
            "Rows of batches a sink is writing and has not written yet (counted when a batch flushes).",
            ["sink"],
            registry=r,
        )
        self.sink_write_seconds = Histogram(
            "funnel_sink_write_seconds",
            "Duration of one sink write (one batch, one table).",
            ["sink"],
            buckets=SINK_WRITE_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            "funnel_event_lag_seconds",
            "Event time to processed (journey agent), in seconds: one sample per event applied, "
            "however many funnels it feeds (duplicates none).",
            buckets=EVENT_LAG_BUCKETS,
            registry=r,
        )

    def child(self, metric: MetricWrapperBase, *values: str) -> Any:
        """``metric.labels(*values)``, cached: the hot path counts several times per event.

        ``labels()`` checks and looks up the values under a lock each time
        (about 1.5 us); a cached child costs a dict lookup. Label values are
        bounded (configuration, allow-lists), so the cache is too.
        """
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def declare(self, funnels: Iterable[FunnelDefinition]) -> None:
        """Export every bounded label set at zero before the first event.

        A counter series that first appears at 1 hides that first increase from
        ``rate()``/``increase()``, and series starting at different times skew
        ratios of them. The label sets are bounded (funnels x stages x allowed
        channels), so declaring them all is cheap.
        """
        channels = sorted(self.channel.allowed | {OTHER_CHANNEL})
        for reason in REASONS:
            self.invalid_events.labels(reason)
        for agent in AGENTS:
            self.produce_retries.labels(agent)
        for f in funnels:
            self.duplicate_events.labels(f.name)
            self.late_events.labels(f.name)
            for channel in channels:
                self.customers.labels(f.name, channel)
            for event_type in sorted(f.event_types):
                self.events.labels(f.name, event_type)
            for i, stage in enumerate(f.names):
                self.stage_entries_merged.labels(f.name, stage)
                self.stage_entries_excluded.labels(f.name, stage)
                for channel in channels:
                    self.stage_entries.labels(f.name, stage, channel)
                    if i < len(f.names) - 1:
                        self.dropoffs.labels(f.name, stage, channel)
                for to in f.names[i + 1:]:
                    self.transition_duration.labels(f.name, stage, to)
                    for channel in channels:
                        self.transitions.labels(f.name, stage, to, channel)


class Tally:
    """One batch's metric updates, applied together by :meth:`apply`.

    Per event, a counter's ``inc()`` takes the child's lock, and a
    histogram's ``observe()`` walks its buckets and takes a lock too: about
    12 % of a worker's event loop at 5 000 events/s (BENCHMARKS.md). A tally
    adds up a batch's increments per child and keeps its observations; one
    ``inc`` per child and one per histogram bucket then apply them. Children
    come from :meth:`FunnelMetrics.child` (or an unlabelled metric itself).
    """

    __slots__ = ("_counts", "_observed")

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._observed: dict[Any, list[float]] = {}

    def inc(self, child: Any, amount: float = 1.0) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        values = self._observed.get(child)
        if values is None:
            self._observed[child] = [value]
        else:
            values.append(value)

    def apply(self) -> None:
        """Apply everything tallied since the last call, and start again from nothing."""
        counts, observed = self._counts, self._observed
        self._counts, self._observed = {}, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, values in observed.items():
            observe_all(child, values)


def observe_all(histogram: Any, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``: one ``inc`` per bucket hit, one for the sum.

    Uses the histogram's bucket bounds, buckets and sum as prometheus-client
    keeps them (a value counts in the first bucket whose bound is at least
    the value; exposition adds them up); a histogram without them (another
    client version) is observed value by value. A NaN, which ``observe``
    counts in no bucket, is left out of the buckets here too.
    """
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            histogram.observe(value)
        return
    hits: dict[int, int] = {}
    last = len(bounds)
    for value in values:
        i = bisect_left(bounds, value)
        if i < last and value == value:  # NaN compares unequal to itself
            hits[i] = hits.get(i, 0) + 1
    total.inc(sum(values))
    for i, n in hits.items():
        buckets[i].inc(n)
