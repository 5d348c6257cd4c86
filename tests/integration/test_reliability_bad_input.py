"""Reliability (issue 4): bad input mixed into valid traffic.

Over 10 000 malformed messages (hypothesis-generated per reason, plus the
hand-written cases the issue names: 1 MB payloads, non-UTF-8, NaN amounts,
10 kB user ids, ...) are interleaved with valid events on the five topics.
Every malformed one reaches the dead-letter topic with its reason header and
is counted by reason, every valid one is counted and stored, and the worker
process never restarts or logs an agent crash.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from tests.malformed import Malformed, corpus, valid_event

from .harness import (
    Worker,
    assert_never_crashed,
    bootstrap_of,
    consume_all,
    produce,
    wait_until,
)

pytestmark = pytest.mark.integration

PER_REASON = 630  # x 16 generated reasons, plus hand-written cases: > 10 000
TOO_LARGE = 20  # generated 64-256 kB messages (the hand-written ones add three of 1 MB)
VALID = 2_000
VALID_TYPES = ("visit", "signup", "webinar", "purchase")
#: Dead-letter records keep the original bytes up to this size (key + value + headers
#: must stay under the producer's 1 000 000-byte request limit).
DEAD_LETTER_MAX_BYTES = 900_000


def dead_letter_value(message: Malformed) -> tuple[bytes, bytes | None]:
    """(value, truncated header) the dead-letter record must carry for ``message``.

    The original bytes; beyond DEAD_LETTER_MAX_BYTES they are cut, the real size
    in a ``truncated`` header (a dead-letter record must not be refused for the
    very size it is dead-lettered for).
    """
    raw = message.value or b""
    if len(raw) > DEAD_LETTER_MAX_BYTES:
        return raw[:DEAD_LETTER_MAX_BYTES], str(len(raw)).encode()
    return raw, None


def test_malformed_messages_are_dead_lettered_valid_ones_counted(worker: Worker) -> None:
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    started = time.monotonic()
    bad = corpus(PER_REASON, TOO_LARGE)
    assert len(bad) >= 10_000
    built = time.monotonic() - started
    now = int(time.time() * 1000)
    messages = [(f"{prefix}{m.event_type}", m.key, m.value) for m in bad]
    for n in range(VALID):
        event_type = VALID_TYPES[n % len(VALID_TYPES)]
        body = valid_event(event_type, 10_000_000 + n, ts=now - 60_000)
        messages.append((f"{prefix}{event_type}", body["user_id"].encode(), json.dumps(body).encode()))
    random.Random(44).shuffle(messages)
    produce(bootstrap_of(worker.env), messages, max_request_size=4 << 20)

    expected = Counter(m.reason for m in bad)
    wait_until(lambda: worker.metric_sum("funnel_invalid_events_total") >= len(bad)
               and worker.metric_sum("funnel_events_total") >= VALID, 240, "every message consumed")
    elapsed = time.monotonic() - started
    invalid = {r: int(worker.metric_sum("funnel_invalid_events_total", reason=r)) for r in expected}
    assert invalid == dict(expected)
    assert worker.metric_sum("funnel_invalid_events_total") == len(bad)
    assert worker.metric_sum("funnel_events_total") == VALID
    wait_until(lambda: worker.scalar("SELECT count() FROM funnel.events FINAL") == VALID, 60,
               "every valid event stored")
    assert dict(worker.sql("SELECT event_type, count() FROM funnel.events FINAL GROUP BY event_type")) \
        == {t: VALID // len(VALID_TYPES) for t in VALID_TYPES}

    records = consume_all(bootstrap_of(worker.env), f"{prefix}dead-letter", len(bad), timeout=120)
    got = Counter()
    for record in records:
        headers = dict(record.headers)
        assert {"reason", "detail", "source"} <= headers.keys()
        assert headers["source"].decode().startswith(prefix)
        got[(headers["reason"].decode(), record.key, record.value, headers.get("truncated"))] += 1
    assert got == Counter((m.reason, m.key, *dead_letter_value(m)) for m in bad)
    assert_never_crashed(worker)
    print(f"bad input: {len(bad)} malformed (built in {built:.1f}s) + {VALID} valid, "
          f"all accounted for in {elapsed:.1f}s")

