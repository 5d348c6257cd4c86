"""The messages the bench produces: the generator's realistic traffic and one visit per user."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any, NamedTuple


class Message(NamedTuple):
    """One message to produce; the value is ``head + <ts in ms> + "}"`` (time set at sending)."""

    event_type: str
    key: bytes
    head: bytes
    offset_ms: int  # event time after the start of the traffic (virtual clock)
    copies: int  # 2 when the generator sends it twice (same event_id)
    entry: bool  # the user's first event of this stage: it moves funnel_stage_entries_total

    def value(self, ts_ms: int) -> bytes:
        return b"%s%d}" % (self.head, ts_ms)


def realistic_traffic(events: int, *, seed: int, rate: float = 2000.0, duplicate_rate: float = 0.01,
                      identity: bool = False, stage_properties: bool = False,
                      ) -> tuple[list[Message], dict[str, Any]]:
    """``events`` distinct events of the generator's traffic, on a virtual clock of ``rate``/s.

    Uses the generator's own planning (users, channels, conversions, skips,
    repeat purchases, duplicates, ``identity``, ``stage_properties``), so the bench reads what
    `funnel generate` would send; returns the messages and the generator's
    ground truth.
    """
    # The generator's planner, driven by a virtual clock instead of the wall clock.
    from streams.tools.generator import TrafficSpec, _Traffic, message_key

    traffic = _Traffic(TrafficSpec(rate=rate, seed=seed, duplicate_rate=duplicate_rate, identity=identity,
                                   stage_properties=stage_properties))
    truth = traffic.truth
    out: list[Message] = []
    tick, now, budget = 0.02, 0.0, 0.0
    while truth.events < events:
        now += tick
        budget = min(budget + rate * tick, rate)
        batch = list(traffic.due(now))
        while len(batch) < budget:
            traffic.start_user(now)
            batch.extend(traffic.due(now))
        for planned in batch:
            if truth.events >= events:
                break  # journeys still planned are cut short, as a generator run with --duration
            budget -= 1
            payload = planned.payload
            head = json.dumps(payload)[:-1].encode() + b', "ts": '
            out.append(Message(planned.event_type, message_key(payload), head,
                               round(now * 1000), 1 + planned.duplicate,
                               planned.previous != planned.event_type))
            truth.record(planned)
    return out, truth.as_dict()


def visit_traffic(users: int, seed: int) -> list[Message]:
    """One visit for each of ``users`` distinct users (the memory run)."""
    from streams.tools.generator import CAMPAIGNS, DEFAULT_CHANNEL_MIX, PRODUCTS, REGIONS

    rng = random.Random(seed)
    channels = list(DEFAULT_CHANNEL_MIX)
    out = []
    for i in range(users):
        user = f"u-{seed:04d}-{i:09d}"
        channel = channels[i % len(channels)]
        campaign = CAMPAIGNS.get(channel, [""])[i % len(CAMPAIGNS.get(channel, [""]))]
        head = (
            f'{{"event_id": "{uuid.UUID(int=rng.getrandbits(128), version=4)}", "user_id": "{user}", '
            f'"funnel": "default", "channel": "{channel}", "campaign": "{campaign}", '
            f'"product": "{PRODUCTS[i % 3][0]}", "region": "{REGIONS[i % 4]}", "ts": '
        ).encode()
        out.append(Message("visit", user.encode(), head, i, 1, True))
    return out
