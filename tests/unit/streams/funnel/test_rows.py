"""streams.funnel.rows: table rows in sinks.COLUMNS order; window memberships of journey outputs."""

from __future__ import annotations

from schemas import EVENT_TYPES, FunnelDefinition
from sinks import COLUMNS
from streams.funnel.journey import UserState, apply_event
from streams.funnel.rows import entry_row, event_row, transition_row
from streams.funnel.windows import Membership, WindowAggregator

DEFAULT = FunnelDefinition(name="default", stages=EVENT_TYPES)


def test_event_row_follows_the_events_columns(make_event) -> None:
    e = make_event("purchase", channel=None, amount="19.90", currency="EUR",
                   properties={"utm": "x", "n": 2, "ok": True, "none": None})
    row = dict(zip(COLUMNS["events"], event_row(e, "default", "ads", "new"), strict=True))
    assert row == {
        "event_id": e["event_id"], "event_type": "purchase", "funnel": "default", "user_id": "u1",
        "anonymous_id": "", "person_id": "u1", "ts": e["ts"], "received_at": e["received_at"],
        "channel": "", "attributed_channel": "ads",
        "campaign": "", "product": "", "region": "", "manager": "", "amount": "19.90",
        "currency": "EUR", "order_id": "", "email_hash": "",
        "properties": {"utm": "x", "n": "2", "ok": "true", "none": "null"}, "source": "",
        "customer": "new",
    }


def test_journey_rows_follow_their_columns(make_event) -> None:
    state: UserState = {}
    apply_event(state, make_event("visit"), DEFAULT)
    result = apply_event(state, make_event("signup", at=1), DEFAULT)
    assert len(entry_row(result.entries[0])) == len(COLUMNS["stage_entries"])
    row = dict(zip(COLUMNS["transitions"], transition_row(result.transitions[0]), strict=True))
    assert (row["from_stage"], row["to_stage"], row["seconds"], row["version"], row["is_deleted"]) == (
        "visit", "signup", 1.0, 1, 0)
    assert Membership._fields == COLUMNS["stage_counts"]


def test_journey_outputs_feed_the_window_aggregator(make_event) -> None:
    """The journey agent's path: entries and transitions -> window memberships."""
    state: UserState = {}
    visit, signup = make_event("visit", channel="seo"), make_event("signup", at=61)
    results = [apply_event(state, e, DEFAULT) for e in (visit, signup)]
    agg = WindowAggregator(60)
    for r in results:
        for entry in r.entries:
            agg.add_entry(entry)
        for tr in r.transitions:
            agg.add_transition(tr)
    start = visit["ts"] // 1000
    assert sorted(agg.rows()) == [
        Membership(start, 60, "default", "entry", "", "visit", "seo", "u1", 1, 0),
        Membership(start + 60, 60, "default", "entry", "", "signup", "seo", "u1", 1, 0),
        Membership(start + 60, 60, "default", "transition", "visit", "signup", "seo", "u1", 1, 0),
    ]


def test_corrected_transitions_keep_the_highest_version_in_a_batch(make_event) -> None:
    """A late signup re-walks the user's stages: its correction replaces visit -> webinar."""
    state: UserState = {}
    agg = WindowAggregator(60)
    for e in (make_event("visit", at=0), make_event("webinar", at=120), make_event("signup", at=60)):
        for tr in apply_event(state, e, DEFAULT).transitions:
            agg.add_transition(tr)
    rows = {m.stage: (m.from_stage, m.version, m.is_deleted) for m in agg.rows()}
    assert rows == {"signup": ("visit", 2, 0), "webinar": ("signup", 3, 0)}
