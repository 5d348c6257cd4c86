"""Named stages and exclusions through the real agents: rows, marks and the counters agree.

The journey code's own tests (tests/unit/streams/funnel/test_stages.py) say
what a person enters and when they are excluded. These say that what the
agents write and count follows, whatever the order: ClickHouse (FINAL) holds
one marked row per person and stage, and on /metrics ``entries - merged -
excluded`` per stage is the number of persons in it who are not excluded,
also when an exclusion comes with the event that enters a stage, when it is
taken back by a late event, and when identity merges journeys whose marks
differ.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from schemas import DEFAULT_FUNNEL, FunnelsConfig
from streams.pipeline import Pipeline
from tests.unit.streams.agents.test_identity import T0, World, counter, final, make_pipeline

__all__ = ["make_pipeline"]  # the fixture, used by these tests

B2B = FunnelsConfig.from_mapping({"funnels": [{
    "name": "b2b",
    "conversion_window_days": 60,
    "stages": [
        "visit",
        {"name": "pricing", "event": "visit", "where": {"properties.page": "/pricing"}},
        {"name": "lead", "event": "signup"},
        {"name": "mql", "event": "signup", "where": {"properties.lead_score": {"gte": 50}},
         "within_days": 14},
        {"name": "won", "event": "purchase",
         "where": {"amount": {"gt": 0}, "currency": {"in": ["EUR", "USD"]}}},
    ],
    "exclude": [{"event": "purchase", "where": {"properties.refunded": True}}],
}]}, "test")
STAGES = B2B.funnels[0].names
DAY = 86_400


def day(n: int) -> int:
    """Event time (seconds from T0) of day ``n`` of the test's 45 days back (none in the future)."""
    return (n - 45) * DAY


def ts(n: int) -> int:
    return T0 + day(n) * 1000


def counted(pipeline: Pipeline, stage: str) -> float:
    """Persons in ``stage`` by /metrics: entries - merged - excluded."""
    total = sum(s.value for family in pipeline.metrics.registry.collect()
                if family.name == "funnel_stage_entries" for s in family.samples
                if s.name == "funnel_stage_entries_total" and s.labels["stage"] == stage)
    return (total - counter(pipeline, "funnel_stage_entries_merged_total", funnel="b2b", stage=stage)
            - counter(pipeline, "funnel_stage_entries_excluded_total", funnel="b2b", stage=stage))


def rows(pipeline: Pipeline, table: str = "stage_entries") -> set[tuple[Any, ...]]:
    if table == "transitions":
        return {(r["from_stage"], r["to_stage"], r["user_id"], r["excluded"])
                for r in final(pipeline, table)}
    return {(r["stage"], r["user_id"], r["ts"], r["excluded"]) for r in final(pipeline, table)}


def assert_counters_match_rows(pipeline: Pipeline) -> None:
    kept = rows(pipeline)
    for stage in STAGES:
        persons = sum(1 for row in kept if row[0] == stage and not row[3])
        assert counted(pipeline, stage) == persons, stage


@pytest.fixture
def world(make_pipeline: Any) -> World:
    return World(make_pipeline(direct=True, funnels=B2B))


def test_a_refund_that_enters_the_last_stage_excludes_and_counts_nothing(world: World) -> None:
    world.send(world.event("visit", user="u1", at=day(0)))
    world.deliver()
    refund = world.event("purchase", user="u1", at=day(1), properties={"refunded": True})
    world.send(refund)
    world.deliver()
    assert rows(world.pipeline) == {("visit", "u1", ts(0), 1), ("won", "u1", ts(1), 1)}
    assert rows(world.pipeline, "transitions") == {("visit", "won", "u1", 1)}
    assert_counters_match_rows(world.pipeline)  # won: never counted, so not taken out either
    world.send(refund)  # a replay changes nothing
    world.deliver()
    assert_counters_match_rows(world.pipeline)


def test_an_earlier_purchase_arriving_late_takes_the_exclusion_back(world: World) -> None:
    world.send(world.event("visit", user="u1", at=day(0)),
               world.event("purchase", user="u1", at=day(2), properties={"refunded": True}, currency="GBP"))
    world.deliver()
    assert {row[3] for row in rows(world.pipeline)} == {1}
    assert_counters_match_rows(world.pipeline)
    world.send(world.event("purchase", user="u1", at=day(1)))  # won before the refund: a customer
    world.deliver()
    assert rows(world.pipeline) == {("visit", "u1", ts(0), 0), ("won", "u1", ts(1), 0)}
    assert_counters_match_rows(world.pipeline)


def test_a_merge_of_journeys_with_different_marks_keeps_the_counters_exact(world: World) -> None:
    # The anonymous journey is excluded (a refund after its visit); the person's is not.
    world.send(world.event("visit", anon="a1", at=day(0)),
               world.event("purchase", anon="a1", at=day(1), properties={"refunded": True}, currency="GBP"),
               world.event("visit", user="u1", at=day(2), properties={"page": "/pricing"}),
               world.event("signup", user="u1", at=day(3), properties={"lead_score": 80}))
    world.deliver()
    assert_counters_match_rows(world.pipeline)
    world.send(world.event("webinar", user="u1", anon="a1", at=day(4)))  # the link
    world.deliver()
    assert {(row[0], row[3]) for row in rows(world.pipeline)} == {
        ("visit", 1), ("pricing", 1), ("lead", 1), ("mql", 1)}  # the refund fell inside the person's journey
    assert {row[1] for row in rows(world.pipeline)} == {"u1"}
    assert_counters_match_rows(world.pipeline)


