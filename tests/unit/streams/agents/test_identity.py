"""Identity through the real agents: anonymous ids, links, merges, conflicts, replays.

One pipeline holds every partition (the fake table of test_direct); events go
through the ingest agent, and whatever it or the journey agent sends to
`normalized` (events, forwarded events, merge records) is fed back to the
journey agent, in the partition of its key, at a chosen moment. The rows are
then read as ClickHouse reads them with FINAL: per key the highest version,
tombstones dropped.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import Counter
from typing import Any

import orjson
import pytest

from sinks import COLUMNS
from streams.pipeline import Pipeline
from tests.unit.streams.agents.test_direct import NOW_S, SENT, Stream, make_pipeline
from tests.unit.streams.fakes import envelopes, handled, home, message

__all__ = ["make_pipeline"]  # the fixture, used by these tests

#: Natural key and (version, is_deleted) columns of the tables FINAL collapses.
KEYS = {
    "stage_entries": (("funnel", "stage", "user_id"), "version"),
    "transitions": (("funnel", "to_stage", "user_id"), "version"),
    "dropoffs": (("funnel", "stage", "user_id"), "version"),
    "stage_counts": (("funnel", "window_seconds", "kind", "stage", "user_id"), "version"),
    "events": (("funnel", "event_type", "event_id"), None),
    "identities": (("anonymous_id", "user_id"), None),
}
T0 = int(NOW_S * 1000) - 3_600_000


def final(pipeline: Pipeline, table: str) -> list[dict[str, Any]]:
    """The table's rows as ``SELECT * FROM table FINAL`` gives them."""
    columns = COLUMNS[table]
    key_columns, version = KEYS[table]
    kept: dict[tuple[Any, ...], dict[str, Any]] = {}
    for sink in (pipeline.journey_sink, pipeline.direct_sink):
        for values in sink.client.rows.get(table, []):  # type: ignore[attr-defined]
            row = dict(zip(columns, values, strict=True))
            key = tuple(row[c] for c in key_columns)
            have = kept.get(key)
            if have is None or version is None or row[version] >= have[version]:
                kept[key] = row
    return [row for row in kept.values() if not row.get("is_deleted")]


