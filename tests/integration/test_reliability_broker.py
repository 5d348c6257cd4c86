"""Reliability (issue 4): the embedded broker restarts under a running worker.

The broker (memory storage) is stopped and started again on the same port:
its topics, messages and consumer-group offsets are gone. Producers carry on
(sending creates their topics again). Nobody touches the worker: it must
reconnect by itself, create the topics the broker lost, store every event
sent after the restart (also those sent before it noticed, which its old
positions would skip), commit its offsets again and still stop cleanly. The
journeys it held are written to the new changelog: a worker started later
still knows the users from before the restart.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.tools.broker import EmbeddedBroker

from .harness import (
    send_visits,
    start_worker,
    stopped_cleanly,
    stored_events,
    wait_drained,
    wait_until,
)

pytestmark = pytest.mark.integration

BATCH = 100


def test_worker_survives_a_broker_restart(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log").start()
    try:
        env = {**pipeline_env, "FUNNEL_KAFKA_URL": broker.url}
        with stopped_cleanly(start_worker(env, tmp_path / "worker.log")) as worker:
            pid = worker.proc.pid
            send_visits(worker, (f"b{n}" for n in range(BATCH)))
            wait_until(lambda: stored_events(worker) == BATCH, 60, "the first visits in ClickHouse")
            broker.stop()
            time.sleep(2)
            broker = EmbeddedBroker(port=broker.port, log_file=tmp_path / "broker.log").start()
            restarted = time.monotonic()
            send_visits(worker, (f"b{n}" for n in range(BATCH, 2 * BATCH)))
            time.sleep(10)  # the worker has reconnected by now: this batch comes later
            send_visits(worker, (f"b{n}" for n in range(2 * BATCH, 3 * BATCH)))
            # The old broker's data is gone; every event sent since must be stored.
            wait_until(lambda: stored_events(worker) == 3 * BATCH, 60, "the visits sent after the restart")
            print(f"broker restart: new traffic stored {time.monotonic() - restarted:.1f}s after it")
            assert worker.proc.pid == pid and worker.proc.poll() is None
            wait_drained(worker, 60)  # offsets are committed again
            assert stored_events(worker) == 3 * BATCH
            wait_until(lambda: "journeys held here again" in worker.log_path.read_text(), 30,
                       "the journeys written to the new changelog")
        # A new worker recovers the journeys from the changelog alone (memory
        # store): every user, those from before the broker restart included,
        # has visited already, so another visit is no new stage entry.
        with stopped_cleanly(start_worker(env, tmp_path / "worker2.log")) as worker:
            send_visits(worker, (f"b{n}" for n in range(3 * BATCH)))  # new event ids
            wait_until(lambda: stored_events(worker) == 6 * BATCH, 60, "the second visits in ClickHouse")
            wait_drained(worker, 60)
            assert worker.metric_sum("funnel_stage_entries_total") == 0
    finally:
        broker.stop()
