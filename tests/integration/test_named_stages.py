"""Named stages on the real parts (issue 19): the default and the b2b funnel side by side.

One traffic set from the generator's planner with ``stage_properties`` (page,
lead score, refunds, repeated visits and signups) and ``identity`` (anonymous
visits, the link at the next stage), one virtual second stretched to a day so
``within_days`` and the 30-day windows matter, sent shuffled across the five
topics. The worker runs deploy/funnels.b2b.yml. What a correct pipeline
reports is computed here, by a plain reading of the rules (not the journey
code): per funnel and stage name the persons who entered it, the
transitions (a stage entered more than ``within_days`` after the stage it
follows is entered, no transition), and who is excluded (a refund between
the first entry and the entry of ``won``).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from streams.tools.generator import TrafficSpec, _Traffic, message_key

from .harness import Worker, bootstrap_of, produce, start_worker, wait_drained, wait_until

pytestmark = pytest.mark.integration

FUNNELS_FILE = Path(__file__).resolve().parents[2] / "deploy" / "funnels.b2b.yml"
DAY_MS = 86_400_000
USERS = 2_500
DEFAULT = ("visit", "signup", "webinar", "consultation", "purchase")
B2B = ("visit", "pricing", "lead", "mql", "won")
B2B_LIMITS = {"mql": 14 * DAY_MS}


def b2b_stages(event: dict[str, Any]) -> list[str]:
    """The b2b stages an event matches, as deploy/funnels.b2b.yml says, written out by hand."""
    props = event.get("properties") or {}
    kind = event["event_type"]
    if kind == "visit":
        return ["visit", "pricing"] if props.get("page") == "/pricing" else ["visit"]
    if kind == "signup":
        score = props.get("lead_score")
        return ["lead", "mql"] if isinstance(score, int) and score >= 50 else ["lead"]
    if kind == "purchase" and float(event["amount"]) > 0 and event["currency"] in ("EUR", "USD"):
        return ["won"]
    return []


def walk(reached: dict[str, int], order: tuple[str, ...], limits: dict[str, int]) -> list[tuple[str, str]]:
    """(from, to) transitions: stages in (entry time, position) order, each beyond the furthest so far."""
    stages = sorted(reached, key=lambda s: (reached[s], order.index(s)))
    out, furthest = [], stages[0]
    for stage in stages[1:]:
        if order.index(stage) > order.index(furthest):
            if stage not in limits or reached[stage] - reached[furthest] <= limits[stage]:
                out.append((furthest, stage))
            furthest = stage
    return out


def traffic(now_ms: int) -> tuple[list[tuple[str, bytes, bytes]], dict[str, Any]]:
    """The messages (topic suffix, key, value), shuffled, and the expected figures."""
    spec = TrafficSpec(seed=19, stage_properties=True, identity=True, conversion=(0.5, 0.6, 0.6, 0.7),
                       duplicate_rate=0.02, stage_delay=4.0)  # 4 days between stages on average
    planner = _Traffic(spec)
    for i in range(USERS):
        planner.start_user(i * 0.04)  # 100 virtual seconds: 100 days of first visits
    plan = list(planner.planned())
    base = now_ms - round((plan[-1][0] + 1) * DAY_MS)  # the last event a day ago: none in the future
    events: list[dict[str, Any]] = []
    messages: list[tuple[str, bytes, bytes]] = []
    for due, planned in plan:
        payload = {**planned.payload, "ts": base + round(due * DAY_MS)}
        value = json.dumps(payload).encode()
        for _ in range(1 + planned.duplicate):
            messages.append((planned.event_type, message_key(payload), value))
        events.append({**payload, "event_type": planned.event_type})
        planner.truth.record(planned)  # the generator's own truth of the default funnel
    random.Random(7).shuffle(messages)
    return messages, {**expected(events), "truth": planner.truth.as_dict(), "events": len(events)}


def expected(events: list[dict[str, Any]]) -> dict[str, Any]:
    links = {e["anonymous_id"]: e["user_id"] for e in events if e.get("anonymous_id") and e.get("user_id")}
    reached: dict[tuple[str, str], dict[str, int]] = {}  # (funnel, person) -> stage -> entry time
    refunds: dict[str, list[int]] = {}
    for e in events:
        person = e.get("user_id") or links.get(e["anonymous_id"]) or e["anonymous_id"]
        for funnel, stages in (("default", [e["event_type"]]), ("b2b", b2b_stages(e))):
            mine = reached.setdefault((funnel, person), {})
            for stage in stages:
                mine[stage] = min(mine.get(stage, e["ts"]), e["ts"])
        if e["event_type"] == "purchase" and (e.get("properties") or {}).get("refunded") is True:
            refunds.setdefault(person, []).append(e["ts"])
    excluded = set()
    for person, times in refunds.items():
        mine = reached.get(("b2b", person))
        if mine:
            first, won = min(mine.values()), mine.get("won")
            if any(first <= t and (won is None or t <= won) for t in times):
                excluded.add(person)
    entries: Counter[tuple[str, str, int]] = Counter()
    moves: Counter[tuple[str, str, str, int]] = Counter()
    suppressed = 0
    for (funnel, person), mine in reached.items():
        if not mine:
            continue
        mark = int(funnel == "b2b" and person in excluded)
        for stage in mine:
            entries[funnel, stage, mark] += 1
        order, limits = (DEFAULT, {}) if funnel == "default" else (B2B, B2B_LIMITS)
        done = walk(mine, order, limits)
        for a, b in done:
            moves[funnel, a, b, mark] += 1
        suppressed += len(walk(mine, order, {})) - len(done)
    return {"entries": entries, "transitions": moves, "excluded": excluded, "suppressed": suppressed}


@pytest.fixture
def b2b_worker(pipeline_env: dict[str, str], tmp_path: Path) -> Any:
    env = {**pipeline_env, "FUNNEL_FUNNELS_FILE": str(FUNNELS_FILE)}
    w = start_worker(env, tmp_path / "worker.log")
    try:
        yield w
    finally:
        assert w.stop() == 0, w.log_tail()


def test_default_and_b2b_funnels_side_by_side_are_exact(b2b_worker: Worker,
                                                       pipeline_env: dict[str, str]) -> None:
    worker = b2b_worker
    messages, want = traffic(int(time.time() * 1000))
    assert want["excluded"] and want["suppressed"] > 20  # the traffic exercises both rules
    prefix = pipeline_env["FUNNEL_TOPIC_PREFIX"]
    produce(bootstrap_of(pipeline_env), [(prefix + t, k, v) for t, k, v in messages])
    wait_until(lambda: worker.scalar("SELECT uniqExact(event_id) FROM funnel.events") == want["events"],
               240, "every event in ClickHouse")
    wait_drained(worker, 120)

    # Entries per funnel, stage name and mark; the default funnel is the generator's truth too.
    entries = Counter({(f, s, x): n for f, s, x, n in worker.sql(
        "SELECT funnel, stage, excluded, count() FROM funnel.stage_entries FINAL "
        "GROUP BY funnel, stage, excluded")})
    assert entries == want["entries"]
    assert {s: n for (f, s, _), n in entries.items() if f == "default"} == want["truth"]["entries"]
    # Transitions, with the ones within_days suppresses absent.
    moves = Counter({(f, a, b, x): n for f, a, b, x, n in worker.sql(
        "SELECT funnel, from_stage, to_stage, excluded, count() FROM funnel.transitions FINAL "
        "GROUP BY funnel, from_stage, to_stage, excluded")})
    assert moves == want["transitions"]
    assert {f"{a}->{b}": n for (f, a, b, _), n in moves.items() if f == "default"} == \
        want["truth"]["transitions"]
    # Excluded persons: present with the mark, on every row of theirs, and absent from the views.
    marked = {r[0] for r in worker.sql("SELECT DISTINCT user_id FROM funnel.stage_entries FINAL "
                                        "WHERE funnel = 'b2b' AND excluded = 1")}
    assert marked == want["excluded"]
    assert worker.scalar("SELECT count() FROM funnel.stage_entries FINAL WHERE funnel = 'b2b' "
                         "AND excluded = 0 AND user_id IN (SELECT user_id FROM funnel.stage_entries "
                         "FINAL WHERE funnel = 'b2b' AND excluded = 1)") == 0
    counted = {(f, s): n for (f, s, x), n in want["entries"].items() if not x}
    daily = {(f, s): n for f, s, n in worker.sql(
        "SELECT funnel, stage, sum(users) FROM funnel.daily_stage_entries GROUP BY funnel, stage")}
    assert daily == counted
    windows = {(f, s): n for f, s, n in worker.sql(
        "SELECT funnel, stage, sum(users) FROM funnel.stage_counts_final WHERE kind = 'entry' "
        "GROUP BY funnel, stage")}
    assert windows == counted
    assert worker.scalar("SELECT count() FROM funnel.stalled_leads WHERE funnel = 'b2b' AND user_id IN "
                         "(SELECT user_id FROM funnel.stage_entries FINAL WHERE excluded = 1)") == 0
    # /metrics: entries - merged - excluded per funnel and stage name.
    for (funnel, stage), persons in counted.items():
        total = worker.metric_sum("funnel_stage_entries_total", funnel=funnel, stage=stage)
        merged = worker.metric_sum("funnel_stage_entries_merged_total", funnel=funnel, stage=stage)
        out = worker.metric_sum("funnel_stage_entries_excluded_total", funnel=funnel, stage=stage)
        assert total - merged - out == persons, (funnel, stage)
    # The configuration as the views read it.
    assert worker.sql("SELECT stage, event_type, within_seconds FROM funnel.funnel_stages FINAL "
                      "WHERE funnel = 'b2b' ORDER BY stage_index") == [
        ["visit", "visit", 0], ["pricing", "visit", 0], ["lead", "signup", 0], ["mql", "signup", 14 * 86_400],
        ["won", "purchase", 0]]
