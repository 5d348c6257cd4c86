"""Reliability (issue 4): two workers in one consumer group, one killed.

Two worker processes share the partitions of one consumer group; one is
killed with SIGKILL mid-stream and the other takes its partitions over
(journeys table from the changelog, uncommitted batches replayed). The
embedded engine has one owner per data directory, so each worker writes its
own chDB - as each would write its own shard of a ClickHouse cluster. Read
together (newest version per natural key, as ReplacingMergeTree does on a
cluster), the two hold exactly the generator's ground truth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from .harness import (
    Worker,
    generating,
    load_truth,
    pipeline_lag,
    start_worker,
    stopped_cleanly,
    wait_drained,
    wait_until,
)

pytestmark = pytest.mark.integration

SEED = 4008
USERS = 8_000  # ~9 300 events
RATE = 2_000  # events/s: producing the stream takes about 5 s, b is killed within it

QUERIES = {
    "events": "SELECT event_id, event_type, currency, toString(amount) FROM funnel.events FINAL",
    "entries": "SELECT funnel, stage, user_id, toString(event_id), channel FROM funnel.stage_entries FINAL",
    # Every version ever written: the shards are merged by version below.
    "transitions": "SELECT funnel, to_stage, user_id, argMax(from_stage, version), max(version), "
                   "argMax(is_deleted, version) FROM funnel.transitions GROUP BY funnel, to_stage, user_id",
}


def test_two_workers_one_killed_the_other_takes_over(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    env_b = {**pipeline_env, "FUNNEL_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb-b'}",
             "FUNNEL_DATA_DIR": str(tmp_path / "data-b")}
    truth = tmp_path / "truth.json"
    with stopped_cleanly(start_worker(pipeline_env, tmp_path / "worker-a.log")) as a:
        b = start_worker(env_b, tmp_path / "worker-b.log")
        try:
            wait_until(lambda: both_ready(a, b), 60, "both workers to share the partitions")
            with generating(
                pipeline_env, truth, "--seed", str(SEED), "--users", str(USERS), "--rate", str(RATE),
                "--stage-delay", "0.5", log_path=tmp_path / "generate.log",
            ) as generator:
                # b is killed once it has written (not after a fixed sleep: on a slow
                # machine b had written nothing yet, and the test checked nothing of it).
                wait_until(lambda: b.scalar("SELECT count() FROM funnel.events") > 0, 60,
                           "worker b to write its first events", every=0.1)
                assert sum(pipeline_lag(a).values()) > 0, "nothing left to take over"
                assert b.stop(signal.SIGKILL) == -signal.SIGKILL
                assert generator.wait(120) == 0
        finally:
            b.stop(signal.SIGKILL)
        wait_drained(a, 240)
        shard_a = {name: a.sql(q) for name, q in QUERIES.items()}
    shard_b = {name: sql_offline(env_b, q) for name, q in QUERIES.items()}
    assert shard_a["events"] and shard_b["events"], "both workers must have written"
    assert merged_numbers(shard_a, shard_b) == load_truth(truth)


def both_ready(a: Worker, b: Worker) -> bool:
    return all(json.loads(w.get("/health", timeout=2))["ready"] for w in (a, b))


def sql_offline(env: dict[str, str], query: str) -> list[list[Any]]:
    """`funnel sql --json` on a chDB no worker owns any more."""
    done = subprocess.run([sys.executable, "-m", "streams.tools.cli", "sql", "--json", query],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["rows"])


def merged_numbers(*shards: dict[str, list[list[Any]]]) -> dict[str, Any]:
    """The ground-truth numbers of the shards read as one table set."""
    events = {row[0]: row for shard in shards for row in shard["events"]}
    entries: dict[tuple[str, str, str], tuple[str, str]] = {}
    for shard in shards:
        for funnel, stage, user, event_id, channel in shard["entries"]:
            seen = entries.setdefault((funnel, stage, user), (event_id, channel))
            assert seen == (event_id, channel), f"{user} entered {stage} twice: {seen} / {event_id}"
    transitions: dict[tuple[str, str, str], tuple[int, str, int]] = {}
    for shard in shards:
        for funnel, to, user, from_stage, version, deleted in shard["transitions"]:
            key = (funnel, to, user)
            if key not in transitions or transitions[key][0] < version:
                transitions[key] = (version, from_stage, deleted)
    revenue: dict[str, Decimal] = {}
    for _, event_type, currency, amount in events.values():
        if event_type == "purchase":
            revenue[currency] = revenue.get(currency, Decimal(0)) + Decimal(amount)
    by_channel: dict[str, Counter[str]] = {}
    for (_, stage, _), (_, channel) in entries.items():
        by_channel.setdefault(stage, Counter())[channel] += 1
    return {
        "entries": dict(Counter(stage for _, stage, _ in entries)),
        "entries_by_channel": {stage: dict(c) for stage, c in by_channel.items()},
        "transitions": dict(Counter(f"{f}->{to}" for (_, to, _), (_, f, d) in transitions.items() if not d)),
        "revenue": revenue,
        "events": len(events),
    }
