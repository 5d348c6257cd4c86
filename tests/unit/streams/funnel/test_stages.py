"""Named stages in the journey: filters, several stages per event, within_days, exclusions.

Late events that change the outcome included.
"""

from __future__ import annotations

from typing import Any

import yaml

from schemas import FunnelDefinition, FunnelsConfig
from streams.funnel.journey import UserState, apply_event
from streams.funnel.outputs import JourneyResult
from streams.funnel.stages import compiled
from streams.funnel.windows import WindowAggregator
from tests.unit.schemas.test_funnel_stages import B2B

DAY = 86_400  # seconds: make_event's ``at`` is in seconds
FUNNEL = FunnelsConfig.from_mapping(yaml.safe_load(B2B), "b2b.yml").by_name["b2b"]


def run(state: UserState, *events: object) -> list[JourneyResult]:
    return [apply_event(state, e, FUNNEL) for e in events]  # type: ignore[arg-type]


def entries(state: UserState) -> dict[str, int]:
    return {stage: at[0] for stage, at in state["b2b"]["st"].items()}


def transitions(state: UserState) -> dict[str, str]:
    return {to: tr[0] for to, tr in state["b2b"]["tr"].items() if tr[0] is not None}


def test_matches_pick_stages_by_event_and_filter(make_event) -> None:
    info = compiled(FUNNEL)
    assert info.matches(make_event("visit")) == (("visit", 0),)
    pricing = make_event("visit", properties={"page": "/pricing"})
    assert info.matches(pricing) == (("visit", 0), ("pricing", 1))
    assert info.matches(make_event("signup", properties={"lead_score": 49})) == (("lead", 2),)
    assert info.matches(make_event("signup", properties={"lead_score": 50})) == (("lead", 2), ("mql", 3))
    assert info.matches(make_event("purchase", amount="10", currency="USD")) == (("won", 4),)
    assert info.matches(make_event("purchase", amount="10", currency="GBP")) == ()
    assert info.matches(make_event("webinar")) == ()


def test_one_event_enters_several_stages(make_event) -> None:
    state: UserState = {}
    visit, signup = run(state, make_event("visit", properties={"page": "/pricing"}, funnel=None),
                        make_event("signup", at=60, properties={"lead_score": 80}, funnel=None))
    assert [(e.stage, e.new) for e in visit.entries] == [("visit", True), ("pricing", True)]
    assert [(t.from_stage, t.to_stage) for t in visit.transitions] == [("visit", "pricing")]
    assert [e.stage for e in signup.entries] == ["lead", "mql"]
    assert [(t.from_stage, t.to_stage, t.first) for t in signup.transitions] == [
        ("pricing", "lead", True), ("lead", "mql", True)]
    # A later signup that qualifies enters nothing new.
    late = make_event("signup", at=90, properties={"lead_score": 99}, funnel=None)
    assert run(state, late)[0].entries == []


def test_within_days_enters_without_a_transition(make_event) -> None:
    state: UserState = {}
    run(state, make_event("visit", funnel=None), make_event("signup", at=DAY, funnel=None))
    late_mql, = run(state, make_event("signup", at=20 * DAY, properties={"lead_score": 60}, funnel=None))
    assert [e.stage for e in late_mql.entries] == ["mql"]
    assert late_mql.transitions == []  # 19 days after the lead: no conversion lead -> mql
    won, = run(state, make_event("purchase", at=21 * DAY, amount="5", currency="EUR", funnel=None))
    assert [(t.from_stage, t.to_stage) for t in won.transitions] == [("mql", "won")]  # the walk goes on
    assert transitions(state) == {"lead": "visit", "won": "mql"}


def test_within_days_is_corrected_by_a_late_event(make_event) -> None:
    """A signup 5 days after the visit is no conversion (within 1 day); a pricing visit found 12 hours
    before it, arriving late, makes it one: the walk now comes from pricing."""
    funnel = FunnelDefinition(name="quick", stages=(
        "visit", {"name": "pricing", "event": "visit", "where": {"properties.page": "/pricing"}},
        {"name": "signup", "event": "signup", "within_days": 1}))
    state: UserState = {}
    for e in (make_event("visit", funnel=None), make_event("signup", at=5 * DAY, funnel=None)):
        result = apply_event(state, e, funnel)
    assert result.transitions == [] and set(state["quick"]["st"]) == {"visit", "signup"}
    late = apply_event(state, make_event("visit", at=4.5 * DAY, properties={"page": "/pricing"}, funnel=None),
                       funnel)
    assert [(t.from_stage, t.to_stage, t.first) for t in late.transitions] == [
        ("visit", "pricing", True), ("pricing", "signup", True)]
    assert {to: tr[0] for to, tr in state["quick"]["tr"].items()} == {"pricing": "visit", "signup": "pricing"}


