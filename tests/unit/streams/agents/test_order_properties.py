"""Property: the journeys through the real agents do not depend on arrival order, and follow the README.

Hypothesis makes a small world - a few persons, their visits (some to
``/pricing``), signups (some with a lead score of 50 or more), webinars,
consultations and purchases (some refunded, some in GBP or of amount 0) over
about 40 days; anonymous devices linked later by an event carrying both ids,
a second device, conflicting links, duplicates - and feeds the same events
to two fresh pipelines (the default funnel and the README's b2b funnel,
``deploy/funnels.b2b.yml``, side by side) in two orders, batch splits and
delivery moments it chooses. Then:

1. the collapsed ClickHouse state (``FINAL``: stage entries, transitions,
   stage counts, identities, the events' keys) is the same for both;
2. it is what :func:`oracle` computes from the README's rules alone;
3. /metrics agree with it: per funnel and stage, entries - merged -
   excluded is the persons in the stage who are not excluded; links,
   conflicts, duplicates and revenue are counted once per event.

Conflicting links are sent after everything else has been delivered: which
of two links of one anonymous id comes first is an arrival-order decision
("the first link wins"), so a world where that race goes both ways has no
order-independent answer.

Drop-offs depend on the watermark, so on the order, by design ("moving on
after it does not" retract one): for them only what must hold in any order
is checked (:func:`check_dropoffs`).

Runs a few examples in the suite; ``FUNNEL_PROPERTY_EXAMPLES=3000`` runs more.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import orjson
from faust.types import TP
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streams.pipeline import Pipeline
from streams.settings import Settings, load_funnels
from tests.unit.streams.agents.test_direct import NOW_S, SENT, Normalized
from tests.unit.streams.agents.test_direct import Table as FakeTable
from tests.unit.streams.agents.test_identity import World, final
from tests.unit.streams.fakes import PARTITIONS, RecordingClient, partitions

FUNNELS = load_funnels(Path(__file__).resolve().parents[4] / "deploy" / "funnels.b2b.yml")
EXAMPLES = int(os.environ.get("FUNNEL_PROPERTY_EXAMPLES", "25"))
#: Another seed than the suite's fixed one, to look further: FUNNEL_PROPERTY_SEED=7.
SEED = os.environ.get("FUNNEL_PROPERTY_SEED")
DAY_MS = 86_400_000
#: Event times: from 41 days before the tests' clock (none in the future).
START = int(NOW_S * 1000) - 41 * DAY_MS
EVENT_TYPES = ("visit", "signup", "webinar", "consultation", "purchase")


# -- the world ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ev:
    """One event as sent (its copies, duplicates, have the same event id and content)."""

    n: int
    event_type: str
    user: str | None
    anon: str | None
    ts: int
    channel: str | None
    properties: tuple[tuple[str, Any], ...] = ()
    amount: str | None = None
    currency: str | None = None
    late_link: bool = False  # a link sent after everything else (see the module's docstring)

    @property
    def event_id(self) -> str:
        return f"00000000-0000-4000-8000-{self.n:012d}"

    @property
    def props(self) -> dict[str, Any]:
        return dict(self.properties)

    def raw(self, copy: int) -> bytes:
        """The message value; a copy (a producer's retry) is another message with the same event."""
        body: dict[str, Any] = {"event_id": self.event_id, "event_type": self.event_type, "ts": self.ts,
                                "channel": self.channel, "_key": self.anon or self.user}
        if self.user is not None:
            body["user_id"] = self.user
        if self.anon is not None:
            body["anonymous_id"] = self.anon
        if self.properties:
            body["properties"] = self.props
        if self.event_type == "purchase":
            body.update(amount=self.amount, currency=self.currency)
        return orjson.dumps(body) + b" " * copy


@dataclass
class Plan:
    events: list[Ev]
    copies: list[tuple[Ev, int]] = field(default_factory=list)  # every message: (event, copy number)


@st.composite
def worlds(draw: st.DrawFn) -> Plan:
    n_persons = draw(st.integers(1, 4))
    events: list[Ev] = []

    def ts() -> int:
        # Days and a few hours of them, so that stages fall on both sides of
        # within_days (14) and the conversion windows; + n ms: no two events tie.
        day = draw(st.integers(0, 40))
        hour = draw(st.sampled_from([0, 0, 1, 12]))
        return START + day * DAY_MS + hour * 3_600_000 + len(events)

    def fields(event_type: str) -> dict[str, Any]:
        out: dict[str, Any] = {"channel": draw(st.sampled_from([None, "ads", "seo"]))}
        if event_type == "visit" and draw(st.booleans()):
            out["properties"] = (("page", draw(st.sampled_from(["/", "/pricing"]))),)
        elif event_type == "signup" and draw(st.booleans()):
            out["properties"] = (("lead_score", draw(st.sampled_from([10, 49, 50, 80]))),)
        elif event_type == "purchase":
            out["amount"] = draw(st.sampled_from(["10", "0", "25.5"]))
            out["currency"] = draw(st.sampled_from(["EUR", "EUR", "USD", "GBP"]))
            if draw(st.integers(0, 2)) == 0:
                out["properties"] = (("refunded", True),)
        return out

    for person in range(n_persons):
        user, devices = f"u{person}", [f"a{person}", f"b{person}"]
        for _ in range(draw(st.integers(1, 5))):
            event_type = draw(st.sampled_from(EVENT_TYPES))
            who = draw(st.sampled_from(["user", "user", "anon", "anon", "link"]))
            device = devices[draw(st.integers(0, 1))]
            events.append(Ev(len(events), event_type, None if who == "anon" else user,
                             device if who != "user" else None, ts(), **fields(event_type)))
    # Conflicting links (sent last): a device of one person with another user id.
    for _ in range(draw(st.integers(0, 2))):
        person = draw(st.integers(0, n_persons - 1))
        device = f"{draw(st.sampled_from('ab'))}{person}"
        other = draw(st.sampled_from([f"u{p}" for p in range(n_persons) if p != person] + ["u9"]))
        if any(e.late_link and e.anon == device and e.user != other for e in events):
            continue  # one late user per device: the first of two late links would be a race
        event_type = draw(st.sampled_from(EVENT_TYPES))
        events.append(Ev(len(events), event_type, other, device, ts(), late_link=True, **fields(event_type)))
    copies = [(e, 0) for e in events]
    for e in draw(st.lists(st.sampled_from(events), max_size=3)):
        copies.append((e, 1 + sum(1 for c, _ in copies if c is e)))
    return Plan(events, copies)


@dataclass
class Schedule:
    """One arrival: the messages' order, where batches end, after which batches `normalized` is delivered."""

    order: list[int]
    cuts: list[bool]
    deliveries: list[bool]


def schedules(n: int) -> st.SearchStrategy[Schedule]:
    return st.builds(Schedule, st.permutations(range(n)), st.lists(st.booleans(), min_size=n, max_size=n),
                     st.lists(st.booleans(), min_size=n, max_size=n))


# -- running it --------------------------------------------------------------------------------


@contextmanager
def pipeline() -> Iterator[Pipeline]:
    """A fresh pipeline holding every partition (as test_direct's make_pipeline builds it)."""
    with tempfile.TemporaryDirectory() as data, mock.patch.object(time, "time", lambda: NOW_S):
        settings = Settings(kafka_url="kafka://127.0.0.1:9", data_dir=Path(data), topic_partitions=PARTITIONS,
                            topic_prefix="t.", direct_journeys=True)
        built = Pipeline(settings, FUNNELS, clickhouse=RecordingClient(),  # type: ignore[arg-type]
                         database="funnel", registry=CollectorRegistry())
        built.journey.table = FakeTable()  # type: ignore[assignment]
        normalized = Normalized()
        built.ingest.send_normalized = normalized.send  # type: ignore[method-assign]
        SENT[id(built)] = normalized.sent
        built.ingest.direct = frozenset(TP(t, p) for t in built.names.events.values() for p in partitions)
        try:
            yield built
        finally:
            built.close()
            SENT.pop(id(built), None)


def run(plan: Plan, schedule: Schedule) -> dict[str, Any]:
    """The plan's messages in the schedule's order: first all but the late links, then those."""
    with pipeline() as built:
        world = World(built)
        for late in (False, True):
            batch: list[bytes] = []
            for i in schedule.order:
                event, copy = plan.copies[i]
                if event.late_link != late:
                    continue
                batch.append(event.raw(copy))
                if schedule.cuts[i]:
                    world.send(*batch)
                    batch = []
                    if schedule.deliveries[i]:
                        world.deliver()
            if batch:
                world.send(*batch)
            world.deliver()
        return observed(built)


def observed(built: Pipeline) -> dict[str, Any]:
    """The meaningful columns of the collapsed tables (versions and event ids left out), and /metrics."""
    return {
        "stage_entries": {(r["funnel"], r["stage"], r["user_id"], r["ts"], r["channel"], r["excluded"])
                          for r in final(built, "stage_entries")},
        "transitions": {(r["funnel"], r["from_stage"], r["to_stage"], r["user_id"], r["from_ts"], r["ts"],
                         r["channel"], r["excluded"]) for r in final(built, "transitions")},
        "stage_counts": {(r["funnel"], r["kind"], r["from_stage"], r["stage"], r["user_id"],
                          r["window_start"], r["channel"]) for r in final(built, "stage_counts")},
        "identities": {(r["anonymous_id"], r["user_id"], r["status"]) for r in final(built, "identities")},
        "events": {(r["funnel"], r["event_type"], r["event_id"]) for r in final(built, "events")},
        "dropoffs": [dict(r) for r in final(built, "dropoffs")],
        "metrics": metrics(built),
    }


def metrics(built: Pipeline) -> dict[tuple[str, ...], float]:
    """Sample name and labels -> value, for the counters checked, summed over the other labels."""
    kept = {
        "funnel_stage_entries_total": ("funnel", "stage"),
        "funnel_stage_entries_merged_total": ("funnel", "stage"),
        "funnel_stage_entries_excluded_total": ("funnel", "stage"),
        "funnel_transitions_total": ("funnel", "to_stage"),
        "funnel_duplicate_events_total": ("funnel",),
        "funnel_revenue_total": ("funnel", "currency"),
        "funnel_identity_links_total": (),
        "funnel_identity_conflicts_total": (),
    }
    out: Counter[tuple[str, ...]] = Counter()
    for family in built.metrics.registry.collect():
        for sample in family.samples:
            labels = kept.get(sample.name)
            if labels is not None:
                out[(sample.name, *(sample.labels[label] for label in labels))] += sample.value
    return dict(out)


# -- the oracle: the README's rules, on the whole event set --------------------------------------


def stage_matches(funnel: str, stage: str, e: Ev) -> bool:
    """Whether ``e`` is an event of the stage (deploy/funnels.b2b.yml's filters, by hand)."""
    if funnel == "default":
        return e.event_type == stage
    props = e.props
    return {
        "visit": e.event_type == "visit",
        "pricing": e.event_type == "visit" and props.get("page") == "/pricing",
        "lead": e.event_type == "signup",
        "mql": e.event_type == "signup" and props.get("lead_score", -1) >= 50,
        "won": e.event_type == "purchase" and Decimal(e.amount or "0") > 0 and e.currency in ("EUR", "USD"),
    }[stage]


def excludes(funnel: str, e: Ev) -> bool:
    return funnel == "b2b" and e.event_type == "purchase" and e.props.get("refunded") is True


STAGES = {"default": ["visit", "signup", "webinar", "consultation", "purchase"],
          "b2b": ["visit", "pricing", "lead", "mql", "won"]}
READS = {"default": set(EVENT_TYPES), "b2b": {"visit", "signup", "purchase"}}  # stages' and exclusions' types
WITHIN = {("b2b", "mql"): 14 * DAY_MS}


@dataclass
class Expected:
    entries: set[tuple[Any, ...]]
    transitions: set[tuple[Any, ...]]
    stage_counts: set[tuple[Any, ...]]
    identities: set[tuple[str, str, str]]
    events: set[tuple[str, str, str]]
    links: int
    conflicts: int
    duplicates: dict[str, int]
    revenue: dict[tuple[str, str], Decimal]
    excluded: dict[tuple[str, str], bool]  # (funnel, person) -> excluded
    reached: dict[tuple[str, str], dict[str, int]]  # (funnel, person) -> stage -> entry time


def oracle(plan: Plan) -> Expected:
    events = plan.events
    # Identity: an anonymous id links to its first user id (links sent last only when none came
    # before, and then all to one user); the person is the user id once linked.
    linked: dict[str, str] = {}
    for late in (False, True):
        for e in events:
            if e.late_link == late and e.anon and e.user:
                linked.setdefault(e.anon, e.user)
    identities = {(e.anon, e.user, "linked" if linked[e.anon] == e.user else "conflict")
                  for e in events if e.anon and e.user}
    conflicts = sum(1 for e in events if e.anon and e.user and linked[e.anon] != e.user)

    def person(e: Ev) -> str:
        if e.user:
            return e.user
        assert e.anon
        return linked.get(e.anon, e.anon)

    entries, transitions, counts = set(), set(), set()
    excluded: dict[tuple[str, str], bool] = {}
    reached_of: dict[tuple[str, str], dict[str, int]] = {}
    revenue: Counter[tuple[str, str]] = Counter()
    event_keys = set()
    for e in events:
        names = [f for f in STAGES if e.event_type in READS[f]] or [""]
        event_keys |= {(name, e.event_type, e.event_id) for name in names}
        for name in names:
            if name and e.event_type == "purchase":
                revenue[name, e.currency or ""] += Decimal(e.amount or "0")
    for funnel, stages in STAGES.items():
        by_person: dict[str, list[Ev]] = {}
        for e in events:
            if e.event_type in READS[funnel]:
                by_person.setdefault(person(e), []).append(e)
        for who, mine in by_person.items():
            mine.sort(key=lambda e: e.ts)
            channel = mine[0].channel or "direct"  # first touch: the earliest event the funnel reads
            reached = {}
            for stage in stages:
                times = [e.ts for e in mine if stage_matches(funnel, stage, e)]
                if times:
                    reached[stage] = min(times)
            if not reached:
                continue
            reached_of[funnel, who] = reached
            first, end = min(reached.values()), reached.get(stages[-1])
            out = any(excludes(funnel, e) and first <= e.ts and (end is None or e.ts <= end) for e in mine)
            excluded[funnel, who] = out
            for stage, at in reached.items():
                entries.add((funnel, stage, who, at, channel, int(out)))
                if not out:
                    counts.add((funnel, "entry", "", stage, who, at // 1000 - at // 1000 % 60, channel))
            walk = sorted(reached, key=lambda s: (reached[s], stages.index(s)))
            furthest = walk[0]
            for stage in walk[1:]:
                if stages.index(stage) > stages.index(furthest):
                    limit = WITHIN.get((funnel, stage))
                    if limit is None or reached[stage] - reached[furthest] <= limit:
                        at = reached[stage]
                        transitions.add((funnel, furthest, stage, who, reached[furthest], at, channel,
                                         int(out)))
                        if not out:
                            counts.add((funnel, "transition", furthest, stage, who,
                                        at // 1000 - at // 1000 % 60, channel))
                    furthest = stage
    sent = Counter(e.event_id for e, _ in plan.copies)
    duplicates = {funnel: sum(sent[e.event_id] - 1 for e in events if e.event_type in READS[funnel])
                  for funnel in STAGES}
    return Expected(entries, transitions, counts, identities, event_keys, len(linked), conflicts, duplicates,
                    dict(revenue), excluded, reached_of)


# -- the checks --------------------------------------------------------------------------------


def comparable(seen: dict[str, Any]) -> dict[str, Any]:
    """What two orders must agree on: everything but drop-offs and the counters corrections make."""
    return {k: v for k, v in seen.items() if k not in ("dropoffs", "metrics")}


def check_rows(seen: dict[str, Any], want: Expected) -> None:
    assert seen["identities"] == want.identities
    assert seen["stage_entries"] == want.entries
    assert seen["transitions"] == want.transitions
    assert seen["stage_counts"] == want.stage_counts
    assert seen["events"] == want.events


def check_metrics(seen: dict[str, Any], want: Expected) -> None:
    counted = seen["metrics"]

    def value(*key: str) -> float:
        return counted.get(key, 0.0)

    for funnel, stages in STAGES.items():
        for stage in stages:
            persons = sum(1 for (f, who), out in want.excluded.items()
                          if f == funnel and not out and stage in want.reached[f, who])
            assert (value("funnel_stage_entries_total", funnel, stage)
                    - value("funnel_stage_entries_merged_total", funnel, stage)
                    - value("funnel_stage_entries_excluded_total", funnel, stage)) == persons, (funnel, stage)
        assert value("funnel_duplicate_events_total", funnel) == want.duplicates[funnel], funnel
    # A transition is counted once when it first appears; corrections and merges do not take it
    # back, so the default funnel (no exclusions) has counted at least the transitions it has.
    for stage in STAGES["default"][1:]:
        rows = sum(1 for t in want.transitions if t[0] == "default" and t[2] == stage)
        assert value("funnel_transitions_total", "default", stage) >= rows, stage
    for (funnel, currency), amount in want.revenue.items():
        assert value("funnel_revenue_total", funnel, currency) == float(amount), (funnel, currency)
    assert value("funnel_identity_links_total") == want.links
    assert value("funnel_identity_conflicts_total") == want.conflicts


def check_dropoffs(seen: dict[str, Any], want: Expected) -> None:
    """What holds for every drop-off in any order: a person's stage before the last, not moved on inside."""
    windows = {funnel.name: round(funnel.conversion_window_days * DAY_MS) for funnel in FUNNELS.funnels}
    for row in seen["dropoffs"]:
        funnel, stage, who = row["funnel"], row["stage"], row["user_id"]
        reached = want.reached.get((funnel, who))
        assert reached is not None and stage in reached, row
        assert stage != STAGES[funnel][-1], row
        assert row["excluded"] == want.excluded[funnel, who], row
        assert row["entered_at"] == reached[stage], (row, reached)
        assert row["dropped_at"] == row["entered_at"] + windows[funnel], row
        index = STAGES[funnel].index(stage)
        moved_on = [s for s, at in reached.items()
                    if STAGES[funnel].index(s) > index and at <= row["dropped_at"]]
        assert not moved_on, (row, reached)


@st.composite
def runs(draw: st.DrawFn) -> tuple[Plan, Schedule, Schedule]:
    plan = draw(worlds())
    n = len(plan.copies)
    return plan, draw(schedules(n)), draw(schedules(n))


@settings(derandomize=SEED is None, max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@seed(int(SEED or 0))
@given(runs())
def test_any_arrival_order_gives_the_rows_and_counts_the_readme_rules_give(
        case: tuple[Plan, Schedule, Schedule]) -> None:
    plan, one, other = case
    want = oracle(plan)
    first, second = run(plan, one), run(plan, other)
    assert comparable(first) == comparable(second)
    for seen in (first, second):
        check_rows(seen, want)
        check_metrics(seen, want)
        check_dropoffs(seen, want)


def test_the_oracle_follows_the_readme_worked_example() -> None:
    """The README's Identity example, through :func:`oracle` (so the oracle itself is checked once)."""
    h = 3_600_000
    events = [Ev(0, "visit", None, "phone-1", START + 9 * h, "ads"),
              Ev(1, "visit", None, "laptop-7", START + 12 * h, "seo"),
              Ev(2, "signup", "u-42", "laptop-7", START + 12 * h + 300_000, None),
              Ev(3, "webinar", "u-42", None, START + 18 * h, None),
              Ev(4, "purchase", "u-42", "phone-1", START + 19 * h, None, amount="10", currency="EUR")]
    want = oracle(Plan(events, [(e, 0) for e in events]))
    assert {(f, s, who, ch) for f, s, who, _, ch, _ in want.entries if f == "default"} == {
        ("default", s, "u-42", "ads") for s in ("visit", "signup", "webinar", "purchase")}
    assert {(f, a, b) for f, a, b, *_ in want.transitions if f == "default"} == {
        ("default", "visit", "signup"), ("default", "signup", "webinar"), ("default", "webinar", "purchase")}
    assert want.links == 2 and want.conflicts == 0
    seen = run(Plan(events, [(e, 0) for e in events]), Schedule(list(range(5)), [True] * 5, [True] * 5))
    check_rows(seen, want)
    check_metrics(seen, want)
