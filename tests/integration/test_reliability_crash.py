"""Reliability (issue 4): restarts and SIGKILL while a generated stream is processed.

A seeded `funnel generate --identity` run with a known ground truth is
consumed by a worker that is killed with SIGKILL three times at random points
of its progress and restarted (each restart reopens the embedded ClickHouse
the dead worker owned). Visitors are anonymous until their next stage links
them to a user id (issue 18), so the kills land amid links and merges. At the
end ClickHouse holds exactly the ground truth, counted by person, and no
person ever got two different entry events for one stage. A smaller test first checks that a
restarted worker gets its journeys table back from the changelog at all.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from .harness import (
    Worker,
    assert_exact_truth,
    bootstrap_of,
    event,
    generating,
    load_truth,
    pipeline_lag,
    produce,
    start_worker,
    stopped_cleanly,
    wait_drained,
    wait_until,
)

pytestmark = pytest.mark.integration

SEED = 4004
#: Users of the generated stream: about 1.17 events each, so over 200 000 events (checked below).
USERS = 175_000
MIN_EVENTS = 200_000
#: Where in the stream each SIGKILL comes: a random share of MIN_EVENTS written, within these bounds.
KILL_AT = ((0.10, 0.30), (0.40, 0.60), (0.70, 0.85))
KILLS = len(KILL_AT)
#: How long a restarted worker may take to become ready. The memory store replays the whole
#: journeys changelog (streams.faust_adapt.recovery: some 20 000 records/s here), so the third
#: restart reads some 250 000 records; Faust's own recovery, one record at a time, took 2-3 minutes.
RESTART_TIMEOUT = 120.0


def restart(env: dict[str, str], log_path: Path) -> Worker:
    """Start a worker; if it never becomes ready, say what its table recovery logged."""
    try:
        return start_worker(env, log_path, RESTART_TIMEOUT)
    except AssertionError as exc:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if "ecovery" in ln]
        raise AssertionError(f"{exc}\nrecovery log (last lines):\n" + "\n".join(lines[-6:])) from None


def test_restart_gets_the_journeys_back(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    """Visits, a clean restart, then signups: every signup is a transition from its visit."""
    users = [f"r{i}" for i in range(40)]
    prefix = pipeline_env["FUNNEL_TOPIC_PREFIX"]
    now = int(time.time() * 1000)
    with stopped_cleanly(start_worker(pipeline_env, tmp_path / "worker-0.log")) as worker:
        produce(bootstrap_of(pipeline_env), [
            (f"{prefix}visit", u.encode(), event("visit", u, now - 60_000)[2]) for u in users])
        wait_until(lambda: worker.scalar("SELECT count() FROM funnel.stage_entries FINAL") == len(users),
                   60, "the visits in ClickHouse")
    with stopped_cleanly(restart(pipeline_env, tmp_path / "worker-1.log")) as worker:
        produce(bootstrap_of(pipeline_env), [
            (f"{prefix}signup", u.encode(), event("signup", u, now - 30_000)[2]) for u in users])
        wait_until(lambda: worker.scalar("SELECT count() FROM funnel.stage_entries FINAL") == 2 * len(users),
                   60, "the signups in ClickHouse")
        wait_drained(worker, 60)
        assert worker.sql("SELECT from_stage, to_stage, count() FROM funnel.transitions FINAL "
                          "GROUP BY from_stage, to_stage") == [["visit", "signup", len(users)]]


def test_sigkill_three_times_then_exact(pipeline_env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    workers = [start_worker(pipeline_env, tmp_path / "worker-0.log")]
    truth = tmp_path / "truth.json"
    try:
        with generating(
            pipeline_env, truth, "--seed", str(SEED), "--users", str(USERS), "--rate", "20000",
            "--stage-delay", "0.5", "--duplicate-rate", "0.01", "--identity",
            log_path=tmp_path / "generate.log",
        ) as generator:
            # Each kill comes at a random point of the stream's progress (events
            # in ClickHouse), not of the clock: a worker that keeps up with the
            # generator would otherwise have drained everything by the last one.
            for kill, (low, high) in enumerate(KILL_AT, start=1):
                target = round(rng.uniform(low, high) * MIN_EVENTS)
                wait_until(lambda target=target: workers[-1].scalar("SELECT count() FROM funnel.events")
                           >= target, 240, f"{target} events in ClickHouse before kill {kill}", every=0.1)
                behind = sum(pipeline_lag(workers[-1]).values())
                done = workers[-1].scalar("SELECT count(DISTINCT event_id) FROM funnel.events")
                assert done < MIN_EVENTS, f"kill {kill} would not interrupt anything: the stream is done"
                assert workers[-1].stop(signal.SIGKILL) == -signal.SIGKILL
                print(f"crash: kill {kill} at {time.monotonic() - started:.1f}s, {done} distinct events "
                      f"written, {behind} messages behind")
                # The dead worker owned the chDB path: the next one must open it again.
                workers.append(restart(pipeline_env, tmp_path / f"worker-{kill}.log"))
            assert generator.wait(120) == 0
        wait_drained(workers[-1], 240)  # under pytest's 600 s, so the task dump is taken
        elapsed = time.monotonic() - started
        assert len({w.proc.pid for w in workers}) == KILLS + 1
        events = assert_exact_truth(workers[-1], truth)
        linked = workers[-1].scalar("SELECT count() FROM funnel.identities FINAL WHERE status = 'linked'")
        assert linked == sum(n for move, n in load_truth(truth)["transitions"].items()
                             if move.startswith("visit->"))
        assert workers[-1].scalar("SELECT count() FROM funnel.stage_entries FINAL WHERE user_id IN "
                                  "(SELECT anonymous_id FROM funnel.identities FINAL)") == 0
        assert events >= MIN_EVENTS, f"only {events} events: raise USERS"
        print(f"crash: {events} events exact after {KILLS} kills in {elapsed:.0f}s "
              f"({events / elapsed:.0f} events/s including restarts)")
        assert workers[-1].stop() == 0, workers[-1].log_tail()
    finally:
        for worker in workers:
            worker.stop(signal.SIGKILL)
