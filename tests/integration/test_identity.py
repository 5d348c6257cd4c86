"""Identity on the real parts (issue 18): anonymous visitors who become known people.

5 000 anonymous visitors; 500 sign up with both ids and go on with their user
id only; 50 of those link a second device whose visit came first (earlier in
event time, another channel). Everything is sent shuffled across the five
topics, each message keyed by one of the ids it carries. The worker must
count persons exactly: per stage, visit -> signup for every linked person,
first-touch channels across devices, nobody twice in stage_entries FINAL or
stage_counts, and /metrics entries (minus the merged duplicates) equal to
the person counts.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .harness import Worker, bootstrap_of, produce, wait_drained, wait_until

pytestmark = pytest.mark.integration

VISITORS = 5_000
LINKED = 500
SECOND_DEVICES = 50
CHANNELS = ("seo", "ads", "social", "email")


def traffic(now_ms: int, seed: int = 18) -> tuple[list[tuple[str, bytes, bytes]], dict[str, Any]]:
    """The messages (event type, key, value) and what a correct pipeline reports."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes, bytes]] = []
    entries: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    first_touch: dict[str, str] = {}  # person -> channel
    linked: dict[str, list[str]] = {}  # user id -> its anonymous ids

    def send(event_type: str, ts: int, *, user: str | None = None, anonymous: str | None = None,
             channel: str | None = None) -> None:
        body: dict[str, Any] = {"event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                "ts": ts, "channel": channel}
        if user is not None:
            body["user_id"] = user
        if anonymous is not None:
            body["anonymous_id"] = anonymous
        key = rng.choice([i for i in (user, anonymous) if i is not None])
        messages.append((event_type, key.encode(), json.dumps(body).encode()))

    base = now_ms - 3_600_000
    for i in range(VISITORS):
        anonymous, channel = f"anon-{i:05d}", CHANNELS[i % len(CHANNELS)]
        visit_at = base + i * 100
        send("visit", visit_at, anonymous=anonymous, channel=channel)
        if i >= LINKED:
            entries["visit"] += 1
            first_touch[anonymous] = channel
            continue
        user = f"user-{i:05d}"
        linked[user] = [anonymous]
        send("signup", visit_at + 60_000, user=user, anonymous=anonymous, channel=channel)
        send("webinar", visit_at + 120_000, user=user)
        stages = ["visit", "signup", "webinar"]
        if i % 2 == 0:
            send("consultation", visit_at + 180_000, user=user)
            stages.append("consultation")
        first_touch[user] = channel
        if i < SECOND_DEVICES:  # a phone that visited a day earlier, linked at a later step
            phone = f"phone-{i:05d}"
            linked[user].append(phone)
            send("visit", visit_at - 86_400_000, anonymous=phone, channel="partner")
            send("purchase", visit_at + 240_000, user=user, anonymous=phone)
            stages.append("purchase")
            first_touch[user] = "partner"
        entries.update(stages)
        transitions.update(f"{a}->{b}" for a, b in itertools.pairwise(stages))
    rng.shuffle(messages)
    truth = {"entries": dict(entries), "transitions": dict(transitions), "first_touch": first_touch,
             "linked": linked}
    return messages, truth


def test_anonymous_visitors_become_persons_counted_once(worker: Worker, pipeline_env: dict[str, str]) -> None:
    messages, truth = traffic(int(time.time() * 1000))
    prefix = pipeline_env["FUNNEL_TOPIC_PREFIX"]
    bodies = []
    for event_type, key, value in messages:
        body = json.loads(value)
        if event_type == "purchase":
            body.update(amount="49.00", currency="EUR")
        bodies.append((f"{prefix}{event_type}", key, json.dumps(body).encode()))
    produce(bootstrap_of(pipeline_env), bodies)
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.events FINAL") == len(messages), 180,
               "every event in ClickHouse")
    wait_drained(worker, 120)

    entries = dict(worker.sql("SELECT stage, count() FROM funnel.stage_entries FINAL "
                              "WHERE funnel = 'default' GROUP BY stage"))
    assert entries == truth["entries"]
    moves = {f"{a}->{b}": n for a, b, n in worker.sql(
        "SELECT from_stage, to_stage, count() FROM funnel.transitions FINAL WHERE funnel = 'default' "
        "GROUP BY from_stage, to_stage")}
    assert moves == truth["transitions"]
    assert moves["visit->signup"] == LINKED  # every linked person converted visit -> signup
    # First touch: the channel of the person's earliest event, across their devices.
    channels = dict(worker.sql("SELECT user_id, any(channel) FROM funnel.stage_entries FINAL "
                               "WHERE funnel = 'default' GROUP BY user_id"))
    assert channels == truth["first_touch"]
    # Nobody twice: no linked anonymous id keeps a row, one row per person and stage.
    links = {tuple(r) for r in worker.sql("SELECT anonymous_id, user_id FROM funnel.identities FINAL "
                                          "WHERE status = 'linked'")}
    assert links == {(a, user) for user, ids in truth["linked"].items() for a in ids}
    assert worker.scalar("SELECT count() FROM funnel.stage_entries FINAL WHERE user_id IN "
                         "(SELECT anonymous_id FROM funnel.identities FINAL)") == 0
    assert worker.scalar("SELECT count() - uniqExact(funnel, stage, user_id) "
                         "FROM funnel.stage_entries FINAL") == 0
    windows = dict(worker.sql("SELECT stage, sum(users) FROM funnel.stage_counts_final "
                              "WHERE funnel = 'default' AND kind = 'entry' GROUP BY stage"))
    assert windows == truth["entries"]
    # /metrics: entries counted minus the duplicates merges found, per stage.
    for stage, persons in truth["entries"].items():
        counted = worker.metric_sum("funnel_stage_entries_total", funnel="default", stage=stage)
        merged = worker.metric_sum("funnel_stage_entries_merged_total", funnel="default", stage=stage)
        assert counted - merged == persons, stage
    assert worker.metric_sum("funnel_identity_links_total") == LINKED + SECOND_DEVICES
    assert worker.metric_sum("funnel_identity_conflicts_total") == 0
    # ClickHouse keeps the links, and each event's ids and the person it was counted under.
    assert worker.scalar("SELECT count() FROM funnel.events FINAL WHERE event_type = 'webinar' "
                         "AND person_id != user_id") == 0
    persons_of_visits = worker.scalar(
        "SELECT uniqExact(if(i.user_id != '', i.user_id, e.person_id)) FROM funnel.events AS e FINAL "
        "LEFT JOIN (SELECT anonymous_id, user_id FROM funnel.identities FINAL WHERE status = 'linked') AS i "
        "ON i.anonymous_id = e.anonymous_id WHERE e.event_type = 'visit'")
    assert persons_of_visits == VISITORS


