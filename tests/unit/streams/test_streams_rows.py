"""streams.rows: table rows in sinks.COLUMNS order and the stage-changes record."""

from __future__ import annotations

import orjson

from schemas import EVENT_TYPES, FunnelDefinition
from sinks import COLUMNS
from streams.journey import StageEntry, Transition, UserState, apply_event
from streams.rows import change_message, entry_row, event_row, transition_row
from streams.windows import Membership, WindowAggregator

DEFAULT = FunnelDefinition(name="default", stages=EVENT_TYPES)


def test_event_row_follows_the_events_columns(make_event) -> None:
    e = make_event("purchase", channel=None, amount="19.90", currency="EUR",
                   properties={"utm": "x", "n": 2, "ok": True, "none": None})
    row = dict(zip(COLUMNS["events"], event_row(e, "default", "ads", "new"), strict=True))
    assert row == {
        "event_id": e["event_id"], "event_type": "purchase", "funnel": "default", "user_id": "u1",
        "ts": e["ts"], "received_at": e["received_at"], "channel": "", "attributed_channel": "ads",
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


def test_change_messages_feed_the_window_aggregator(make_event) -> None:
    """The window agent's path: journey outputs -> stage-changes records -> memberships."""
    state: UserState = {}
    visit, signup = make_event("visit", channel="seo"), make_event("signup", at=61)
    results = [apply_event(state, e, DEFAULT) for e in (visit, signup)]
    changes: list[StageEntry | Transition] = []
    for r in results:
        changes += [*r.entries, *r.transitions]
    records = [orjson.loads(change_message(x)) for x in changes]
    assert records[-1] == {"k": "transition", "fs": "visit", "s": "signup", "v": 1, "d": False,
                           "f": "default", "c": "seo", "u": "u1", "ts": signup["ts"]}
    agg = WindowAggregator(60)
    for c in records:
        agg.add(c["ts"], c["f"], c["k"], c["fs"], c["s"], c["c"], c["u"], c["v"], c["d"])
    start = visit["ts"] // 1000
    assert sorted(agg.rows()) == [
        Membership(start, 60, "default", "entry", "", "visit", "seo", "u1", 1, 0),
        Membership(start + 60, 60, "default", "entry", "", "signup", "seo", "u1", 1, 0),
        Membership(start + 60, 60, "default", "transition", "visit", "signup", "seo", "u1", 1, 0),
    ]
