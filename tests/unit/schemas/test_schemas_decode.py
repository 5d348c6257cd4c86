"""schemas.Decoder: every rejection reason, and what valid events become."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from schemas import NORMALIZED_KEYS, REASONS, Decoder, InvalidEvent, hash_email

EVENT_ID = "5b0d7c1e-8f3a-4c55-9d2e-1a2b3c4d5e6f"
TS_ISO = "2026-01-31T12:00:00Z"
TS_MS = 1_769_860_800_000
NOW_MS = TS_MS + 60_000
KEY = b"test-hash-key"
DROP = object()  # a field value meaning "leave the field out"

BASE: dict[str, Any] = {"event_id": EVENT_ID, "user_id": "u1", "ts": TS_ISO}
PURCHASE: dict[str, Any] = {**BASE, "amount": "19.90", "currency": "EUR"}


def raw(base: dict[str, Any] = BASE, **changes: Any) -> bytes:
    """JSON bytes of ``base`` with ``changes`` applied (``DROP`` removes a field)."""
    data = {**base, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not DROP}).encode()


@pytest.fixture
def decoder() -> Decoder:
    return Decoder({"default", "b2b"}, email_hash_key=KEY)


def decode(decoder: Decoder, data: bytes | None, event_type: str = "visit") -> dict[str, Any]:
    return dict(decoder.decode(data, event_type, NOW_MS, source="funnel.visit:0:7"))


def case(reason: str, data: bytes | None, event_type: str = "visit", *, id: str) -> Any:
    return pytest.param(reason, event_type, data, id=f"{reason}-{id}")


REJECTIONS = [
    case("empty", b"", id="no-bytes"),
    case("empty", None, id="tombstone"),
    case("too_large", b'{"user_id": "' + b"x" * 70_000 + b'"}', id="70kB"),
    case("not_utf8", b'{"user_id": "\xff\xfe"}', id="latin1-bytes"),
    case("not_json", b'{"event_id": ', id="truncated"),
    case("not_json", b"visit,u1,2026-01-31", id="csv"),
    case("not_object", b'[{"event_id": "x"}]', id="array"),
    case("not_object", b'"visit"', id="string"),
    case("wrong_event_type", raw(event_type="signup"), id="signup-on-visit-topic"),
    case("wrong_event_type", raw(event_type=None), id="null"),
    case("missing_field", raw(event_id=DROP), id="event_id"),
    case("missing_field", raw(ts=DROP), id="ts"),
    case("missing_field", raw(PURCHASE, currency=DROP), "purchase", id="currency"),
    case("invalid_event_id", raw(event_id="not-a-uuid"), id="garbage"),
    case("invalid_event_id", raw(event_id=12345), id="number"),
    case("invalid_user_id", raw(user_id=""), id="empty"),
    case("invalid_user_id", raw(user_id="   "), id="blank"),
    case("invalid_user_id", raw(user_id="u" * 10_000), id="10kB"),
    case("invalid_user_id", raw(user_id=42), id="number"),
    case("invalid_user_id", raw(anonymous_id=""), id="anonymous-empty"),
    case("invalid_user_id", raw(anonymous_id=["a"]), id="anonymous-list"),
    case("missing_identity", raw(user_id=DROP), id="neither"),
    case("missing_identity", raw(user_id=None, anonymous_id=None), id="both-null"),
    case("invalid_timestamp", raw(ts="2026-01-31T12:00:00"), id="naive-iso"),
    case("invalid_timestamp", raw(ts="1969-12-31T23:59:59Z"), id="pre-1970-iso"),
    case("invalid_timestamp", raw(ts=-1), id="pre-1970-epoch"),
    case("invalid_timestamp", raw(BASE, ts=float("nan")), id="NaN"),
    case("invalid_timestamp", raw(BASE, ts=float("inf")), id="Infinity"),
    case("invalid_timestamp", raw(ts=True), id="bool"),
    case("invalid_timestamp", raw(ts="yesterday"), id="words"),
    case("invalid_timestamp", raw(ts=1e300), id="epoch-out-of-range"),
    case("invalid_timestamp", raw(ts="0001-01-01T00:30:00+01:00"), id="before-year-1-in-utc"),
    case("invalid_timestamp", raw(ts="9999-12-31T23:59:59-01:00"), id="after-year-9999-in-utc"),
    case("future_timestamp", raw(ts=NOW_MS + 300_001), id="just-past-limit"),
    case("future_timestamp", raw(ts="2099-01-01T00:00:00Z"), id="2099"),
    case("invalid_funnel", raw(funnel="Sales Funnel!"), id="bad-pattern"),
    case("invalid_funnel", raw(funnel=""), id="empty"),
    case("unknown_funnel", raw(funnel="webinar-2027"), id="not-configured"),
    case("invalid_amount", raw(PURCHASE, amount=-1), "purchase", id="negative"),
    case("invalid_amount", raw(PURCHASE, amount=float("nan")), "purchase", id="NaN"),
    case("invalid_amount", raw(PURCHASE, amount="NaN"), "purchase", id="NaN-string"),
    case("invalid_amount", raw(PURCHASE, amount="12 EUR"), "purchase", id="garbage"),
    case("invalid_amount", raw(PURCHASE, amount="1" * 19), "purchase", id="19-digits"),
    case("unknown_currency", raw(PURCHASE, currency="XYZ"), "purchase", id="not-iso-4217"),
    case("unknown_currency", raw(PURCHASE, currency="US"), "purchase", id="two-letters"),
    case("invalid_properties", raw(properties={"cart": {"items": 2}}), id="nested-dict"),
    case("invalid_properties", raw(properties={"tags": ["a"]}), id="list-value"),
    case("invalid_properties", raw(properties={f"k{i}": i for i in range(33)}), id="33-keys"),
    case("invalid_properties", raw(properties={"utm": "x" * 257}), id="257-char-value"),
    case("invalid_properties", raw(properties={"k" * 65: 1}), id="65-char-key"),
    case("invalid_properties", raw(properties="utm=ads"), id="not-a-mapping"),
    case("invalid_email", raw(email="not-an-email"), "signup", id="no-at"),
    case("invalid_email", raw(email="a@b"), "signup", id="no-domain-dot"),
    case("invalid_field", raw(channel="c" * 129), id="channel-too-long"),
    case("invalid_field", raw(campaign=7), id="campaign-not-a-string"),
]


@pytest.mark.parametrize(("reason", "event_type", "data"), REJECTIONS)
def test_rejection_reason(decoder: Decoder, reason: str, event_type: str, data: bytes | None) -> None:
    with pytest.raises(InvalidEvent) as caught:
        decode(decoder, data, event_type)
    assert caught.value.reason == reason, caught.value.detail
    assert caught.value.detail


def test_every_reason_has_a_case() -> None:
    covered = {param.values[0] for param in REJECTIONS}
    assert covered == set(REASONS)


def test_size_limit_is_configurable() -> None:
    small = Decoder({"default"}, max_bytes=len(raw()) - 1)
    with pytest.raises(InvalidEvent) as caught:
        small.decode(raw(), "visit", NOW_MS)
    assert caught.value.reason == "too_large"


def test_future_limit_is_inclusive(decoder: Decoder) -> None:
    assert decode(decoder, raw(ts=NOW_MS + 300_000))["ts"] == NOW_MS + 300_000


def test_valid_visit_is_normalized_completely(decoder: Decoder) -> None:
    data = raw(user_id="  u1 ", channel="Ads", campaign="", region="eu",
               properties={"utm": "spring", "n": 2, "x": 1.5, "ok": True, "none": None})
    assert decode(decoder, data) == {
        "event_id": EVENT_ID, "event_type": "visit", "funnel": None, "user_id": "u1",
        "anonymous_id": None, "person_id": "u1", "ts": TS_MS, "received_at": NOW_MS, "channel": "Ads",
        "campaign": None, "product": None,
        "region": "eu", "manager": None, "amount": None, "currency": None, "order_id": None,
        "email_hash": None, "properties": {"utm": "spring", "n": 2, "x": 1.5, "ok": True, "none": None},
        "source": "funnel.visit:0:7",
    }
    assert tuple(decode(decoder, data)) == NORMALIZED_KEYS


@pytest.mark.parametrize(
    ("ids", "person"),
    [
        pytest.param({"user_id": "u1"}, "u1", id="user-only"),
        pytest.param({"user_id": DROP, "anonymous_id": " a1 "}, None, id="anonymous-only"),
        pytest.param({"user_id": None, "anonymous_id": "a1"}, None, id="user-null"),
        pytest.param({"anonymous_id": "a1"}, None, id="both-link"),
    ],
)
def test_identity_fields(decoder: Decoder, ids: dict[str, Any], person: str | None) -> None:
    """The person is known at decode only without an anonymous id; ids are stripped like user_id."""
    for event in (decode(decoder, raw(**ids)),
                  decoder.decode_batch([raw(**ids)], "visit", NOW_MS, ["s"])[0]):
        assert isinstance(event, dict)
        sent_user = ids.get("user_id", "u1")
        assert event["user_id"] == (None if sent_user is DROP else sent_user)
        assert event["anonymous_id"] == (ids["anonymous_id"].strip() if "anonymous_id" in ids else None)
        assert event["person_id"] == person


@pytest.mark.parametrize(
    ("ts", "expected_ms"),
    [
        pytest.param("2026-01-31T12:00:00Z", TS_MS, id="iso-Z"),
        pytest.param("2026-01-31T14:00:00+02:00", TS_MS, id="iso-plus-offset"),
        pytest.param("2026-01-31T07:00:00-05:00", TS_MS, id="iso-minus-offset"),
        pytest.param("2026-01-31T12:00:00.123Z", TS_MS + 123, id="iso-millis"),
        pytest.param(TS_MS + 123, TS_MS + 123, id="epoch-ms-int"),
        pytest.param(TS_MS + 123.0, TS_MS + 123, id="epoch-ms-float"),
        pytest.param(0, 0, id="epoch-zero"),
        # Times where float arithmetic (timestamp() * 1000) lost a millisecond.
        pytest.param("2004-06-30T12:59:19.396Z", 1_088_600_359_396, id="iso-float-trap"),
        pytest.param(1_088_600_359_396, 1_088_600_359_396, id="epoch-float-trap"),
        pytest.param(135_828_052_390, 135_828_052_390, id="epoch-float-trap-1974"),
    ],
)
def test_timestamp_forms(decoder: Decoder, ts: Any, expected_ms: int) -> None:
    assert decode(decoder, raw(ts=ts))["ts"] == expected_ms


def test_email_is_hashed_with_the_key_and_never_kept(decoder: Decoder) -> None:
    out = decode(decoder, raw(email=" Alice@Example.COM "), "signup")
    expected = hmac.new(KEY, b"alice@example.com", hashlib.sha256).hexdigest()
    assert out["email_hash"] == expected
    assert "alice" not in json.dumps(out).lower()
    assert "email" not in out


def test_email_is_dropped_without_a_key() -> None:
    out = Decoder({"default"}).decode(raw(email="alice@example.com"), "signup", NOW_MS)
    assert out["email_hash"] is None
    assert "alice" not in json.dumps(out)


def test_hash_email_is_keyed_and_normalizes_case() -> None:
    one = hash_email("Bob@Example.com", b"k1")
    assert one == hash_email(" bob@example.com\n", b"k1")
    assert one != hash_email("bob@example.com", b"k2")
    assert len(one) == 64


def test_purchase_keeps_amount_and_upper_cases_currency(decoder: Decoder) -> None:
    out = decode(decoder, raw(PURCHASE, amount="19.90", currency="usd", order_id="o-1"), "purchase")
    assert (out["amount"], out["currency"], out["order_id"]) == ("19.90", "USD", "o-1")


def test_purchase_amount_as_json_number(decoder: Decoder) -> None:
    assert decode(decoder, raw(PURCHASE, amount=0), "purchase")["amount"] == "0"


def test_event_type_and_funnel_may_be_omitted(decoder: Decoder) -> None:
    out = decode(decoder, raw(event_type=DROP), "webinar")
    # No funnel: the event counts for every configured funnel that has its stage.
    assert (out["event_type"], out["funnel"]) == ("webinar", None)


def test_configured_second_funnel_is_accepted(decoder: Decoder) -> None:
    assert decode(decoder, raw(funnel="b2b"), "consultation")["funnel"] == "b2b"


def test_unknown_fields_are_ignored(decoder: Decoder) -> None:
    assert "ip" not in decode(decoder, raw(ip="10.0.0.1"))


def _json_only_load(decoder: Decoder, data: bytes) -> Any:
    """What ``Decoder._load`` gives with json alone (the fast path switched off)."""
    from schemas import decode as module

    fast, module._fast_loads = module._fast_loads, None
    try:
        return decoder._load(data)
    except InvalidEvent as exc:
        return exc.reason
    finally:
        module._fast_loads = fast


@pytest.mark.parametrize("data", [
    b'{"user_id": "u1", "n": NaN}', b'{"n": Infinity}', b'{"n": -Infinity}', b'{"n": 1e400}',
    b'{"n": 123456789012345678901234567890}', b'{"n": -9223372036854775809}',
    b'{"n": 18446744073709551616}', b'{"n": 9223372036854775807}', b'{"n": 0.1234567890123456789}',
    b'{"s": "\\ud800"}', b'{"s": "x\x01y"}', b'\xef\xbb\xbf{"a": 1}', b'{"a": 1, "a": 2}',
    b'[' * 3000 + b']' * 3000, b'{"a": 1}\x00', b' {"a": -0.0} ', b'null', b'{"s": "\\u00e9\xc3\xa9"}',
    b'{"user_id": "\xff"}', raw(PURCHASE, amount=1e-7, properties={"big": 2**70, "f": 1.5}),
])
def test_fast_json_path_gives_what_json_gives(decoder: Decoder, data: bytes) -> None:
    """orjson (when installed) is only a faster json: same objects, same reasons."""
    def load() -> Any:
        try:
            return decoder._load(data)
        except InvalidEvent as exc:
            return exc.reason

    fast, slow = load(), _json_only_load(decoder, data)
    assert repr(fast) == repr(slow)  # repr: NaN == NaN, and 1 vs 1.0 differ