class World:
    """Sends raw events and delivers what reaches `normalized`, when told to."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.offsets: Counter[str] = Counter()
        self.sent: dict[bytes, int] = {}  # raw event -> its offset: sent again, it is a replay
        self.n = 0

    def event(self, event_type: str, *, user: str | None = None, anon: str | None = None, at: float = 0,
              channel: str | None = None, key: str | None = None, **fields: Any) -> bytes:
        self.n += 1
        body: dict[str, Any] = {"event_id": f"00000000-0000-4000-8000-{self.n:012d}",
                                "ts": T0 + round(at * 1000), "channel": channel}
        if user is not None:
            body["user_id"] = user
        if anon is not None:
            body["anonymous_id"] = anon
        if event_type == "purchase":
            body.update(amount="10", currency="EUR")
        body.update(fields)
        return orjson.dumps({**body, "event_type": event_type, "_key": key or anon or user})

    def send(self, *raw: bytes) -> None:
        """Raw events through the ingest agent, one batch (an event sent before: at its offset)."""
        topics = self.pipeline.names.events
        batch = []
        for value in raw:
            body = orjson.loads(value)
            key = body.pop("_key").encode()
            topic = topics[body["event_type"]]
            offset = self.sent.setdefault(value, self._offset(topic))
            batch.append(message(topic, home(key), offset, key, orjson.dumps(body)))
        asyncio.run(handled(self.pipeline.ingest.batch(Stream(), envelopes(batch))))  # type: ignore[arg-type]

    def deliver(self) -> int:
        """What waits on `normalized`, to the journey agent, until nothing more comes; how many."""
        delivered = 0
        sent = SENT[id(self.pipeline)]
        while sent:
            records, sent[:] = list(sent), []
            self.deliver_records(records)
            delivered += len(records)
        return delivered

    def deliver_records(self, records: list[tuple[bytes, bytes]]) -> None:
        topic = self.pipeline.names.normalized
        batch = [message(topic, home(key), self._offset(topic), key, value) for key, value in records]
        asyncio.run(handled(self.pipeline.journey.batch(Stream(), envelopes(batch))))  # type: ignore[arg-type]

    def _offset(self, topic: str) -> int:
        self.offsets[topic] += 1
        return self.offsets[topic]


def persons(pipeline: Pipeline, funnel: str = "default") -> dict[str, set[str]]:
    """stage -> the persons with an entry in it (FINAL)."""
    out: dict[str, set[str]] = {}
    for row in final(pipeline, "stage_entries"):
        if row["funnel"] == funnel:
            out.setdefault(row["stage"], set()).add(row["user_id"])
    return out


def transitions(pipeline: Pipeline) -> set[tuple[str, str, str]]:
    return {(r["from_stage"], r["to_stage"], r["user_id"]) for r in final(pipeline, "transitions")
            if r["funnel"] == "default"}


def counter(pipeline: Pipeline, name: str, **labels: str) -> float:
    return pipeline.metrics.registry.get_sample_value(name, labels) or 0.0


def entries_counted(pipeline: Pipeline, stage: str) -> float:
    """Persons entering ``stage`` by /metrics: entries counted minus the ones a merge found twice."""
    total = sum(s.value for family in pipeline.metrics.registry.collect()
                if family.name == "funnel_stage_entries" for s in family.samples
                if s.name == "funnel_stage_entries_total" and s.labels["funnel"] == "default"
                and s.labels["stage"] == stage)
    return total - counter(pipeline, "funnel_stage_entries_merged_total", funnel="default", stage=stage)


def windows(pipeline: Pipeline) -> Counter[tuple[str, str]]:
    return Counter((r["kind"], r["stage"]) for r in final(pipeline, "stage_counts")
                   if r["funnel"] == "default")


# Every ordering of {the anonymous visit, the link (a signup with both ids), a later webinar
# with the user id only}, with what reaches `normalized` delivered at once or only at the end.
STEPS = ("visit", "link", "webinar")


@pytest.mark.parametrize("deliver_at_once", [True, False], ids=["at-once", "at-the-end"])
@pytest.mark.parametrize("order", list(itertools.permutations(STEPS)), ids="-".join)
def test_every_ordering_gives_one_person(make_pipeline: Any, order: tuple[str, ...],
                                         deliver_at_once: bool) -> None:
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    raw = {"visit": world.event("visit", anon="a1", at=0, channel="seo"),
           "link": world.event("signup", user="u1", anon="a1", at=60, channel="ads"),
           "webinar": world.event("webinar", user="u1", at=120)}
    for step in order:
        world.send(raw[step])
        if deliver_at_once:
            world.deliver()
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1"}, "signup": {"u1"}, "webinar": {"u1"}}
    assert transitions(pipeline) == {("visit", "signup", "u1"), ("signup", "webinar", "u1")}
    entries = final(pipeline, "stage_entries")
    assert {r["channel"] for r in entries} == {"seo"}  # first touch: the anonymous visit
    assert {r["stage"]: r["ts"] for r in entries} == {"visit": T0, "signup": T0 + 60_000,
                                                      "webinar": T0 + 120_000}
    assert windows(pipeline) == Counter({("entry", "visit"): 1, ("entry", "signup"): 1,
                                         ("entry", "webinar"): 1, ("transition", "signup"): 1,
                                         ("transition", "webinar"): 1})
    assert {(r["event_type"], r["person_id"]) for r in final(pipeline, "events")} >= {
        ("signup", "u1"), ("webinar", "u1")}
    assert [(r["anonymous_id"], r["user_id"], r["status"]) for r in final(pipeline, "identities")] == [
        ("a1", "u1", "linked")]
    for stage in ("visit", "signup", "webinar"):
        assert entries_counted(pipeline, stage) == 1, stage
    assert counter(pipeline, "funnel_identity_links_total") == 1
    assert counter(pipeline, "funnel_identity_conflicts_total") == 0


def test_two_devices_link_to_one_user_and_the_earliest_touch_wins(make_pipeline: Any) -> None:
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="phone", at=0, channel="social"),
               world.event("visit", anon="laptop", at=30, channel="seo"))
    world.deliver()
    world.send(world.event("signup", user="u1", anon="laptop", at=60))
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1", "phone"}, "signup": {"u1"}}
    world.send(world.event("webinar", user="u1", anon="phone", at=90))  # the phone's first link
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1"}, "signup": {"u1"}, "webinar": {"u1"}}
    entries = {r["stage"]: r for r in final(pipeline, "stage_entries")}
    assert entries["visit"]["ts"] == T0  # the phone's visit, earlier than the laptop's
    assert {r["channel"] for r in entries.values()} == {"social"}  # re-attributed to it
    assert transitions(pipeline) == {("visit", "signup", "u1"), ("signup", "webinar", "u1")}
    assert entries_counted(pipeline, "visit") == 1
    assert counter(pipeline, "funnel_stage_entries_merged_total", funnel="default", stage="visit") == 1
    assert sorted(r["anonymous_id"] for r in final(pipeline, "identities")) == ["laptop", "phone"]
    # A later anonymous event of either device counts for the person.
    world.send(world.event("consultation", anon="phone", at=120))
    world.deliver()
    assert persons(pipeline)["consultation"] == {"u1"}


def test_a_conflicting_link_is_counted_kept_and_not_applied(make_pipeline: Any) -> None:
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="a1", at=0), world.event("signup", user="u1", anon="a1", at=10))
    world.deliver()
    conflict = world.event("webinar", user="u2", anon="a1", at=20)
    world.send(conflict)
    world.deliver()
    world.send(conflict)  # replayed: counted once
    world.deliver()
    world.send(world.event("consultation", anon="a1", at=30))  # still u1's device
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1"}, "signup": {"u1"}, "webinar": {"u2"}, "consultation": {"u1"}}
    assert counter(pipeline, "funnel_identity_conflicts_total") == 1
    assert sorted((r["anonymous_id"], r["user_id"], r["status"]) for r in final(pipeline, "identities")) == [
        ("a1", "u1", "linked"), ("a1", "u2", "conflict")]


def test_a_replayed_link_and_merge_change_nothing(make_pipeline: Any) -> None:
    """A crash after the link's batch wrote but before it was acknowledged: it all comes again."""
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="a1", at=0), world.event("webinar", anon="a1", at=5))
    world.deliver()
    link = world.event("signup", user="u1", anon="a1", at=10)
    world.send(link)
    first = list(SENT[id(pipeline)])
    world.deliver()
    before = {t: final(pipeline, t) for t in KEYS}
    counts = [entries_counted(pipeline, s) for s in ("visit", "signup", "webinar")]
    world.send(link)  # the link again: its merge record is sent again ...
    assert len(SENT[id(pipeline)]) == len(first)
    world.deliver()
    world.deliver_records(first)  # ... and the first one is delivered again too
    assert {t: final(pipeline, t) for t in KEYS} == before
    assert [entries_counted(pipeline, s) for s in ("visit", "signup", "webinar")] == counts == [1, 1, 1]
    assert transitions(pipeline) == {("visit", "webinar", "u1")}  # the signup came after the webinar
    assert counter(pipeline, "funnel_identity_links_total") == 1


