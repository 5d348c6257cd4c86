"""Realistic funnel traffic with a known ground truth.

Each new user starts with a visit and then, with the configured conversion
probabilities, moves on stage by stage after a random delay. Some skip a
stage, some buy again, some events are sent twice (same event_id), and
optionally some messages are malformed. :class:`GroundTruth` records what a
correct pipeline must report for the valid, deduplicated events.

Reproducible: with ``seed`` set, the users, their events (ids included), which
events are sent twice and which malformed messages follow them depend on the
seed and the spec only; event times are wall-clock times of sending. Every
random choice is made when a user is planned, never while sending (how many
events one tick sends depends on timing). The ground truth counts what was
sent, so it stays exact when ``duration`` stops the run mid-journey.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiokafka import AIOKafkaProducer

from schemas import EVENT_TYPES
from streams.kafka_security import check_connection, client_options
from streams.settings import Settings, split_brokers

__all__ = ["GroundTruth", "TrafficSpec", "message_key", "plan_user", "run_generator"]

log = logging.getLogger("funnel.generate")

DEFAULT_CHANNEL_MIX: dict[str, float] = {
    "seo": 30, "ads": 25, "social": 18, "email": 10, "partner": 5, "direct": 9, "referral": 3,
}
CAMPAIGNS = {
    "ads": ["brand-search", "retargeting", "black-friday"],
    "social": ["launch-video", "webinar-promo"],
    "email": ["newsletter", "nurture-3"],
    "partner": ["affiliate-a", "affiliate-b"],
}
PRODUCTS = [("starter", "49.00"), ("pro", "149.00"), ("team", "499.00")]
REGIONS = ["eu", "na", "apac", "latam"]
MANAGERS = ["alice", "bob", "chen", "dana"]
CURRENCIES = ["EUR", "USD", "GBP"]


@dataclass
class TrafficSpec:
    """What to generate. Conversions are stage-to-stage probabilities."""

    rate: float = 200.0
    users: int = 0
    duration: float = 0.0
    seed: int | None = None
    funnel: str | None = None  # None: events name no funnel and feed every one with their stage
    channel_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CHANNEL_MIX))
    conversion: tuple[float, ...] = (0.10, 0.40, 0.50, 0.50)
    skip_rate: float = 0.05
    repeat_purchase: float = 0.2
    duplicate_rate: float = 0.01
    invalid_rate: float = 0.0
    stage_delay: float = 2.0
    #: Identity as a web site sends it: visits carry only an anonymous id, the
    #: next stage (the signup, or what a skip leads to) carries both ids (the
    #: link), later events only the user id; each message is keyed by the id
    #: it is routed by (the anonymous id when both).
    identity: bool = False
    #: Properties that named stages filter on (the README's b2b funnel):
    #: visits carry ``properties.page`` (/pricing for about 30 %, and a
    #: quarter of the users visit /pricing again before their next stage),
    #: signups ``properties.lead_score`` 0-100 (and 30 % sign up again later,
    #: with a new score: a lead that qualifies later), purchases
    #: ``properties.refunded`` true for 5 %. The repeated visits and signups
    #: are no new entries of the default funnel. Off: none of these draws.
    stage_properties: bool = False


@dataclass
class GroundTruth:
    """Exact expected results for the valid events sent.

    ``entries`` per stage, ``entries_by_channel`` per stage and (first-touch)
    channel, ``transitions`` per ``"from->to"``, ``revenue`` per currency,
    ``events`` distinct valid events, ``duplicates`` extra copies sent (same
    event_id), ``invalid`` malformed messages sent.
    """

    entries: Counter[str] = field(default_factory=Counter)
    entries_by_channel: dict[str, Counter[str]] = field(default_factory=dict)
    transitions: Counter[str] = field(default_factory=Counter)
    revenue: dict[str, Decimal] = field(default_factory=dict)
    events: int = 0
    duplicates: int = 0
    invalid: int = 0

    def record(self, event: _Planned) -> None:
        """Count one event as sent (with its copy and malformed companion, if any)."""
        event_type, payload = event.event_type, event.payload
        self.events += 1
        self.duplicates += event.duplicate
        self.invalid += event.malformed is not None
        # First entry of each stage, transitions between them (plans only move forward).
        if event.previous != event_type:
            self.entries[event_type] += 1
            by_channel = self.entries_by_channel.setdefault(event_type, Counter())
            by_channel[payload["channel"]] += 1
            if event.previous is not None:
                self.transitions[f"{event.previous}->{event_type}"] += 1
        if event_type == "purchase":
            currency = payload["currency"]
            self.revenue[currency] = self.revenue.get(currency, Decimal(0)) + Decimal(payload["amount"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": dict(self.entries),
            "entries_by_channel": {k: dict(v) for k, v in self.entries_by_channel.items()},
            "transitions": dict(self.transitions),
            "revenue": {k: str(v) for k, v in self.revenue.items()},
            "events": self.events,
            "duplicates": self.duplicates,
            "invalid": self.invalid,
        }


@dataclass
class _Planned:
    """One planned event and every random choice about how it is sent."""

    event_type: str
    payload: dict[str, Any]
    previous: str | None  # the stage this user's previous event had (None: first event)
    duplicate: bool  # sent twice (same event_id)
    malformed: bytes | None  # a malformed message sent after it


def plan_user(rng: random.Random, spec: TrafficSpec) -> list[tuple[float, str]]:
    """The stages one user will reach, as (seconds after the visit, event type)."""
    plan = [(0.0, "visit")]
    t = 0.0
    stage = 0
    while stage < len(EVENT_TYPES) - 1:
        if rng.random() >= spec.conversion[stage]:
            break
        nxt = stage + 1
        # A skip jumps over the next stage (a webinar no-show who still books).
        if nxt < len(EVENT_TYPES) - 1 and rng.random() < spec.skip_rate:
            nxt += 1
        t += rng.expovariate(1.0 / spec.stage_delay) if spec.stage_delay > 0 else 0.0
        plan.append((t, EVENT_TYPES[nxt]))
        stage = nxt
    if plan[-1][1] == "purchase" and rng.random() < spec.repeat_purchase:
        t += rng.expovariate(1.0 / spec.stage_delay) if spec.stage_delay > 0 else 0.0
        plan.append((t, "purchase"))
    return plan


class _Traffic:
    """Turns plans into timed event payloads and keeps the ground truth."""

    def __init__(self, spec: TrafficSpec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.truth = GroundTruth()
        self.started_users = 0
        self._heap: list[tuple[float, int, _Planned]] = []
        self._seq = 0
        channels = list(spec.channel_mix)
        weights = [spec.channel_mix[c] for c in channels]
        self._pick_channel: Callable[[], str] = lambda: self.rng.choices(channels, weights)[0]

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def start_user(self, now: float) -> None:
        self.started_users += 1
        user = f"u-{self._uuid()[:13]}"
        anonymous = f"a-{self._uuid()}" if self.spec.identity else None
        channel = self._pick_channel()
        campaign = self.rng.choice(CAMPAIGNS.get(channel, [""])) or None
        product, price = self.rng.choice(PRODUCTS)
        currency = self.rng.choice(CURRENCIES)
        region, manager = self.rng.choice(REGIONS), self.rng.choice(MANAGERS)
        previous = None
        plan = [(offset, event_type, False) for offset, event_type in plan_user(self.rng, self.spec)]
        if self.spec.stage_properties:
            plan += [(offset, event_type, True) for offset, event_type in self._repeats(plan)]
        for offset, event_type, repeat in plan:
            prior = event_type if repeat else previous  # a repeat: no new entry, no transition
            payload: dict[str, Any] = {
                "event_id": self._uuid(), "user_id": user,
                "channel": channel, "campaign": campaign, "product": product, "region": region,
            }
            if anonymous is not None and prior in (None, "visit"):  # before and at the link
                payload["anonymous_id"] = anonymous
                if event_type == "visit":
                    del payload["user_id"]
            if self.spec.funnel:
                payload["funnel"] = self.spec.funnel
            if event_type in ("consultation", "purchase"):
                payload["manager"] = manager
            if event_type == "signup":
                payload["email"] = f"{user}@example.com"
            if event_type == "purchase":
                payload.update(amount=price, currency=currency, order_id=self._uuid()[:8])
            if self.spec.stage_properties:
                payload["properties"] = self._properties(event_type, repeat)
            duplicate = self.rng.random() < self.spec.duplicate_rate
            malformed = None
            if self.spec.invalid_rate and self.rng.random() < self.spec.invalid_rate:
                malformed = _malformed(self.rng)
            self._push(now + offset, _Planned(event_type, payload, prior, duplicate, malformed))
            if not repeat:
                previous = event_type

    def _repeats(self, plan: list[tuple[float, str, bool]]) -> list[tuple[float, str]]:
        """``stage_properties``: a second visit (to /pricing) before the next stage, a later signup."""
        out = []
        delay = self.spec.stage_delay or 1.0
        if self.rng.random() < 0.25:
            out.append((self.rng.uniform(0.0, plan[1][0] if len(plan) > 1 else delay), "visit"))
        signup = next((at for at, event_type, _ in plan if event_type == "signup"), None)
        if signup is not None and self.rng.random() < 0.3:
            out.append((signup + self.rng.expovariate(1.0 / (4 * delay)), "signup"))
        return out

    def _properties(self, event_type: str, repeat: bool) -> dict[str, Any]:
        if event_type == "visit":  # a repeated visit is the pricing page
            pricing = repeat or self.rng.random() < 0.3
            return {"page": "/pricing" if pricing else self.rng.choice(["/", "/blog", "/features"])}
        if event_type == "signup":
            return {"lead_score": self.rng.randint(0, 100)}
        if event_type == "purchase" and self.rng.random() < 0.05:
            return {"refunded": True}
        return {}

    def _push(self, due: float, event: _Planned) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, event))

    def due(self, now: float) -> Iterator[_Planned]:
        while self._heap and self._heap[0][0] <= now:
            yield heapq.heappop(self._heap)[2]

    def planned(self) -> Iterator[tuple[float, _Planned]]:
        """Everything planned and not sent yet, with its due time, in due order (a virtual clock)."""
        while self._heap:
            due, _, event = heapq.heappop(self._heap)
            yield due, event

    @property
    def waiting(self) -> int:
        return len(self._heap)

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None


def message_key(payload: dict[str, Any]) -> bytes:
    """The key a message is sent with: the id the pipeline routes it by.

    Its anonymous id when it has one (that id's partition decides who the
    event belongs to), else its user id: then the ingest agent passes it
    straight to the journeys instead of through `normalized`.
    """
    return str(payload.get("anonymous_id") or payload["user_id"]).encode()


def _malformed(rng: random.Random) -> bytes:
    event_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    choices: list[bytes] = [
        b"{not json", b"\xff\xfe\x00garbage", b"[]", b'{"user_id": 42}',
        json.dumps({"event_id": event_id, "user_id": "", "ts": 0}).encode(),
    ]
    return rng.choice(choices)


async def run_generator(
    settings: Settings, spec: TrafficSpec, progress: Callable[[str], None] | None = None
) -> GroundTruth:
    """Produce traffic until ``spec.users`` users finished or ``spec.duration`` passed."""
    if not settings.kafka_url:
        raise ValueError("FUNNEL_KAFKA_URL is not set")
    traffic = _Traffic(spec)
    await check_connection(settings)
    producer = AIOKafkaProducer(bootstrap_servers=split_brokers(settings.kafka_url), linger_ms=5,
                                **client_options(settings))
    await producer.start()
    sent = 0
    started = time.monotonic()
    last_report = started
    tick = 0.02
    budget = 0.0
    try:
        while True:
            now = time.monotonic()
            elapsed = now - started
            if spec.duration and elapsed >= spec.duration:
                break
            budget = min(budget + spec.rate * tick, spec.rate)  # at most one second of burst
            batch = list(traffic.due(now))
            while len(batch) < budget and (not spec.users or traffic.started_users < spec.users):
                traffic.start_user(now)
                batch.extend(traffic.due(now))
            for event in batch:
                budget -= 1
                payload = event.payload
                payload["ts"] = int(time.time() * 1000)
                topic = settings.topic(event.event_type)
                body = json.dumps(payload).encode()
                key = message_key(payload)
                await producer.send(topic, body, key=key)
                if event.duplicate:
                    await producer.send(topic, body, key=key)
                if event.malformed is not None:
                    await producer.send(topic, event.malformed)
                traffic.truth.record(event)
                sent += 1 + event.duplicate + (event.malformed is not None)
            if spec.users and traffic.started_users >= spec.users and not traffic.waiting:
                break
            if progress and now - last_report >= 2.0:
                last_report = now
                progress(f"generate: {sent} messages sent, {sent / max(elapsed, 1e-9):.0f}/s, "
                         f"{traffic.started_users} users, {elapsed:.0f}s elapsed")
            await asyncio.sleep(tick)
        await producer.flush()
    finally:
        await producer.stop()
    if progress:
        elapsed = time.monotonic() - started
        progress(f"generate: done, {sent} messages in {elapsed:.1f}s, {traffic.started_users} users")
    return traffic.truth


def print_progress(line: str) -> None:
    """Progress to stderr: rewritten in place on a terminal, one line per report otherwise."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + line)
        if line.startswith("generate: done"):
            sys.stderr.write("\n")
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
