"""Events keyed by user id go straight to the journeys; the others through `normalized`.

Half the users' events are keyed by their user id (as the generator does),
half carry no key. Only the unkeyed ones may take the `normalized` topic, and
every user's journey is whole: each signup is a transition from its visit,
whichever way the two came. With FUNNEL_DIRECT_JOURNEYS=false every event
takes the topic, with the same result.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .harness import (
    bootstrap_of,
    event,
    group_positions,
    produce,
    start_worker,
    stopped_cleanly,
    stored_events,
    wait_drained,
)

pytestmark = pytest.mark.integration

USERS = 400


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "all-through-normalized"])
def test_keyed_events_skip_normalized_and_journeys_stay_whole(
        pipeline_env: dict[str, str], tmp_path: Path, direct: bool) -> None:
    env = {**pipeline_env, "FUNNEL_DIRECT_JOURNEYS": str(direct).lower()}
    prefix = env["FUNNEL_TOPIC_PREFIX"]
    now = int(time.time() * 1000)
    keyed = [f"k{i}" for i in range(USERS // 2)]
    unkeyed = [f"n{i}" for i in range(USERS // 2)]
    with stopped_cleanly(start_worker(env, tmp_path / "worker.log")) as worker:
        # Each user's visit and signup: one keyed and one unkeyed way for the
        # mixed users, so a journey must join both paths.
        mixed = keyed[:50]
        messages = []
        for ts, stage in ((now - 60_000, "visit"), (now - 30_000, "signup")):
            for user in keyed + unkeyed:
                plain = user in unkeyed or (user in mixed and stage == "signup")
                key = None if plain else user.encode()
                messages.append((f"{prefix}{stage}", key, event(stage, user, ts)[2]))
        produce(bootstrap_of(env), messages)
        wait_drained(worker, 120)
        assert stored_events(worker) == 2 * USERS
        assert worker.sql("SELECT from_stage, to_stage, count() FROM funnel.transitions FINAL "
                          "GROUP BY from_stage, to_stage") == [["visit", "signup", USERS]]
        through = sum(end for _, end in group_positions(
            bootstrap_of(env), env["FUNNEL_APP_ID"], [f"{prefix}normalized"]).values())
        unkeyed_messages = sum(1 for _, key, _ in messages if key is None)
        assert through == (unkeyed_messages if direct else 2 * USERS)
