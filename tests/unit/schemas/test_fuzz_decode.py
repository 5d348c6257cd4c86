"""Property-based tests of schemas.Decoder: bad input only ever becomes InvalidEvent.

Each strategy in tests/malformed.py builds messages with exactly one defect,
so the reason is known; arbitrary bytes and JSON may be valid or not, but the
decoder answers InvalidEvent (with a reason from REASONS) or an event the
ingest agent can pass on (serializable, with every normalized key).
"""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from schemas import NORMALIZED_KEYS, REASONS, Decoder, InvalidEvent
from tests.malformed import ANYTHING, MAX_BYTES, STRATEGIES, Malformed, hand_written

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECODER = Decoder({"default"}, max_bytes=MAX_BYTES, email_hash_key=b"fuzz-key")


def reason_of(message: Malformed) -> str:
    with pytest.raises(InvalidEvent) as caught:
        DECODER.decode(message.value, message.event_type, int(time.time() * 1000), "t:0:0")
    assert caught.value.reason in REASONS
    return caught.value.reason


@pytest.mark.parametrize("reason", sorted(STRATEGIES))
def test_each_defect_gets_its_reason(reason: str) -> None:
    @FAST
    @given(STRATEGIES[reason])
    def check(message: Malformed) -> None:
        assert reason_of(message) == reason, message.value

    check()


@pytest.mark.parametrize("message", hand_written(), ids=lambda m: m.reason)
def test_hand_written_cases(message: Malformed) -> None:
    assert reason_of(message) == message.reason


def test_every_reason_has_a_case() -> None:
    assert set(STRATEGIES) | {m.reason for m in hand_written()} == set(REASONS)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANYTHING)
def test_anything_is_an_invalid_event_or_a_usable_one(case: tuple[str, bytes]) -> None:
    event_type, raw = case
    try:
        event = DECODER.decode(raw, event_type, int(time.time() * 1000), "t:0:0")
    except InvalidEvent as exc:
        assert exc.reason in REASONS
        exc.detail.encode()  # the dead-letter header carries it
        return
    # What the ingest agent does with a valid event: key by user, serialize.
    assert tuple(event) == NORMALIZED_KEYS
    event["user_id"].encode()
    assert orjson.loads(orjson.dumps(event)) == event
