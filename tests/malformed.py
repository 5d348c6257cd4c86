"""Malformed funnel messages with the dead-letter reason each must get.

Shared by the decoder fuzz test (tests/unit/schemas/test_fuzz_decode.py) and the
bad-input integration test (tests/integration/test_reliability_bad_input.py).
Every message here has exactly one defect, so its reason is known by
construction: hypothesis strategies per reason (:data:`STRATEGIES`) plus
hand-written cases (:func:`hand_written`), and arbitrary input
(:data:`ANYTHING`) whose only promise is "InvalidEvent or a valid event".
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from schemas import EVENT_TYPES
from schemas.currencies import ISO_4217

__all__ = ["ANYTHING", "STRATEGIES", "Malformed", "corpus", "draw_examples", "hand_written", "valid_event"]

#: A fixed event time in the past (2026-01-31T12:00:00Z): valid for any "now" after it.
TS_MS = 1_769_860_800_000
#: Latest event time datetime accepts (9999-12-31T23:59:59Z), in ms.
MAX_TS_MS = 253_402_300_799_000
MAX_BYTES = 65_536  # the worker's FUNNEL_MAX_MESSAGE_BYTES default
FUNNELS = frozenset({"default"})
_UUID = TypeAdapter(UUID)
_FUNNEL_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")


@dataclass(frozen=True)
class Malformed:
    """One message for the ``event_type`` topic that must be dead-lettered with ``reason``."""

    event_type: str
    value: bytes | None
    reason: str
    key: bytes | None = None


def valid_event(event_type: str, n: int = 0, ts: int = TS_MS) -> dict[str, Any]:
    """A valid event of ``event_type`` (number ``n``: distinct ids)."""
    body: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=n + 1, version=4)), "user_id": f"u-{n}", "ts": ts,
        "channel": "seo", "campaign": "launch", "properties": {"page": "/pricing"},
    }
    if event_type == "purchase":
        body.update(amount="49.90", currency="EUR", order_id=f"o-{n}")
    if event_type == "signup":
        body["email"] = f"person{n}@example.com"
    return body


def _dump(body: Any) -> bytes:
    return json.dumps(body).encode()  # ASCII only (non-ASCII is escaped)


# -- building blocks ----------------------------------------------------------------------
_topics = st.sampled_from(EVENT_TYPES)
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_non_strings = st.integers() | st.floats(allow_nan=False) | st.booleans() | st.lists(_scalars, max_size=3) \
    | st.dictionaries(st.text(max_size=5), _scalars, max_size=3)
_letters = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1,
                   max_size=30)
_long_text = st.integers(min_value=1, max_value=40).map(lambda k: "x" * (128 + k))


def _with(field: str | st.SearchStrategy[str], values: st.SearchStrategy[Any], reason: str,
          topics: st.SearchStrategy[str] = _topics) -> st.SearchStrategy[Malformed]:
    """A valid event whose ``field`` (or one drawn from it) is replaced by one of ``values``."""

    @st.composite
    def build(draw: st.DrawFn) -> Malformed:
        topic = draw(topics)
        body = valid_event(topic, draw(st.integers(0, 10**6)))
        body[field if isinstance(field, str) else draw(field)] = draw(values)
        return Malformed(topic, _dump(body), reason)

    return build()


@st.composite
def _missing(draw: st.DrawFn) -> Malformed:
    topic = draw(_topics)
    body = valid_event(topic, draw(st.integers(0, 10**6)))
    required = ["event_id", "ts"] + (["amount", "currency"] if topic == "purchase" else [])
    del body[draw(st.sampled_from(required))]
    return Malformed(topic, _dump(body), "missing_field")


@st.composite
def _identity_missing(draw: st.DrawFn) -> Malformed:
    """Neither user_id nor anonymous_id: absent or null."""
    topic = draw(_topics)
    body = valid_event(topic, draw(st.integers(0, 10**6)))
    del body["user_id"]
    for field in ("user_id", "anonymous_id"):
        if draw(st.booleans()):
            body[field] = None
    return Malformed(topic, _dump(body), "missing_identity")


@st.composite
def _truncated(draw: st.DrawFn) -> Malformed:
    topic = draw(_topics)
    raw = _dump(valid_event(topic, draw(st.integers(0, 10**6))))
    return Malformed(topic, raw[: draw(st.integers(1, len(raw) - 1))], "not_json")


@st.composite
def _garbage_text(draw: st.DrawFn) -> Malformed:
    text = draw(st.text(min_size=1, max_size=200).filter(lambda t: t.strip() and not _parses(t)))
    return Malformed(draw(_topics), text.encode("utf-8", "surrogatepass"), "not_json")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


@st.composite
def _not_utf8(draw: st.DrawFn) -> Malformed:
    """One byte >= 0x80 inserted into ASCII JSON breaks UTF-8 (alone it starts or continues nothing)."""
    topic = draw(_topics)
    raw = _dump(valid_event(topic, draw(st.integers(0, 10**6))))
    at = draw(st.integers(0, len(raw)))
    bad = bytes([draw(st.integers(0x80, 0xFF))])
    return Malformed(topic, raw[:at] + bad + raw[at:], "not_utf8")


@st.composite
def _not_object(draw: st.DrawFn) -> Malformed:
    value = draw(_json.filter(lambda v: not isinstance(v, dict)))
    return Malformed(draw(_topics), _dump(value), "not_object")


@st.composite
def _too_large(draw: st.DrawFn) -> Malformed:
    topic = draw(_topics)
    body = valid_event(topic, draw(st.integers(0, 10**6)))
    size = draw(st.integers(MAX_BYTES + 1, 4 * MAX_BYTES))
    body["pad"] = ""
    body["pad"] = "p" * (size - len(_dump(body)))
    return Malformed(topic, _dump(body), "too_large")


@st.composite
def _wrong_type(draw: st.DrawFn) -> Malformed:
    topic = draw(_topics)
    body = valid_event(topic, draw(st.integers(0, 10**6)))
    body["event_type"] = draw(st.sampled_from(EVENT_TYPES).filter(lambda t: t != topic) | _json)
    return Malformed(topic, _dump(body), "wrong_event_type")


def _not_uuid(value: Any) -> bool:
    try:
        _UUID.validate_python(value)
    except ValidationError:
        return True
    return False


_now_ms = int(time.time() * 1000)
_purchase = st.just("purchase")

#: reason -> messages that must get exactly that reason.
STRATEGIES: dict[str, st.SearchStrategy[Malformed]] = {
    "too_large": _too_large(),
    "not_utf8": _not_utf8(),
    "not_json": _truncated() | _garbage_text(),
    "not_object": _not_object(),
    "wrong_event_type": _wrong_type(),
    "missing_field": _missing(),
    "invalid_event_id": _with("event_id", (st.text(max_size=40) | _non_strings | st.none()).filter(_not_uuid),
                              "invalid_event_id"),
    "invalid_user_id": _with(st.sampled_from(["user_id", "anonymous_id"]),
                             st.sampled_from(["", " ", "\t\n"]) | _non_strings
                             | st.integers(257, 10_240).map(lambda k: "u" * k), "invalid_user_id"),
    "missing_identity": _identity_missing(),
    "invalid_timestamp": _with("ts", st.integers(-62_135_596_800_000, -1) | _letters | st.booleans()
                               | st.sampled_from([float("nan"), float("inf"), float("-inf"),
                                                  "1969-12-31T23:59:59Z", "2026-01-31T12:00:00",
                                                  "0001-01-01T00:00:00Z"])
                               | st.lists(_scalars, max_size=2) | st.none(), "invalid_timestamp"),
    "future_timestamp": _with("ts", st.integers(_now_ms + 7 * 86_400_000, MAX_TS_MS), "future_timestamp"),
    "invalid_funnel": _with("funnel", (st.text(max_size=70) | _non_strings).filter(
        lambda v: not (isinstance(v, str) and _FUNNEL_NAME.match(v))), "invalid_funnel"),
    "unknown_funnel": _with("funnel", st.from_regex(_FUNNEL_NAME, fullmatch=True).filter(
        lambda v: v not in FUNNELS), "unknown_funnel"),
    "invalid_amount": _with("amount", st.decimals(max_value="-0.0001", places=4, allow_nan=False).map(str)
                            | st.sampled_from(["NaN", "Infinity", "-1", "0.00001", "1" * 19, "abc"])
                            | st.sampled_from([float("nan"), float("inf"), -1.5]) | st.none()
                            | st.lists(_scalars, max_size=2) | _letters, "invalid_amount", _purchase),
    "unknown_currency": _with("currency", st.text(max_size=6).filter(lambda c: c.upper() not in ISO_4217)
                              | _non_strings, "unknown_currency", _purchase),
    "invalid_properties": _with("properties", st.dictionaries(
        st.text(min_size=1, max_size=8), st.lists(_scalars, max_size=3)
        | st.dictionaries(st.text(max_size=5), _json, min_size=1, max_size=3), min_size=1, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=20), st.integers(0, 9), min_size=33, max_size=40)
        | st.lists(_scalars, max_size=3) | st.text(max_size=10) | st.integers()
        | st.builds(lambda k: {"k": "v" * k}, st.integers(257, 2000)), "invalid_properties"),
    "invalid_email": _with("email", st.text(max_size=60).filter(lambda e: "@" not in e) | _non_strings
                           | st.integers(255, 400).map(lambda k: "a" * (k - 12) + "@example.com"),
                           "invalid_email", st.just("signup")),
    "invalid_field": _with("channel", _long_text | _non_strings, "invalid_field"),
}


def hand_written() -> list[Malformed]:
    """The cases the issue names, written out (1 MB payloads included)."""
    v = valid_event("visit", 7)
    p = valid_event("purchase", 8)
    s = valid_event("signup", 9)
    one_mb = 1 << 20
    return [
        Malformed("visit", b"", "empty"),
        Malformed("visit", None, "empty", key=b"u-tombstone"),  # a tombstone needs a key
        Malformed("visit", b"{not json", "not_json"),
        Malformed("visit", _dump(v)[:-1], "not_json"),
        Malformed("visit", b"\xef\xbb\xbf" + _dump(v), "not_json"),  # UTF-8 byte order mark
        Malformed("visit", b"[" * 20_000 + b"]" * 20_000, "not_json"),  # nested too deep to parse
        Malformed("visit", b"\xff\xfe" + _dump(v), "not_utf8"),
        Malformed("visit", "{\"user_id\": \"caf\u00e9\"}".encode("latin-1"), "not_utf8"),
        Malformed("visit", b"null", "not_object"),
        Malformed("visit", b"[]", "not_object"),
        Malformed("signup", b'"a string"', "not_object"),
        Malformed("webinar", _dump({**v, "event_type": "purchase"}), "wrong_event_type"),
        Malformed("visit", _dump({**v, "user_id": ""}), "invalid_user_id"),
        Malformed("visit", _dump({**v, "user_id": "u" * 10_240}), "invalid_user_id"),  # 10 kB
        Malformed("visit", _dump({**v, "user_id": 42}), "invalid_user_id"),
        Malformed("purchase", _dump({**p, "amount": "-5"}), "invalid_amount"),
        Malformed("purchase", _dump({**p, "amount": float("nan")}), "invalid_amount"),  # NaN literal
        Malformed("purchase", _dump({**p, "amount": "NaN"}), "invalid_amount"),
        Malformed("purchase", _dump({**p, "amount": "12.34567"}), "invalid_amount"),
        Malformed("purchase", _dump({**p, "currency": "XYZ"}), "unknown_currency"),
        Malformed("purchase", _dump({**p, "currency": "euro"}), "unknown_currency"),
        Malformed("visit", _dump({**v, "funnel": "no-such-funnel"}), "unknown_funnel"),
        Malformed("visit", _dump({**v, "funnel": "Bad Funnel!"}), "invalid_funnel"),
        Malformed("visit", _dump({**v, "ts": "9999-12-31T23:59:59Z"}), "future_timestamp"),
        Malformed("visit", _dump({**v, "ts": _now_ms + 86_400_000}), "future_timestamp"),
        Malformed("visit", _dump({**v, "ts": "1969-12-31T23:59:59Z"}), "invalid_timestamp"),
        Malformed("visit", _dump({**v, "ts": -1}), "invalid_timestamp"),
        Malformed("visit", _dump({**v, "ts": 10**30}), "invalid_timestamp"),
        Malformed("visit", _dump({**v, "ts": "yesterday"}), "invalid_timestamp"),
        Malformed("visit", _dump({**v, "properties": {"a": {"b": [1, {"c": None}]}}}), "invalid_properties"),
        Malformed("visit", _dump({**v, "properties": {f"k{i}": i for i in range(33)}}), "invalid_properties"),
        Malformed("visit", _dump({**v, "properties": {"big": 2**70}}), "invalid_properties"),
        Malformed("visit", _dump({**v, "properties": {"x": float("inf")}}), "invalid_properties"),
        Malformed("signup", _dump({**s, "email": "not-an-address"}), "invalid_email"),
        Malformed("visit", _dump({**v, "campaign": "c" * 129}), "invalid_field"),
        Malformed("visit", _dump({**v, "channel": ["ads"]}), "invalid_field"),
        # 1 MB payloads: JSON, a giant string field, and raw bytes.
        Malformed("visit", b"{" + b" " * (one_mb - 2) + b"}", "too_large"),
        Malformed("purchase", _dump({**p, "order_id": "o" * one_mb}), "too_large"),
        Malformed("webinar", bytes(range(256)) * (one_mb // 256), "too_large"),
        # A 10 kB key on a valid-looking but unknown-funnel event (the key is kept as is).
        Malformed("visit", _dump({**v, "funnel": "zz"}), "unknown_funnel", key=b"k" * 10_240),
    ]


# Integers around the 64-bit limits (serializers care), and any others.
_edge_ints = st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**30]) | st.integers()

#: Arbitrary input: the decoder must answer InvalidEvent or a valid event, nothing else.
ANYTHING: st.SearchStrategy[tuple[str, bytes]] = st.tuples(
    _topics,
    st.binary(max_size=300)
    | _json.map(_dump)
    | st.builds(lambda topic, n, field, value: _dump({**valid_event(topic, n), field: value}),
                _topics, st.integers(0, 100),
                st.sampled_from(["event_id", "user_id", "ts", "funnel", "channel", "amount", "currency",
                                 "properties", "email", "event_type", "order_id", "manager"]),
                _json | st.floats() | _edge_ints)
    | st.builds(lambda topic, n, props: _dump({**valid_event(topic, n), "properties": props}),
                _topics, st.integers(0, 100),
                st.dictionaries(st.text(min_size=1, max_size=5), _edge_ints | _scalars, max_size=3)),
)


def draw_examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same ones every run (derandomized)."""
    out: list[Any] = []

    @settings(max_examples=count, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out


def corpus(per_reason: int, too_large: int) -> list[Malformed]:
    """Hand-written cases plus ``per_reason`` generated ones per reason (``too_large`` of those)."""
    messages = hand_written()
    for reason, strategy in STRATEGIES.items():
        messages += draw_examples(strategy, too_large if reason == "too_large" else per_reason)
    return messages