def test_events_keyed_by_the_other_id_or_by_nothing_end_up_the_same(make_pipeline: Any) -> None:
    """The producer's key does not matter: ingest routes by the person, else the anonymous id."""
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="a1", at=0, key="u1"),
               world.event("signup", user="u1", anon="a1", at=10, key="u1"),
               world.event("webinar", user="u1", at=20, key="a1"))
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1"}, "signup": {"u1"}, "webinar": {"u1"}}


def test_an_anonymous_person_who_never_links_is_counted_under_the_anonymous_id(make_pipeline: Any) -> None:
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="a9", at=0), world.event("signup", anon="a9", at=10))
    world.deliver()
    assert persons(pipeline) == {"visit": {"a9"}, "signup": {"a9"}}
    assert transitions(pipeline) == {("visit", "signup", "a9")}
    assert final(pipeline, "identities") == []
    assert {r["person_id"] for r in final(pipeline, "events")} == {"a9"}


def test_a_link_whose_user_already_came_further_merges_the_earlier_stages(make_pipeline: Any) -> None:
    """The user's own journey started first (another device, logged in); the anonymous visit joins it."""
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="a1", at=0, channel="ads"),
               world.event("signup", user="u1", at=50, channel="email"),
               world.event("webinar", user="u1", at=60))
    world.deliver()
    assert transitions(pipeline) == {("signup", "webinar", "u1")}
    world.send(world.event("visit", user="u1", anon="a1", at=70))
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1"}, "signup": {"u1"}, "webinar": {"u1"}}
    assert transitions(pipeline) == {("visit", "signup", "u1"), ("signup", "webinar", "u1")}
    assert {r["channel"] for r in final(pipeline, "stage_entries")} == {"ads"}
    # The visit came from the anonymous journey (counted there), the link's own visit was not new.
    assert entries_counted(pipeline, "visit") == 1
    assert counter(pipeline, "funnel_transitions_total", funnel="default", from_stage="visit",
                   to_stage="signup", channel="ads") == 1


