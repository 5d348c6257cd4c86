"""streams.bench.traffic: the generator's realistic traffic and the memory run's visits."""

from __future__ import annotations

from collections import Counter

from schemas import Decoder
from streams.bench.traffic import realistic_traffic, visit_traffic

NOW_MS = 1_769_860_800_000  # 2026-01-31T12:00:00Z


def test_realistic_traffic_matches_its_ground_truth() -> None:
    messages, truth = realistic_traffic(3_000, seed=7)
    assert len(messages) == truth["events"] == 3_000
    assert sum(m.copies for m in messages) == truth["events"] + truth["duplicates"]
    assert sum(m.entry for m in messages) == sum(truth["entries"].values())
    assert Counter(m.event_type for m in messages if m.entry) == Counter(truth["entries"])
    offsets = [m.offset_ms for m in messages]
    assert offsets == sorted(offsets)
    assert realistic_traffic(3_000, seed=7)[0] == messages  # reproducible


def test_traffic_decodes_with_the_time_set_at_sending() -> None:
    messages, _ = realistic_traffic(500, seed=3, duplicate_rate=0.0)
    decoder = Decoder(["default"])
    for m in messages:
        event = decoder.decode(m.value(NOW_MS + m.offset_ms), m.event_type, NOW_MS + 10**8)
        assert event["ts"] == NOW_MS + m.offset_ms
        assert m.key == event["user_id"].encode()


def test_visit_traffic_is_one_valid_visit_per_distinct_user() -> None:
    messages = visit_traffic(1_000, seed=2)
    decoder = Decoder(["default"])
    users = {decoder.decode(m.value(NOW_MS), "visit", NOW_MS)["user_id"] for m in messages}
    assert len(users) == 1_000
    assert {m.event_type for m in messages} == {"visit"}


def test_identity_traffic_is_anonymous_until_the_signup_links() -> None:
    """`--identity`: visits by anonymous id, the next stage with both ids, later stages by user id."""
    messages, truth = realistic_traffic(3_000, seed=7, identity=True)
    assert truth == realistic_traffic(3_000, seed=7, identity=True)[1]
    decoder = Decoder(["default"])
    ids: dict[str, set[tuple[bool, bool]]] = {}
    anonymous_of: dict[str, str] = {}
    for m in messages:
        event = decoder.decode(m.value(NOW_MS + m.offset_ms), m.event_type, NOW_MS + 10**8)
        user, anonymous = event["user_id"], event["anonymous_id"]
        ids.setdefault(m.event_type, set()).add((user is not None, anonymous is not None))
        if m.event_type == "signup":
            assert user and anonymous
        assert m.key == (anonymous or user or "").encode()
        if user and anonymous:
            assert anonymous_of.setdefault(user, anonymous) == anonymous  # one device per user
    assert ids["visit"] == {(False, True)}
    assert ids["webinar"] == {(True, False), (True, True)}  # the link, when the user skipped the signup
    linked = sum(n for move, n in truth["transitions"].items() if move.startswith("visit->"))
    assert len(anonymous_of) == linked


def test_stage_properties_set_page_lead_score_and_refunds_without_new_entries() -> None:
    """`--stage-properties`: what the b2b funnel's filters read; the default funnel's truth still holds."""
    # 50 events/s: two minutes of traffic, so most later signups (8 s after on average) are sent.
    messages, truth = realistic_traffic(6_000, seed=5, rate=50, stage_properties=True, identity=True)
    assert truth == realistic_traffic(6_000, seed=5, rate=50, stage_properties=True, identity=True)[1]
    decoder = Decoder(["default"])
    events = [(m, decoder.decode(m.value(NOW_MS + m.offset_ms), m.event_type, NOW_MS + 10**8))
              for m in messages]
    visits = [e for m, e in events if m.event_type == "visit"]
    signups = [(m, e) for m, e in events if m.event_type == "signup"]
    purchases = [e for m, e in events if m.event_type == "purchase"]
    pages = Counter(e["properties"]["page"] for e in visits)
    assert set(pages) == {"/", "/blog", "/features", "/pricing"}
    assert 0.3 < pages["/pricing"] / len(visits) < 0.55  # 30 %, and the repeat visits
    assert all(isinstance(e["properties"]["lead_score"], int) and 0 <= e["properties"]["lead_score"] <= 100
               for _, e in signups)
    repeats = [e for m, e in signups if not m.entry]
    assert 0.15 < len(repeats) / len(signups) < 0.35
    assert all(e["anonymous_id"] is None for e in repeats)  # after the link: the user id only
    refunded = sum(e["properties"].get("refunded") is True for e in purchases)
    assert 0.01 < refunded / len(purchases) < 0.12
    assert Counter(m.event_type for m in messages if m.entry) == Counter(truth["entries"])
    people = Counter((m.event_type, m.key) for m in messages if m.event_type == "visit")
    assert max(people.values()) == 2
    assert sum(m.entry for m in messages if m.event_type == "visit") == len(people)
    plain, _ = realistic_traffic(500, seed=5)
    assert all(b'"properties"' not in m.head for m in plain)  # off: no properties, no extra draws