@pytest.mark.parametrize("seed", range(12))
def test_any_order_of_links_refunds_and_late_events_gives_the_same_rows_and_exact_counters(
        make_pipeline: Any, seed: int) -> None:
    rng = random.Random(seed)
    devices = {f"a{i}": f"u{i % 3}" for i in range(5)}  # five devices of three persons
    plan: list[dict[str, Any]] = []
    for anon, user in devices.items():
        for _ in range(rng.randint(1, 5)):
            event_type = rng.choice(["visit", "visit", "signup", "signup", "purchase", "webinar"])
            fields: dict[str, Any] = {"at": day(rng.randint(0, 40))}
            who = rng.choice(["anon", "user", "both"])
            if who != "user":
                fields["anon"] = anon
            if who != "anon":
                fields["user"] = user
            if event_type == "visit":
                fields["properties"] = {"page": rng.choice(["/", "/pricing"])}
            elif event_type == "signup":
                fields["properties"] = {"lead_score": rng.randint(0, 100)}
            elif event_type == "purchase":
                fields["currency"] = rng.choice(["EUR", "GBP"])
                if rng.random() < 0.4:
                    fields["properties"] = {"refunded": True}
            plan.append({"event_type": event_type, **fields})
    results = []
    for order in range(2):
        world = World(make_pipeline(direct=True, funnels=B2B))
        events = [world.event(p["event_type"], **{k: v for k, v in p.items() if k != "event_type"})
                  for p in plan]
        random.Random(order).shuffle(events)
        while events:
            n = 1 + rng.randrange(3)
            take, events = events[:n], events[n:]
            world.send(*take)
            if rng.random() < 0.5:
                world.deliver()
        world.deliver()
        assert_counters_match_rows(world.pipeline)
        results.append((rows(world.pipeline), rows(world.pipeline, "transitions")))
    assert results[0] == results[1]


def test_an_event_in_two_funnels_is_one_event_lag_sample(make_pipeline: Any) -> None:
    """funnel_event_lag_seconds observes each event once, however many funnels it feeds;
    a replayed event (a duplicate in every funnel) adds nothing."""
    both = FunnelsConfig(funnels=(DEFAULT_FUNNEL, *B2B.funnels))
    world = World(make_pipeline(direct=True, funnels=both))
    visit = world.event("visit", user="u1", at=day(0), properties={"page": "/pricing"})
    world.send(visit, world.event("signup", user="u1", at=day(1)),
               world.event("webinar", user="u1", at=day(2)))
    world.deliver()
    world.send(visit)
    world.deliver()
    assert counter(world.pipeline, "funnel_events_total", funnel="b2b", event_type="visit") == 2
    assert counter(world.pipeline, "funnel_duplicate_events_total", funnel="b2b") == 1
    assert counter(world.pipeline, "funnel_event_lag_seconds_count") == 3


def test_a_link_merging_a_journey_without_stages_is_no_error(world: World) -> None:
    """The anonymous purchase (in GBP) enters no b2b stage, but the funnel read it: its journey has no stages.

    Merging it into a person without a b2b journey walked no stages and
    raised StopIteration out of the journey agent's batch (found by
    tests/unit/streams/agents/test_order_properties.py).
    """
    world.send(world.event("purchase", anon="a1", at=day(0), currency="GBP"))
    world.deliver()
    world.send(world.event("webinar", user="u1", anon="a1", at=day(1)))  # the link; b2b reads no webinar
    world.deliver()
    assert rows(world.pipeline) == set()
    world.send(world.event("visit", anon="a1", at=day(2)))
    world.deliver()
    assert rows(world.pipeline) == {("visit", "u1", ts(2), 0)}
    assert_counters_match_rows(world.pipeline)


def test_a_transition_that_appears_with_the_event_that_ends_an_exclusion_is_counted(world: World) -> None:
    """The refund (in GBP: no stage) excludes the person; a purchase before it enters won and ends that.

    visit -> won first appears with that purchase, not excluded: a new
    conversion. Before, the re-emission of every row (the mark changed) lost
    its ``first`` and funnel_transitions_total stayed 0 (found by
    tests/unit/streams/agents/test_order_properties.py).
    """
    world.send(world.event("visit", user="u1", at=day(0)))
    world.send(world.event("purchase", user="u1", at=day(2), properties={"refunded": True}, currency="GBP"))
    world.send(world.event("purchase", user="u1", at=day(1)))
    world.deliver()
    assert rows(world.pipeline, "transitions") == {("visit", "won", "u1", 0)}
    assert_counters_match_rows(world.pipeline)
    assert counter(world.pipeline, "funnel_transitions_total", funnel="b2b", from_stage="visit",
                   to_stage="won", channel="direct") == 1
