"""streams.agents.journeys: following the users of a worker's partitions after a rebalance."""

from __future__ import annotations

import time
from typing import Any

from schemas import EVENT_TYPES, FunnelDefinition, NormalizedEvent
from streams.funnel.journey import UserState, apply_event
from tests.unit.streams.fakes import home


def _journey(user: str, stage_count: int) -> UserState:
    """A user who reached the first ``stage_count`` stages of the default funnel an hour ago."""
    funnel = FunnelDefinition(name="default", stages=EVENT_TYPES)
    state: UserState = {}
    ts = int(time.time() * 1000) - 3_600_000
    for n, stage in enumerate(EVENT_TYPES[:stage_count]):
        event: dict[str, Any] = {
            "event_id": f"00000000-0000-4000-8000-{n:012d}", "event_type": stage, "funnel": None,
            "user_id": user, "anonymous_id": None, "person_id": user, "ts": ts + n, "received_at": ts + n,
            "channel": "ads", "campaign": None,
            "product": None, "region": None, "manager": None, "amount": None, "currency": None,
            "order_id": None, "email_hash": None, "properties": {}, "source": "",
        }
        apply_event(state, NormalizedEvent(**event), funnel)  # type: ignore[typeddict-item]
    return state


def test_only_the_users_of_active_partitions_are_followed(pipeline: Any) -> None:
    """A standby's copy (in the same memory store) is left to its active worker."""
    users = {f"u{n}".encode(): _journey(f"u{n}", 1 + n % 3) for n in range(40)}
    active = {home(b"u0")}
    pipeline.journey.table = users
    pipeline.journey.stalls.clear()
    here = [key for key in users if home(key) in active]
    assert 0 < len(here) < len(users)
    assert pipeline.journey.follow_all(active) == len(here)
    assert len(pipeline.journey.stalls) == len(here)  # one funnel each, none finished
    assert len(pipeline.journey.deadlines) == len(here)
    assert pipeline.journey.follow_all(set(range(4))) == len(users)
    assert len(pipeline.journey.stalls) == len(users)