def test_sending_it_again_changes_nothing(
    worker: Worker, pipeline_env: dict[str, str], tmp_path: Path,
) -> None:
    """Every message twice (a producer retrying everything): same persons, same metrics."""
    messages, _ = traffic(int(time.time() * 1000), seed=19)
    messages = messages[:1_500]
    prefix = pipeline_env["FUNNEL_TOPIC_PREFIX"]
    out = []
    for event_type, key, value in messages:
        body = json.loads(value)
        if event_type == "purchase":
            body.update(amount="49.00", currency="EUR")
        out.append((f"{prefix}{event_type}", key, json.dumps(body).encode()))
    produce(bootstrap_of(pipeline_env), out)
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.events FINAL") == len(out), 120,
               "every event in ClickHouse")
    wait_drained(worker, 60)
    before = worker.sql("SELECT funnel, stage, user_id, ts, channel FROM funnel.stage_entries FINAL "
                        "ORDER BY funnel, stage, user_id")
    counted = worker.metric_sum("funnel_stage_entries_total") - worker.metric_sum(
        "funnel_stage_entries_merged_total")
    random.Random(7).shuffle(out)
    produce(bootstrap_of(pipeline_env), out)
    wait_until(lambda: worker.metric_sum("funnel_duplicate_events_total") >= len(out) * 0.9, 120,
               "the copies seen as duplicates")
    wait_drained(worker, 60)
    assert worker.sql("SELECT funnel, stage, user_id, ts, channel FROM funnel.stage_entries FINAL "
                      "ORDER BY funnel, stage, user_id") == before
    assert worker.metric_sum("funnel_stage_entries_total") - worker.metric_sum(
        "funnel_stage_entries_merged_total") == counted
