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
    generating,
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

    replay_env = {**pipeline_env, "FUNNEL_APP_ID": pipeline_env["FUNNEL_APP_ID"] + "-replay"}
    with stopped_cleanly(start_worker(replay_env, tmp_path / "worker-second.log")) as second:
        wait_drained(second, 180)
        # The internal topic funnel.normalized now holds what both passes ingested, and
        # the fresh journeys table reads all of it: one copy of each event is applied.
        assert_counted_not_applied(second, sent, duplicates=2 * sent - truth["events"])
        assert table_fingerprints(second) == after_first
        assert_exact_truth(second, truth_path)


def assert_counted_not_applied(worker: Worker, sent: int, duplicates: int) -> None:
    """Every message ingested once, every copy beyond the first counted as a duplicate."""
    assert worker.metric_sum("funnel_events_total") == sent
    assert worker.metric_sum("funnel_duplicate_events_total") == duplicates