def test_an_exclusion_between_first_and_last_stage_marks_every_row(make_event) -> None:
    state: UserState = {}
    run(state, make_event("visit", funnel=None), make_event("signup", at=60, funnel=None))
    refund, = run(state, make_event("purchase", at=120, amount="9", currency="EUR",
                                    properties={"refunded": True}, funnel=None))
    assert refund.excluded == 1
    # The refunded purchase is a "won" stage event too: entered, then every row marked, one version up.
    version = state["b2b"]["ver"]
    assert sorted((e.stage, e.excluded, e.version) for e in refund.entries) == [
        ("lead", True, version), ("visit", True, version), ("won", True, version)]
    assert {t.version for t in refund.transitions} == {version}
    assert {(t.to_stage, t.excluded) for t in refund.transitions} == {("lead", True), ("won", True)}
    windows = WindowAggregator(60)
    for e in refund.entries:
        windows.add_entry(e)
    assert {row[9] for row in windows.rows()} == {1}  # no window member: tombstones
    # New rows of an excluded person are marked too.
    later, = run(state, make_event("visit", at=130, properties={"page": "/pricing"}, funnel=None))
    assert [(e.stage, e.excluded) for e in later.entries] == [("pricing", True)]


def test_exclusions_outside_the_journey_do_not_count(make_event) -> None:
    before: UserState = {}
    first, = run(before, make_event("purchase", at=0, amount="0", currency="EUR",
                                    properties={"refunded": True}, funnel=None))
    assert first.excluded == 0 and first.entries == []  # amount 0: not won; nothing entered yet
    assert run(before, make_event("visit", at=60, funnel=None))[0].excluded == 0
    after: UserState = {}
    run(after, make_event("visit", funnel=None), make_event("purchase", at=60, amount="5", currency="EUR",
                                                             funnel=None))
    refund, = run(after, make_event("purchase", at=120, amount="5", currency="EUR",
                                    properties={"refunded": True}, funnel=None))
    assert refund.excluded == 0 and not after["b2b"].get("ex")  # after the last stage: a customer


def test_a_late_event_can_take_an_exclusion_back(make_event) -> None:
    state: UserState = {}
    run(state, make_event("visit", funnel=None))
    refund, = run(state, make_event("purchase", at=600, amount="0", currency="EUR",
                                    properties={"refunded": True}, funnel=None))
    assert refund.excluded == 1  # after the visit, the last stage not reached
    won, = run(state, make_event("purchase", at=300, amount="5", currency="EUR", funnel=None))
    assert won.excluded == -1  # the person had won before the refund event: not excluded after all
    assert all(not e.excluded for e in won.entries) and {e.stage for e in won.entries} == {"visit", "won"}
    assert min(e.version for e in won.entries) > max(e.version for e in refund.entries)
    again, = run(state, make_event("visit", at=-600, properties={"page": "/pricing"}, funnel=None))
    assert again.excluded == 0  # still: exclusion after the last stage


def test_a_first_event_takes_the_fast_path_in_a_funnel_with_exclusions(make_event, monkeypatch) -> None:
    """A person's first event that is no exclusion and enters one stage at most builds its state
    in one go (journey._first_event), as in a funnel without exclusions; an exclusion does not."""
    import streams.funnel.journey as journey

    fast: list[str] = []
    real = journey._first_event

    def first_event(*args: Any) -> Any:
        fast.append(args[2]["event_type"])
        return real(*args)

    monkeypatch.setattr(journey, "_first_event", first_event)
    plain = FUNNEL.model_copy(update={"exclude": ()})
    visit = make_event("visit", properties={"page": "/home"}, funnel=None)
    with_exclusions: UserState = {}
    without: UserState = {}
    assert run(with_exclusions, visit) == [apply_event(without, visit, plain)]  # type: ignore[arg-type]
    assert with_exclusions == {"b2b": without["b2b"]}
    refund = make_event("purchase", amount="10", currency="EUR", properties={"refunded": True}, funnel=None)
    state: UserState = {}
    [result] = run(state, refund)
    assert fast == ["visit", "visit"]  # the refund took the general path: it is remembered
    assert state["b2b"]["xt"] == [refund["ts"]] and [e.stage for e in result.entries] == ["won"]
