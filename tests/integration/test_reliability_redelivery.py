"""Reliability (issue 4): redelivery changes nothing.

Every generated event is sent twice (same event_id). A first worker consumes
everything; then, stopped, a second worker with a fresh consumer group (its
own FUNNEL_APP_ID, so a fresh journeys table too) reads the same topics from
offset 0 into the same ClickHouse. Duplicates are counted, not applied, and
ClickHouse reads the same after the second pass as after the first, down to
every row's content.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import (
    Worker,
    assert_exact_truth,
    bootstrap_of,
    generating,
    group_positions,
    start_worker,
    stopped_cleanly,
    table_fingerprints,
    wait_drained,
)

pytestmark = pytest.mark.integration

SEED = 4002
USERS = 3_000  # ~3 500 events, each sent twice


def test_every_event_twice_then_a_second_pass_changes_nothing(
    pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    truth_path = tmp_path / "truth.json"
    with stopped_cleanly(start_worker(pipeline_env, tmp_path / "worker-first.log")) as first:
        with generating(
            pipeline_env, truth_path, "--seed", str(SEED), "--users", str(USERS), "--rate", "20000",
            "--stage-delay", "0.2", "--duplicate-rate", "1", log_path=tmp_path / "generate.log",
        ) as generator:
            assert generator.wait(120) == 0
        truth = json.loads(truth_path.read_text())
        assert truth["duplicates"] == truth["events"]  # every event went out twice
        wait_drained(first, 180)
        assert_exact_truth(first, truth_path)
        sent = truth["events"] + truth["duplicates"]
        assert_counted_not_applied(first, sent, duplicates=truth["duplicates"])
        after_first = table_fingerprints(first)
        rekeyed = on_normalized(pipeline_env)

    replay_env = {**pipeline_env, "FUNNEL_APP_ID": pipeline_env["FUNNEL_APP_ID"] + "-replay"}
    with stopped_cleanly(start_worker(replay_env, tmp_path / "worker-second.log")) as second:
        wait_drained(second, 180)
        # Events keyed by user went straight to the journeys; the others took the
        # internal topic funnel.normalized, which the fresh group reads whole, the
        # first pass's messages too: one copy of each event is applied.
        assert_counted_not_applied(second, sent, duplicates=sent + rekeyed - truth["events"])
        assert table_fingerprints(second) == after_first
        assert_exact_truth(second, truth_path)


def on_normalized(env: dict[str, str]) -> int:
    """Messages on the worker's `normalized` topic."""
    topic = env["FUNNEL_TOPIC_PREFIX"] + "normalized"
    return sum(end for _, end in group_positions(bootstrap_of(env), env["FUNNEL_APP_ID"], [topic]).values())


def assert_counted_not_applied(worker: Worker, sent: int, duplicates: int) -> None:
    """Every message ingested once, every copy beyond the first counted as a duplicate."""
    assert worker.metric_sum("funnel_events_total") == sent
    assert worker.metric_sum("funnel_duplicate_events_total") == duplicates
