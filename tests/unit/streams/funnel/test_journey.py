"""streams.funnel.journey.apply_event: entries, transitions, corrections, replays, attribution."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from schemas import EVENT_TYPES, FunnelDefinition, NormalizedEvent
from sinks import COLUMNS
from streams.funnel.journey import SEEN_LIMIT, UserState, apply_event
from streams.funnel.outputs import DEFAULT_CHANNEL, Breakdown, JourneyResult, StageEntry, Transition
from streams.funnel.rows import entry_row, transition_row

DEFAULT = FunnelDefinition(name="default", stages=EVENT_TYPES)
FIRST_ID = "f0000000-0000-4000-8000-000000000000"  # outside make_event's ids


def funnel(*stages: str, name: str = "default", **options: Any) -> FunnelDefinition:
    return FunnelDefinition(name=name, stages=stages, **options)


def apply_all(
    state: UserState, events: Iterable[NormalizedEvent], definition: FunnelDefinition = DEFAULT
) -> list[JourneyResult]:
    return [apply_event(state, e, definition) for e in events]


def entries_of(results: Iterable[JourneyResult]) -> list[tuple[str, str]]:
    return [(x.stage, x.event_id) for r in results for x in r.entries]


def transitions_of(results: Iterable[JourneyResult]) -> list[tuple[str, str, float, int, bool, bool]]:
    return [
        (t.from_stage, t.to_stage, t.seconds, t.version, t.deleted, t.first)
        for r in results for t in r.transitions
    ]


class Final:
    """What ClickHouse shows with FINAL: the last entry per (funnel, stage, user) and the
    highest-version transition per (funnel, to_stage, user), tombstones hidden."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self.transitions: dict[tuple[str, str, str], Transition] = {}

    def write(self, results: Iterable[JourneyResult]) -> Final:
        for result in results:
            for e in result.entries:
                self.entries[(e.funnel, e.stage, e.user_id)] = entry_row(e)
            for t in result.transitions:
                key = (t.funnel, t.to_stage, t.user_id)
                if key not in self.transitions or self.transitions[key].version <= t.version:
                    self.transitions[key] = t
        return self

    def rows(self, *, with_versions: bool = True) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Sorted rows; ``with_versions=False`` leaves version and is_deleted out of transitions."""
        hidden = set() if with_versions else {"version", "is_deleted"}
        live = [
            tuple(v for k, v in zip(COLUMNS["transitions"], transition_row(t), strict=True)
                  if k not in hidden)
            for t in self.transitions.values() if not t.deleted
        ]
        return sorted(self.entries.values()), sorted(live)


# -- entries and transitions ---------------------------------------------------------------


def test_first_event_enters_its_stage(make_event) -> None:
    visit = make_event("visit", channel="seo")
    [result] = apply_all({}, [visit])
    assert result == JourneyResult(
        duplicate=False,
        entries=[StageEntry("default", "visit", 0, "u1", visit["ts"], "seo", visit["event_id"])],
        transitions=[],
        channel="seo",
    )


def test_next_stage_is_a_transition_with_its_duration(make_event) -> None:
    visit, signup = make_event("visit"), make_event("signup", at=90)
    _, result = apply_all({}, [visit, signup])
    assert result.entries == [
        StageEntry("default", "signup", 1, "u1", signup["ts"], DEFAULT_CHANNEL, signup["event_id"])
    ]
    assert result.transitions == [
        Transition(
            funnel="default", from_stage="visit", to_stage="signup", from_index=0, to_index=1,
            user_id="u1", from_ts=visit["ts"], ts=signup["ts"], seconds=90.0,
            channel=DEFAULT_CHANNEL, event_id=signup["event_id"], version=1, deleted=False, first=True,
        )
    ]


def test_skipped_stages_show_as_one_transition(make_event) -> None:
    results = apply_all({}, [make_event("visit"), make_event("purchase", at=3600)])
    assert transitions_of(results) == [("visit", "purchase", 3600.0, 1, False, True)]
    assert (results[1].transitions[0].from_index, results[1].transitions[0].to_index) == (0, 4)


def test_transition_starts_at_the_furthest_stage(make_event) -> None:
    events = [make_event("visit"), make_event("webinar", at=60), make_event("consultation", at=180)]
    assert transitions_of(apply_all({}, events)) == [
        ("visit", "webinar", 60.0, 1, False, True),
        ("webinar", "consultation", 120.0, 2, False, True),
    ]


def test_repeated_stage_event_is_no_new_entry(make_event) -> None:
    results = apply_all({}, [make_event("visit"), make_event("visit", at=10), make_event("visit", at=20)])
    assert [len(r.entries) for r in results] == [1, 0, 0]
    assert [r.duplicate for r in results] == [False, False, False]
    assert transitions_of(results) == []


def test_repeat_purchases_are_no_entries_and_no_duplicates(make_event) -> None:
    first = [make_event("visit", channel="ads"), make_event("purchase", at=60, amount="10")]
    repeats = [make_event("purchase", at=3600 * d, amount="25") for d in (1, 2, 3)]
    results = apply_all({}, first + repeats)
    assert [(len(r.entries), len(r.transitions), r.duplicate) for r in results[2:]] == [(0, 0, False)] * 3
    assert {r.channel for r in results} == {"ads"}  # each repeat is attributed for revenue


def test_purchases_are_new_then_returning(make_event) -> None:
    first_buy = make_event("purchase", at=60, amount="10")
    events = [make_event("visit"), first_buy, make_event("purchase", at=120, amount="25"),
              make_event("purchase", at=180, amount="5")]
    state: UserState = {}
    assert [r.customer for r in apply_all(state, events)] == ["", "new", "returning", "returning"]
    replay = apply_event(state, first_buy, DEFAULT)
    assert (replay.duplicate, replay.customer) == (True, "new")


def test_breakdown_campaign_is_first_touch_product_region_manager_latest(make_event) -> None:
    events = [make_event("visit", campaign="spring", product="course-a", region="eu"),
              make_event("signup", at=60, campaign="summer", product="course-b", manager="ann")]
    first, second = apply_all({}, events)
    assert first.entries[0].dims == Breakdown("spring", "course-a", "eu", "")
    assert second.entries[0].dims == Breakdown("spring", "course-b", "eu", "ann")
    assert second.transitions[0].campaign == "spring"


def test_event_type_outside_the_funnel_is_ignored(make_event) -> None:
    webinar_funnel = funnel("visit", "webinar", "purchase", name="webinar")
    state: UserState = {}
    events = [make_event("visit", funnel="webinar"), make_event("signup", at=30, funnel="webinar"),
              make_event("webinar", at=60, funnel="webinar")]
    results = apply_all(state, events, webinar_funnel)
    assert [len(r.entries) for r in results] == [1, 0, 1]
    assert transitions_of(results) == [("visit", "webinar", 60.0, 1, False, True)]
    assert sorted(state["webinar"]["st"]) == ["visit", "webinar"]


def test_funnels_keep_separate_journeys(make_event) -> None:
    b2b = funnel("visit", "consultation", "purchase", name="b2b")
    state: UserState = {}
    apply_all(state, [make_event("visit")])
    [result] = apply_all(state, [make_event("visit", funnel="b2b", channel="partner")], b2b)
    assert (entries_of([result]), result.channel) == ([("visit", result.entries[0].event_id)], "partner")
    assert sorted(state) == ["b2b", "default"]


# -- event time, not arrival order ----------------------------------------------------------


def test_purchase_before_its_visit_is_corrected_to_a_transition(make_event) -> None:
    purchase, visit = make_event("purchase", at=100), make_event("visit", at=0)
    first, second = apply_all({}, [purchase, visit])
    assert (entries_of([first]), first.transitions) == ([("purchase", purchase["event_id"])], [])
    assert entries_of([second]) == [("visit", visit["event_id"])]
    assert transitions_of([second]) == [("visit", "purchase", 100.0, 1, False, True)]


def test_stage_reached_later_in_event_time_but_behind_is_no_transition(make_event) -> None:
    # Bought first, watched the webinar afterwards: an entry, not a step forward.
    results = apply_all({}, [make_event("purchase", at=0), make_event("webinar", at=500)])
    assert [len(r.entries) for r in results] == [1, 1]
    assert transitions_of(results) == []


def test_late_middle_stage_corrects_the_transition_it_splits(make_event) -> None:
    events = [make_event("visit", at=0), make_event("webinar", at=200), make_event("signup", at=100)]
    results = apply_all({}, events)
    assert transitions_of(results) == [
        ("visit", "webinar", 200.0, 1, False, True),
        ("visit", "signup", 100.0, 2, False, True),
        ("signup", "webinar", 100.0, 3, False, False),  # a correction, not a new conversion
    ]


def test_transition_that_no_longer_exists_becomes_a_tombstone(make_event) -> None:
    visit, signup, purchase = make_event("visit", at=100), make_event("signup", at=200), make_event(
        "purchase", at=50)
    results = apply_all({}, [visit, signup, purchase])
    assert results[2].transitions == [
        Transition(
            funnel="default", from_stage="", to_stage="signup", from_index=0, to_index=1, user_id="u1",
            from_ts=signup["ts"], ts=signup["ts"], seconds=0.0, channel=DEFAULT_CHANNEL,
            event_id=signup["event_id"], version=2, deleted=True, first=False,
        )
    ]


def test_same_time_orders_by_stage_and_takes_zero_seconds(make_event) -> None:
    results = apply_all({}, [make_event("signup", at=5), make_event("visit", at=5)])
    assert transitions_of(results) == [("visit", "signup", 0.0, 1, False, True)]


# Five events of one user with out-of-order times: every arrival order must end
# in the same tables (versions aside), with no negative durations on the way.
JOURNEY = [("visit", 0), ("signup", 300), ("webinar", 200), ("consultation", 900), ("purchase", 100)]
STRAIGHT = [("visit", 0), ("webinar", 200), ("signup", 100), ("purchase", 1000), ("consultation", 900)]


@pytest.mark.parametrize(
    ("journey", "expected"),
    [
        # In event time: visit, purchase, webinar, signup, consultation.
        pytest.param(JOURNEY, [("visit", "purchase", 100.0)], id="bought-early"),
        pytest.param(STRAIGHT, [("visit", "signup", 100.0), ("signup", "webinar", 100.0),
                                ("webinar", "consultation", 700.0), ("consultation", "purchase", 100.0)],
                     id="every-stage-in-order"),
    ],
)
def test_every_arrival_order_ends_in_the_same_tables(make_event, journey, expected) -> None:
    events = [make_event(stage, at=at, channel="ads") for stage, at in journey]
    outcomes = set()
    for order in itertools.permutations(events):
        results = apply_all({}, order)
        assert all(t.seconds >= 0 for r in results for t in r.transitions)
        entries, transitions = Final().write(results).rows(with_versions=False)
        outcomes.add((tuple(entries), tuple(transitions)))
    [(final_entries, final_transitions)] = outcomes
    assert sorted((row[2], row[1]) for row in final_entries) == list(enumerate(EVENT_TYPES))
    assert sorted((row[1], row[2], row[8]) for row in final_transitions) == sorted(expected)


# -- duplicates and replays -----------------------------------------------------------------


def test_duplicate_is_flagged_not_applied_and_reemits_the_current_rows(make_event) -> None:
    visit, signup = make_event("visit"), make_event("signup", at=60)
    state: UserState = {}
    first = apply_all(state, [visit, signup])
    before = copy.deepcopy(state)
    replay = apply_event(state, visit, DEFAULT)
    assert replay.duplicate is True
    assert state == before
    assert [entry_row(e) for e in replay.entries] == [entry_row(e) for r in first for e in r.entries]
    assert [transition_row(t) for t in replay.transitions] == [
        transition_row(t) for r in first for t in r.transitions
    ]


def test_duplicate_of_an_event_that_caused_nothing_still_reemits_the_state(make_event) -> None:
    visit, again = make_event("visit"), make_event("visit", at=30)
    state: UserState = {}
    apply_all(state, [visit, again])
    replay = apply_event(state, again, DEFAULT)
    assert (replay.duplicate, entries_of([replay]), replay.transitions) == (
        True, [("visit", visit["event_id"])], [])


def test_duplicate_reemits_tombstones_and_latest_versions(make_event) -> None:
    events = [make_event("visit", at=100), make_event("signup", at=200), make_event("purchase", at=50)]
    state: UserState = {}
    results = apply_all(state, events)
    replay = apply_event(state, events[0], DEFAULT)
    assert replay.duplicate
    assert transitions_of([replay]) == [("", "signup", 0.0, 2, True, False)]
    assert Final().write(results).rows() == Final().write([*results, replay]).rows()


def test_replaying_any_prefix_changes_no_table(make_event) -> None:
    """A batch re-consumed after a crash (its first attempt maybe lost) is written once."""
    events = [make_event(stage, at=at, channel="seo") for stage, at in JOURNEY]
    state: UserState = {}
    results = apply_all(state, events)
    expected = Final().write(results).rows()
    for crash_after in range(1, len(events) + 1):
        replayed = apply_all(copy.deepcopy(state), events[:crash_after])
        assert all(r.duplicate for r in replayed)
        # The replay alone (first attempt never reached the sink) and on top of it.
        assert Final().write(replayed).rows() == expected
        assert Final().write([*results, *replayed]).rows() == expected


def test_seen_event_ids_are_bounded(make_event) -> None:
    state: UserState = {}
    first = make_event("visit", event_id=FIRST_ID)
    apply_all(state, [first, *(make_event("visit", at=i) for i in range(1, SEEN_LIMIT + 1))])
    seen = state["default"]["seen"]
    assert len(seen) == SEEN_LIMIT and FIRST_ID not in seen
    forgotten = apply_event(state, first, DEFAULT)  # too old to recognise: applied, changes nothing
    assert (forgotten.duplicate, forgotten.entries, forgotten.transitions) == (False, [], [])
    recent = apply_event(state, make_event("visit", event_id=seen[-1]), DEFAULT)
    assert recent.duplicate is True
    assert len(state["default"]["seen"]) == SEEN_LIMIT


# -- attribution ----------------------------------------------------------------------------


def test_first_touch_channel_is_kept(make_event) -> None:
    events = [make_event("visit", channel="ads"), make_event("signup", at=60, channel="seo"),
              make_event("purchase", at=120, channel="email")]
    results = apply_all({}, events)
    assert [r.channel for r in results] == ["ads"] * 3
    assert {e.channel for r in results for e in r.entries} == {"ads"}
    assert {t.channel for r in results for t in r.transitions} == {"ads"}


def test_first_touch_without_channel_is_direct_for_good(make_event) -> None:
    results = apply_all({}, [make_event("visit"), make_event("signup", at=60, channel="ads")])
    assert [r.channel for r in results] == [DEFAULT_CHANNEL, DEFAULT_CHANNEL] == ["direct", "direct"]
    assert results[1].transitions[0].channel == "direct"


def test_last_touch_takes_the_latest_channel(make_event) -> None:
    last_touch = funnel(*EVENT_TYPES, attribution="last_touch")
    events = [make_event("visit", channel="ads"), make_event("signup", at=60, channel="seo"),
              make_event("webinar", at=120)]
    results = apply_all({}, events, last_touch)
    assert [r.channel for r in results] == ["ads", "seo", "seo"]
    assert [(e.stage, e.channel) for r in results for e in r.entries] == [
        ("visit", "ads"), ("signup", "seo"), ("webinar", "seo")]
    assert [t.channel for r in results for t in r.transitions] == ["seo", "seo"]


def test_last_touch_starts_direct_until_a_channel_arrives(make_event) -> None:
    last_touch = funnel(*EVENT_TYPES, attribution="last_touch")
    results = apply_all({}, [make_event("visit"), make_event("signup", at=60, channel="ads")], last_touch)
    assert [r.channel for r in results] == ["direct", "ads"]


# -- state ----------------------------------------------------------------------------------


def test_state_survives_a_json_round_trip(make_event) -> None:
    events = [make_event(stage, at=at, channel="ads") for stage, at in JOURNEY]
    events += [events[1], make_event("purchase", at=1000)]  # a replay and a repeat purchase
    plain: UserState = {}
    stored: UserState = {}
    for event in events:
        stored = json.loads(json.dumps(stored))  # what a table store would give back
        assert apply_event(stored, event, DEFAULT) == apply_event(plain, event, DEFAULT)
    assert json.loads(json.dumps(plain)) == plain == stored


# -- worked examples (DESIGN.md) ------------------------------------------------------------


def run_funnel(definition: FunnelDefinition, reached: Sequence[int], make_event) -> tuple[Counter, Counter]:
    """``reached[i]`` users get to stage i, one minute per stage; entries and transitions counted."""
    entries: Counter[str] = Counter()
    transitions: Counter[tuple[str, str]] = Counter()
    for user in range(reached[0]):
        state: UserState = {}
        depth = sum(1 for n in reached if user < n)
        for i, stage in enumerate(definition.names[:depth]):
            result = apply_event(state, make_event(stage, f"u{user}", at=60 * i,
                                                   funnel=definition.name), definition)
            entries.update(e.stage for e in result.entries)
            transitions.update((t.from_stage, t.to_stage) for t in result.transitions
                               if t.first and t.seconds == 60.0)
    return entries, transitions


def conversions(definition: FunnelDefinition, entries: Counter) -> list[float]:
    return [entries[b] / entries[a] for a, b in itertools.pairwise(definition.names)]


def test_worked_example_five_stages(make_event) -> None:
    entries, transitions = run_funnel(DEFAULT, [1000, 100, 40, 20, 10], make_event)
    assert [entries[s] for s in DEFAULT.names] == [1000, 100, 40, 20, 10]
    assert transitions == {("visit", "signup"): 100, ("signup", "webinar"): 40,
                           ("webinar", "consultation"): 20, ("consultation", "purchase"): 10}
    assert conversions(DEFAULT, entries) == [0.10, 0.40, 0.50, 0.50]
    assert entries["purchase"] / entries["visit"] == 0.01


@pytest.mark.parametrize(
    ("stages", "reached", "steps"),
    [
        pytest.param(("visit", "signup", "consultation", "purchase"), [1000, 100, 20, 10],
                     [0.10, 0.20, 0.50], id="1000-100-20-10"),
        pytest.param(("visit", "signup", "consultation", "purchase"), [100_000, 7_000, 5_000, 1_000],
                     [0.07, 5 / 7, 0.20], id="100000-7000-5000-1000"),
    ],
)
def test_worked_example_four_stages(make_event, stages, reached, steps) -> None:
    four = funnel(*stages, name="four")
    entries, transitions = run_funnel(four, reached, make_event)
    assert [entries[s] for s in stages] == reached
    assert list(transitions.values()) == reached[1:]
    assert conversions(four, entries) == pytest.approx(steps, rel=1e-12)
    assert entries["purchase"] / entries["visit"] == 0.01


def test_first_touch_is_the_earliest_event_even_when_it_arrives_late(make_event) -> None:
    """A signup (ads) processed before its earlier visit (seo): the visit's channel wins,
    and what was already emitted comes again under it, marked as not new."""
    state: UserState = {}
    signup = make_event("signup", at=60, channel="ads", campaign="bf")
    visit = make_event("visit", at=0, channel="seo")
    first, late = apply_all(state, [signup, visit])
    assert (first.channel, [e.channel for e in first.entries]) == ("ads", ["ads"])
    assert late.channel == "seo"
    assert [(e.stage, e.channel, e.new, e.dims.campaign) for e in late.entries] == [
        ("visit", "seo", True, ""), ("signup", "seo", False, "")]
    assert [(t.from_stage, t.to_stage, t.channel, t.first) for t in late.transitions] == [
        ("visit", "signup", "seo", True)]
    # A later event with another channel changes nothing under first touch.
    (after,) = apply_all(state, [make_event("webinar", at=120, channel="email")])
    assert after.channel == "seo" and [e.channel for e in after.entries] == ["seo"]


# -- fast paths (apply_event's shortcuts must give what the general rules give) ---------------


def test_first_event_state_layout_is_byte_for_byte_the_changelog_format(make_event) -> None:
    """The first event builds its state in one go: same keys, order, nesting, lists."""
    buy = make_event("purchase", channel=None, campaign="bf", product="course-a")
    state: UserState = {}
    [result] = apply_all(state, [buy])
    assert json.dumps(state) == json.dumps({"default": {
        "st": {"purchase": [buy["ts"], buy["event_id"]]}, "tr": {}, "ver": 0, "ch": "direct",
        "dims": ["bf", "course-a", "", ""], "buys": [buy["event_id"]], "drops": {},
        "seen": [buy["event_id"]], "last": buy["ts"], "cht": buy["ts"]}})
    assert (result.customer, result.channel, entries_of([result])) == (
        "new", "direct", [("purchase", buy["event_id"])])
    # A first event whose stage the funnel lacks still attributes and remembers it.
    other = funnel("visit", "purchase", name="short")
    signup = make_event("signup", funnel="short", channel="ads", region="eu")
    [skipped] = apply_all(state, [signup], other)
    assert (skipped.entries, skipped.channel, skipped.customer) == ([], "ads", "")
    assert state["short"] == {"st": {}, "tr": {}, "ver": 0, "ch": "ads", "dims": ["", "", "eu", ""],
                              "buys": [], "drops": {}, "seen": [signup["event_id"]], "last": 0,
                              "cht": signup["ts"]}


def test_results_are_genuine_frozen_dataclasses(make_event) -> None:
    visit, signup = make_event("visit", channel="seo", campaign="c"), make_event("signup", at=30)
    _, result = apply_all({}, [visit, signup])
    [entry], [tr] = result.entries, result.transitions
    assert type(entry) is StageEntry and type(tr) is Transition and type(entry.dims) is Breakdown
    assert entry == StageEntry("default", "signup", 1, "u1", signup["ts"], "seo", signup["event_id"],
                               Breakdown("c", "", "", ""), True)
    assert hash(entry) == hash(StageEntry(*(getattr(entry, f) for f in StageEntry.__slots__)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.stage = "visit"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.version = 0  # type: ignore[misc]


def test_in_order_event_after_an_out_of_order_one_walks_event_time(make_event) -> None:
    """Arrival order stops being event-time order once an event came late: the walk
    must not trust it afterwards, even when the newest event is the latest in time."""
    purchase, visit, signup = (make_event("purchase", at=100), make_event("visit", at=0),
                               make_event("signup", at=200))
    state: UserState = {}
    results = apply_all(state, [purchase, visit, signup])
    assert transitions_of(results) == [("visit", "purchase", 100.0, 1, False, True)]
    assert state["default"]["tr"] == {"purchase": ["visit", 1]}


def test_same_time_out_of_funnel_order_then_a_later_stage(make_event) -> None:
    results = apply_all({}, [make_event("signup", at=5), make_event("visit", at=5),
                             make_event("webinar", at=10)])
    assert transitions_of(results) == [("visit", "signup", 0.0, 1, False, True),
                                       ("signup", "webinar", 5.0, 2, False, True)]


def test_a_tombstone_is_not_repeated_by_later_entries(make_event) -> None:
    events = [make_event("visit", at=100), make_event("signup", at=200), make_event("webinar", at=50),
              make_event("consultation", at=300), make_event("purchase", at=400)]
    results = apply_all({}, events)
    assert [transitions_of([r]) for r in results[2:]] == [
        [("", "signup", 0.0, 2, True, False)],
        [("webinar", "consultation", 250.0, 3, False, True)],
        [("consultation", "purchase", 100.0, 4, False, True)],
    ]


def test_one_late_event_corrects_several_transitions_in_funnel_order(make_event) -> None:
    events = [make_event("visit", at=100), make_event("signup", at=200), make_event("webinar", at=300),
              make_event("purchase", at=400), make_event("consultation", at=50)]
    results = apply_all({}, events)
    assert transitions_of(results[4:]) == [
        ("", "signup", 0.0, 4, True, False),
        ("", "webinar", 0.0, 5, True, False),
        ("consultation", "purchase", 350.0, 6, False, False),
    ]


def test_stages_the_funnel_no_longer_has_are_retracted_in_funnel_order(make_event) -> None:
    """A funnel redefined under the same name (config change): its new stages count."""
    state: UserState = {}
    apply_all(state, [make_event("visit", at=0), make_event("signup", at=10)])
    narrower = funnel("visit", "purchase")
    [result] = apply_all(state, [make_event("purchase", at=20)], narrower)
    assert [(t.from_stage, t.to_stage, t.from_index, t.to_index, t.version, t.deleted)
            for t in result.transitions] == [("", "signup", 0, -1, 2, True),
                                             ("visit", "purchase", 0, 1, 3, False)]
    assert [(e.stage, e.stage_index) for e in result.entries] == [("purchase", 1)]


def test_each_funnel_definition_uses_its_own_stage_positions(make_event) -> None:
    """Per-definition lookups are cached: a new definition (even under a reused
    name, or a reused object id) must never see another's positions."""
    for stages in itertools.permutations(("visit", "signup", "purchase")):
        definition = funnel(*stages)
        [result] = apply_all({}, [make_event("signup")], definition)
        assert result.entries[0].stage_index == stages.index("signup")
        del definition


