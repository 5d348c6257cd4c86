"""Live drop-offs (closed lost) and the stalled-leads gauge, through a real worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner

from .harness import Worker, event, produce, start_worker, wait_until

pytestmark = pytest.mark.integration

HOUR = 3_600_000
DAY = 24 * HOUR
PARTITIONS = 4


def _user_on_each_partition(prefix: str) -> list[str]:
    """One user id per partition of the (user-keyed) normalized topic."""
    partitioner, found = DefaultPartitioner(), {}
    i = 0
    while len(found) < PARTITIONS:
        user = f"{prefix}{i}"
        found.setdefault(partitioner(user.encode(), list(range(PARTITIONS)), list(range(PARTITIONS))), user)
        i += 1
    return list(found.values())


@pytest.fixture
def day_window_worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    funnels = tmp_path / "funnels.yml"
    funnels.write_text(
        "funnels:\n  - name: default\n    stages: [visit, signup, webinar, consultation, purchase]\n"
        "    conversion_window_days: 1\n"
    )
    env = {**pipeline_env, "FUNNEL_FUNNELS_FILE": str(funnels),
           "FUNNEL_TOPIC_PARTITIONS": str(PARTITIONS)}
    worker = start_worker(env, tmp_path / "worker.log")
    yield worker
    assert worker.stop() == 0, worker.log_tail()


def test_dropoffs_when_windows_end_and_stalled_leads_by_temperature(day_window_worker: Worker) -> None:
    w = day_window_worker
    prefix, bootstrap = w.env["FUNNEL_TOPIC_PREFIX"], w.env["FUNNEL_KAFKA_URL"].removeprefix("kafka://")
    t0 = int(time.time() * 1000) - 10 * DAY

    def send(*events: tuple[str, str, int]) -> None:
        produce(bootstrap, [(f"{prefix}{stage}", user.encode(), event(stage, user, ts, channel="seo")[2])
                            for stage, user, ts in events])

    send(*[("visit", f"d{i}", t0) for i in range(10)])                 # will drop at visit
    send(*[("visit", f"c{i}", t0) for i in range(5)])
    wait_until(lambda: w.metric_sum("funnel_events_total", event_type="visit") >= 15, 60, "visits")
    send(*[("signup", f"c{i}", t0 + HOUR) for i in range(5)])          # will drop at signup
    wait_until(lambda: w.metric_sum("funnel_events_total", event_type="signup") >= 5, 60, "signups")
    # Event time moves on two days on every partition: the one-day windows end.
    clocks = _user_on_each_partition("clock")
    send(*[("visit", user, t0 + 7 * DAY) for user in clocks])
    wait_until(lambda: w.metric_sum("funnel_dropoffs_total") == 15, 60, "15 drop-offs")
    assert w.metric_sum("funnel_dropoffs_total", stage="visit", channel="seo") == 10
    assert w.metric_sum("funnel_dropoffs_total", stage="signup") == 5

    # d0's signup arrives late but inside its window: its visit drop-off is retracted,
    # and its signup window (also over) drops it at signup instead.
    send(("signup", "d0", t0 + 2 * HOUR))
    def closed() -> list[list[object]]:
        return w.sql("SELECT stage, won, lost, open FROM funnel.closed_conversion "
                     "WHERE stage IN ('visit', 'signup') ORDER BY stage")

    expected = [["signup", 0, 6, 0], ["visit", 6, 9, 4]]  # stage, won, lost, open (the clocks)
    wait_until(lambda: closed() == expected, 60, f"closed conversion {expected}")
    assert w.sql("SELECT stage, count() FROM funnel.dropoffs FINAL GROUP BY stage ORDER BY stage") == [
        ["signup", 6], ["visit", 9]]

    # Stalled leads by wall clock: everyone is 10 days idle (cold) but the clock users (3 days: warm).
    def stalled(stage: str, temperature: str) -> float:
        return w.metric_sum("funnel_stalled_users", stage=stage, temperature=temperature)

    wait_until(lambda: (stalled("visit", "cold"), stalled("signup", "cold"), stalled("visit", "warm"))
               == (9, 6, len(clocks)), 30, "stalled leads 9 / 6 cold, clocks warm")
    assert stalled("visit", "hot") == 0