def test_a_replay_that_applied_more_before_the_link_still_merges_it(make_pipeline: Any) -> None:
    """The link's merge record reached the person, then a crash lost the anonymous id's own write.

    Replayed, another topic's event of the anonymous id comes before the
    link this time: the second merge record carries one more stage, and the
    person gets it although it merged this anonymous id before.
    """
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", anon="a1", at=0))
    world.deliver()
    before_link = copy.deepcopy(pipeline.journeys[b"a1"])
    link = world.event("signup", user="u1", anon="a1", at=10)
    world.send(link)
    world.deliver()
    dict.__setitem__(pipeline.journeys, b"a1", before_link)  # restored from a changelog without the link
    world.send(world.event("webinar", anon="a1", at=20))
    world.send(link)
    world.deliver()
    assert persons(pipeline) == {"visit": {"u1"}, "signup": {"u1"}, "webinar": {"u1"}}
    assert transitions(pipeline) == {("visit", "signup", "u1"), ("signup", "webinar", "u1")}


def test_a_merge_that_moves_an_entry_earlier_moves_its_transitions(make_pipeline: Any) -> None:
    """The anonymous signup is earlier than the person's: visit -> signup and signup -> webinar move to it."""
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    world.send(world.event("visit", user="u1", at=0), world.event("signup", user="u1", at=300),
               world.event("webinar", user="u1", at=400), world.event("signup", anon="a1", at=100))
    world.deliver()
    world.send(world.event("consultation", user="u1", anon="a1", at=500))  # the link
    world.deliver()
    assert {(r["from_stage"], r["to_stage"], r["seconds"]) for r in final(pipeline, "transitions")} == {
        ("visit", "signup", 100.0), ("signup", "webinar", 300.0), ("webinar", "consultation", 100.0)}


def test_a_retry_of_an_anonymous_event_forwarded_after_the_link_is_a_duplicate_for_the_person(
        make_pipeline: Any) -> None:
    """The retry reaches the person's partition in the batch of the link's merge record, and is older.

    Applied in event time, it came before the merge record that brings the
    event ids the anonymous journey had seen, so it was applied again: its
    revenue counted twice, no duplicate counted (found by
    tests/unit/streams/agents/test_order_properties.py).
    """
    pipeline = make_pipeline(direct=True)
    world = World(pipeline)
    purchase = world.event("purchase", anon="a1", at=0)
    world.send(purchase)
    world.deliver()
    world.send(world.event("signup", user="u1", anon="a1", at=60))  # the link: its merge record waits
    world.send(purchase + b" ")  # a producer's retry of the anonymous purchase: forwarded to u1
    world.deliver()  # the merge record, the link and the retry: one batch
    assert counter(pipeline, "funnel_duplicate_events_total", funnel="default") == 1
    assert counter(pipeline, "funnel_revenue_total", funnel="default", channel="direct", currency="EUR") == 10
    assert persons(pipeline) == {"purchase": {"u1"}, "signup": {"u1"}}
    assert entries_counted(pipeline, "purchase") == 1