def test_an_earlier_event_of_a_stage_arriving_late_moves_its_transitions(make_event) -> None:
    """The signup's entry moves to the earlier signup: so do visit -> signup and signup -> webinar.

    Found by tests/unit/streams/agents/test_order_properties.py: the walk
    still wanted the same from-stages, so the transitions kept the times of
    the later signup (visit -> signup took 300 s instead of 100 s).
    """
    events = [make_event("visit", at=0), make_event("signup", at=300), make_event("webinar", at=400),
              make_event("signup", at=100)]
    results = apply_all({}, events)
    _, transitions = Final().write(results).rows(with_versions=False)
    assert sorted((row[1], row[2], row[8]) for row in transitions) == [
        ("signup", "webinar", 300.0), ("visit", "signup", 100.0)]
    # Corrections, not new conversions; in funnel order, after the moved entry's version (3).
    assert transitions_of(results[3:]) == [("visit", "signup", 100.0, 4, False, False),
                                           ("signup", "webinar", 300.0, 5, False, False)]
    # The same events in event time give the same tables.
    in_order = apply_all({}, sorted(events, key=lambda e: e["ts"]))
    assert Final().write(in_order).rows(with_versions=False)[1] == transitions


def test_last_progress_follows_an_entry_that_moves_earlier(make_event) -> None:
    """``last`` (what stalled leads measure from) is the latest stage entry, as the
    ``stalled_leads`` view's max(ts) over stage_entries FINAL: a late earlier event of the
    latest stage, or a merge bringing one, makes it earlier."""
    from streams.funnel import identity

    state: UserState = {}
    visit, signup, early = (make_event("visit", at=0), make_event("signup", at=300),
                            make_event("signup", at=100))
    apply_all(state, [visit, signup])
    assert state["default"]["last"] == signup["ts"]
    apply_all(state, [early])
    assert state["default"]["last"] == early["ts"]
    # A merge: the anonymous journey's signup is earlier than the person's.
    person: UserState = {}
    apply_all(person, [visit, signup])
    anonymous: UserState = {}
    apply_all(anonymous, [make_event("signup", None, at=100, anonymous_id="a1", person_id="a1")])
    identity.merge(person, "a1", identity.journey_of(anonymous, {"default": DEFAULT}), {"default": DEFAULT},
                   "u1")
    assert person["default"]["last"] == early["ts"]
