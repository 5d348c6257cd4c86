"""schemas.Decoder.decode_batch: exactly what decode gives, record by record.

decode_batch is a fast path for whole batches. Its one promise is to be
indistinguishable from calling decode on each record: the same dict (same
keys in the same order, same values of the same types) or the same
InvalidEvent (reason and detail). These tests compare both on generated
messages, valid and not, on the generator's realistic traffic, and on mixed
batches, and check that the fast path is really taken for valid traffic.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import field_validator

import schemas.decode as decode_module
from schemas import EVENT_MODELS, EVENT_TYPES, Decoder, InvalidEvent, NormalizedEvent
from schemas.currencies import ISO_4217
from schemas.events import VisitEvent
from streams.bench.traffic import realistic_traffic
from tests.malformed import ANYTHING, STRATEGIES, Malformed, hand_written

TS_MS = 1_769_860_800_000  # 2026-01-31T12:00:00Z
NOW_MS = TS_MS + 60_000
KEY = b"test-hash-key"
EVENT_ID = "5b0d7c1e-8f3a-4c55-9d2e-1a2b3c4d5e6f"

DECODERS = {
    "keyed": Decoder({"default", "b2b"}, email_hash_key=KEY),
    "unkeyed": Decoder({"default"}),
    "small": Decoder({"default"}, max_bytes=400, max_future_seconds=0, email_hash_key=KEY),
}
SLOW = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
QUICK = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


# -- comparing ------------------------------------------------------------------------------
def fingerprint(value: Any) -> Any:
    """``value`` with every type spelled out: 1, 1.0 and True differ, and so does key order."""
    if isinstance(value, dict):
        return ("dict", tuple((fingerprint(k), fingerprint(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(fingerprint(v) for v in value))
    if isinstance(value, InvalidEvent):
        return ("InvalidEvent", value.reason, value.detail)
    return (type(value).__qualname__, repr(value))


def one_by_one(decoder: Decoder, values: Sequence[bytes | None], event_type: str, now_ms: int,
               sources: Sequence[str]) -> list[Any]:
    """What decode says of each value: the event, the InvalidEvent, or any other exception."""
    out: list[Any] = []
    for raw, source in zip(values, sources, strict=True):
        try:
            out.append(decoder.decode(raw, event_type, now_ms, source))
        except InvalidEvent as exc:
            out.append(exc)
        except Exception as exc:
            out.append(("raised", type(exc)))
    return out


def assert_same(decoder: Decoder, values: Sequence[bytes | None], event_type: str,
                now_ms: int = NOW_MS, sources: Sequence[str] | None = None) -> list[Any]:
    """decode_batch gives, for every value, exactly what decode gives; returns that."""
    sources = sources if sources is not None else [f"funnel.{event_type}:0:{i}" for i in range(len(values))]
    expected = one_by_one(decoder, values, event_type, now_ms, sources)
    crashes = {item[1] for item in expected if isinstance(item, tuple)}
    if crashes:  # decode raised something else than InvalidEvent: so does decode_batch
        with pytest.raises(tuple(crashes)):
            decoder.decode_batch(values, event_type, now_ms, sources)
        return expected
    got = decoder.decode_batch(values, event_type, now_ms, sources)
    assert isinstance(got, list)
    assert len(got) == len(values)
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert fingerprint(have) == fingerprint(want), (i, values[i])
        if isinstance(want, InvalidEvent):
            assert type(have) is InvalidEvent
    return got


# -- generated events -----------------------------------------------------------------------
DROP = object()  # leave the field out

_uuids = st.builds(lambda n: uuid.UUID(int=n), st.integers(0, 2**128 - 1))
_event_ids = st.one_of(
    _uuids.map(str),
    _uuids.map(str),
    _uuids.map(lambda u: str(u).upper()),
    _uuids.map(lambda u: u.hex),
    _uuids.map(lambda u: "{" + str(u) + "}"),
    _uuids.map(lambda u: u.urn),
    _uuids.map(lambda u: f" {u} "),
    _uuids.map(lambda u: str(u)[:-1]),
    st.text(max_size=40),
    st.integers(),
    st.none(),
)
_space = st.sampled_from(["", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\x1c"])
_short_text = st.text(max_size=12)
_padded = st.builds(lambda a, s, b: a + s + b, _space, _short_text, _space)
_sized = st.builds(lambda n, c: c * n, st.integers(120, 260), st.sampled_from(["x", "é", "\U0001f600"]))
_strings = _padded | _sized | st.sampled_from(["", " ", "Ads", "ads", "e-mail", "b2b"])
_non_strings = st.integers(-5, 5) | st.floats(allow_nan=True) | st.booleans() \
    | st.lists(st.integers(), max_size=2)
_dimensions = _strings | st.none() | _non_strings
_edge_ints = st.sampled_from([0, 1, -1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
                              2**64, 10**19, 10**30]) | st.integers()


def _iso(moment: datetime, zone: str, digits: int, sep: str) -> str:
    text = moment.strftime(f"%Y-%m-%d{sep}%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[:digits]
    return text + zone


_EPOCH = datetime(1970, 1, 1)
_moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)) | st.datetimes(
    min_value=datetime(1969, 12, 31), max_value=datetime(2026, 2, 1))
_zones = st.sampled_from(["Z", "z", "+00:00", "+02:00", "-05:30", "+14:00", "-23:59", "", "+0100", "UTC",
                          " Z"])
_iso_strings = st.builds(_iso, _moments, _zones, st.integers(0, 9), st.sampled_from(["T", " ", "t"]))
_epoch_ms = st.integers(-10**4, 2**31 * 1000 + 10**6) | st.integers(TS_MS - 10**9, NOW_MS + 400_000) \
    | st.sampled_from([0, 2**31 * 1000 - 1, 2**31 * 1000, 1_088_600_359_396, 135_828_052_390,
                       NOW_MS + 300_000, NOW_MS + 300_001, 253_402_300_799_000, 253_402_300_800_000])
_timestamps = st.one_of(
    _epoch_ms,
    _epoch_ms.map(float),
    st.builds(lambda ms, f: ms + f, _epoch_ms, st.sampled_from([0.5, 0.4995, 0.9996, 0.0004, 0.25, -0.5])),
    _iso_strings,
    _epoch_ms.map(str),
    st.integers(0, 2_000_000_000).map(str),
    st.sampled_from(["2026-01-31", "2026-01-31T12:00", "yesterday", "", "2026-13-01T00:00:00Z",
                     "2026-01-31T12:00:00.123456789Z", "2026-01-31T24:00:00Z", "1969-12-31T23:59:59.999Z",
                     "9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59Z"]),
    _edge_ints,
    st.floats(),
    st.booleans(),
    st.none(),
)
_property_values = (st.text(max_size=8) | _sized | _edge_ints | st.floats() | st.booleans() | st.none()
                    | st.lists(st.integers(), max_size=2)
                    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_properties = st.one_of(
    st.dictionaries(st.text(max_size=4) | st.integers(60, 70).map(lambda n: "k" * n),
                    _property_values, max_size=4),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 9), min_size=30, max_size=34),
    st.none(), st.text(max_size=5), st.lists(st.integers(), max_size=2), st.integers(),
)
_emails = st.one_of(
    st.builds(lambda a, b, s1, s2: f"{s1}{a}@{b}.com{s2}", st.text("abcXYZ.+_-", min_size=1, max_size=10),
              st.text("abcdefg-", min_size=1, max_size=10), _space, _space),
    st.sampled_from(["Person@Example.COM", "a@b", "a@b.c", "not-an-email", "", " ", "a@@b.co", "a b@c.de",
                     "x@y.z\n", "İ@ex.com", "a" * 64 + "@example.com", "a" * 65 + "@example.com",
                     "a" * 240 + "@example.com"]),
    st.text(max_size=20), st.none(), _non_strings,
)
_amounts = st.one_of(
    st.decimals(allow_nan=False, places=4, min_value=-10, max_value=10**14).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["49.90", "0", "0.0000", "0.00001", "1.00000", "007", "1e3", "1E-2", " 5 ", "-0", "+5",
                     "NaN", "Infinity", "1" * 18, "1" * 19, "12345678901234.5678", "1_000", ""]),
    st.integers(-5, 10**20), st.floats(), st.booleans(), st.none(), st.lists(st.integers(), max_size=1),
)
_currencies = st.sampled_from(sorted(ISO_4217)) | st.sampled_from(sorted(ISO_4217)).map(str.lower) \
    | st.sampled_from(["XYZ", "US", "EURO", "eUr", " EU", "", "\u0131" * 3, "ß" * 3]) | st.text(max_size=4) \
    | _non_strings | st.none()


#: Valid values of each field, in the forms producers send (what the fast path must take as is).
_VALID: dict[str, st.SearchStrategy[Any]] = {
    "event_id": _uuids.map(str),
    "user_id": st.builds(lambda a, n, b: f"{a}u-{n}{b}", _space, st.integers(0, 10**6), _space)
    | st.text(min_size=1, max_size=20).filter(str.strip),
    "ts": st.integers(TS_MS - 10**8, NOW_MS) | st.integers(0, TS_MS)
    | st.builds(lambda ms, zone, digits: _iso(_EPOCH + timedelta(milliseconds=ms), zone, digits, "T"),
                st.integers(0, NOW_MS), st.sampled_from(["Z", "+00:00", "+02:00", "-05:30"]),
                st.integers(0, 9)),
    "funnel": st.sampled_from([DROP, None, "default", "b2b"]),
    "channel": st.sampled_from([DROP, None, "", " ", "ads", " Ads ", "e-mail"]) | st.text(max_size=10),
    "properties": st.dictionaries(st.text(min_size=1, max_size=8),
                                  st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1)
                                  | st.floats(allow_nan=False, allow_infinity=False)
                                  | st.booleans() | st.none(),
                                  max_size=5) | st.just(DROP),
    "email": st.sampled_from([DROP, None, "Person@Example.com", " a.b+c@mail.example.org ", "x@y.io"]),
    "amount": st.decimals(allow_nan=False, places=4, min_value=0, max_value=10**13).map(str)
    | st.decimals(allow_nan=False, places=2, min_value=0, max_value=10**6).map(float)
    | st.integers(0, 10**10) | st.sampled_from(["49.90", "0", "0.0000", "1.5000", "19"]),
    "currency": st.sampled_from(sorted(ISO_4217)) | st.sampled_from(sorted(ISO_4217)).map(str.lower),
    "order_id": st.sampled_from([DROP, None, "", "o-1", " o-2 "]),
}
for _name in ("campaign", "product", "region", "manager"):
    _VALID[_name] = _VALID["channel"]

#: Values that are often wrong (and sometimes right) for each field; DROP leaves it out.
_DEFECTS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": _event_ids | st.just(DROP),
    "user_id": _strings | _non_strings | st.none() | st.just(DROP),
    "ts": _timestamps | st.just(DROP),
    "funnel": st.sampled_from(["zz", "Bad Funnel", "", "-x", "default\n", "a" * 65]) | _non_strings,
    "channel": _dimensions,
    "properties": _properties,
    "email": _emails,
    "amount": _amounts | st.just(DROP),
    "currency": _currencies | st.just(DROP),
    "order_id": _dimensions,
    "event_type": st.sampled_from(EVENT_TYPES) | st.none() | _non_strings,
}
for _name in ("campaign", "product", "region", "manager"):
    _DEFECTS[_name] = _DEFECTS["channel"]


@st.composite
def bodies(draw: st.DrawFn, event_type: str) -> dict[str, Any]:
    """A JSON object for ``event_type``'s topic: valid, or with one defect or a few."""
    names = ["event_id", "user_id", "ts", "funnel", "channel", "campaign", "product", "region", "manager",
             "properties"]
    if event_type == "signup" or draw(st.integers(0, 3)) == 0:
        names.append("email")
    if event_type == "purchase" or draw(st.integers(0, 3)) == 0:
        names += ["amount", "currency", "order_id"]
    defects = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2, 3]))
    broken = set(draw(st.lists(st.sampled_from([*names, "event_type"]), min_size=defects, max_size=defects)))
    fields = {name: draw(_DEFECTS[name] if name in broken else _VALID[name]) for name in names}
    if "event_type" in broken:
        fields["event_type"] = draw(_DEFECTS["event_type"])
    elif draw(st.booleans()):
        fields["event_type"] = event_type
    if draw(st.integers(0, 3)) == 0:
        fields[draw(st.text(max_size=6))] = draw(_property_values)  # an extra key
    order = draw(st.permutations(sorted(fields)))
    return {name: fields[name] for name in order if fields[name] is not DROP}


def _json_bytes(body: dict[str, Any], style: str) -> bytes:
    if style == "compact":
        return json.dumps(body, separators=(",", ":")).encode()
    if style == "unicode":  # raw UTF-8; a lone surrogate becomes bytes that are not UTF-8
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "indent":
        return json.dumps(body, indent=2).encode()
    return json.dumps(body).encode()


@st.composite
def messages(draw: st.DrawFn, event_type: str) -> bytes | None:
    """Bytes of a generated body, sometimes mangled: duplicate keys, NaN, truncation, bad bytes..."""
    body = draw(bodies(event_type))
    raw = _json_bytes(body, draw(st.sampled_from(["plain", "compact", "unicode", "indent"])))
    mangle = draw(st.sampled_from(["none"] * 20 + ["dup-first", "dup-last", "truncate", "byte", "nan",
                                                   "bom", "empty", "none-value", "array", "pad"]))
    if mangle in ("dup-first", "dup-last"):
        name = draw(st.sampled_from(["event_id", "user_id", "ts", "funnel", "channel", "properties",
                                     "event_type", "email", "amount", "currency"]))
        value = draw(st.sampled_from([None, 1, "x", "", True, 1.5, "default", TS_MS, "2026-01-31T12:00:00Z",
                                      EVENT_ID, "EUR", "49.90", "visit", "purchase"]))
        pair = json.dumps({name: value}).encode()[1:-1]
        if mangle == "dup-first":
            raw = b"{" + pair + (b", " + raw[1:] if raw.strip() != b"{}" else b"}")
        else:
            raw = raw.rstrip()[:-1] + (b", " if body else b"") + pair + b"}"
    elif mangle == "truncate":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif mangle == "byte":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + bytes([draw(st.integers(0x80, 0xFF))]) + raw[at:]
    elif mangle == "nan":
        raw = raw.replace(b'"ts": ', b'"ts": NaN, "x": ', 1).replace(b'"n": 2', b'"n": Infinity', 1)
    elif mangle == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif mangle == "empty":
        return draw(st.sampled_from([b"", None, b" ", b"\n"]))
    elif mangle == "none-value":
        raw = draw(st.sampled_from([b"null", b"1", b'"visit"', b"[]", b"{}", b"[" + raw + b"]"]))
    elif mangle == "array":
        raw = b"[" + raw + b"]"
    elif mangle == "pad":
        raw = raw.rstrip()[:-1] + b', "pad": "' + b"p" * draw(st.integers(0, 500)) + b'"}'
    return raw


_decoders = st.sampled_from(sorted(DECODERS))


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_generated_messages_decode_as_decode_does(event_type: str) -> None:
    @SLOW
    @given(st.lists(messages(event_type), min_size=1, max_size=6), _decoders,
           st.integers(TS_MS - 10**6, NOW_MS + 10**6))
    def check(values: list[bytes | None], decoder: str, now_ms: int) -> None:
        assert_same(DECODERS[decoder], values, event_type, now_ms)

    check()


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_single_generated_message(event_type: str) -> None:
    @QUICK
    @given(messages(event_type), _decoders)
    @example(b'{"event_id": "%s", "user_id": 42, "ts": 1}' % EVENT_ID.encode(), "keyed")
    @example(b'{"event_id": "%s", "user_id": "u", "ts": "0001-01-01T00:30:00+01:00"}' % EVENT_ID.encode(),
             "keyed")
    def check(raw: bytes | None, decoder: str) -> None:
        assert_same(DECODERS[decoder], [raw], event_type)

    check()


@QUICK
@given(ANYTHING)
def test_arbitrary_input_decodes_as_decode_does(case: tuple[str, bytes]) -> None:
    event_type, raw = case
    assert_same(DECODERS["keyed"], [raw], event_type)


@pytest.mark.parametrize("reason", sorted(STRATEGIES))
def test_each_known_defect_decodes_as_decode_does(reason: str) -> None:
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[reason])
    def check(message: Malformed) -> None:
        got = assert_same(DECODERS["keyed"], [message.value], message.event_type, int(time.time() * 1000))
        assert isinstance(got[0], InvalidEvent)

    check()


def test_hand_written_defects_decode_as_decode_does() -> None:
    by_type: dict[str, list[bytes | None]] = defaultdict(list)
    for message in hand_written():
        by_type[message.event_type].append(message.value)
    for event_type, values in by_type.items():
        decoder = Decoder({"default"}, email_hash_key=KEY)
        got = assert_same(decoder, values, event_type, int(time.time() * 1000))
        assert all(isinstance(item, InvalidEvent) for item in got)


# -- realistic traffic ----------------------------------------------------------------------
def _traffic(events: int) -> dict[str, list[bytes]]:
    messages, _ = realistic_traffic(events, seed=1)
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for message in messages:
        by_type[message.event_type].append(message.value(TS_MS + message.offset_ms))
    return by_type


def test_realistic_traffic_decodes_as_decode_does_and_takes_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    by_type = _traffic(2000)
    assert {"visit", "signup"} <= set(by_type)
    calls: list[Any] = []
    for name, decoder in DECODERS.items():
        if name == "small":
            continue
        for event_type, values in by_type.items():
            now_ms = TS_MS + 10**7
            got = assert_same(decoder, list(values), event_type, now_ms)
            assert not any(isinstance(item, InvalidEvent) for item in got)
            # No record needed the exact path.
            calls.clear()
            monkeypatch.setattr(Decoder, "decode", lambda *args: calls.append(args))
            decoder.decode_batch(values, event_type, now_ms, [""] * len(values))
            monkeypatch.undo()
            assert calls == []


def test_realistic_purchases_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [json.dumps({"event_id": str(uuid.UUID(int=n)), "user_id": f"u-{n}", "channel": "ads",
                          "amount": amount, "currency": currency, "order_id": f"o-{n}",
                          "ts": TS_MS + n}).encode()
              for n, (amount, currency) in enumerate([("49.90", "EUR"), ("0", "usd"), (19, "GBP"),
                                                      ("12345678901234.5678", "JPY")])]
    assert_same(DECODERS["keyed"], values, "purchase")
    monkeypatch.setattr(Decoder, "decode", lambda *args: pytest.fail("took the exact path"))
    got = DECODERS["keyed"].decode_batch(values, "purchase", NOW_MS, ["s"] * len(values))
    assert [(e["amount"], e["currency"]) for e in got if not isinstance(e, InvalidEvent)] == [
        ("49.90", "EUR"), ("0", "USD"), ("19", "GBP"), ("12345678901234.5678", "JPY")]


# -- order and mixing -----------------------------------------------------------------------
def _visit(**changes: Any) -> bytes:
    body = {"event_id": EVENT_ID, "user_id": "u1", "ts": TS_MS, **changes}
    return json.dumps(body).encode()


def test_results_keep_the_order_of_a_mixed_batch() -> None:
    decoder = DECODERS["keyed"]
    values: list[bytes | None] = [
        _visit(user_id="a"),
        None,
        _visit(user_id="b", ts="2026-01-31T13:00:00+01:00"),
        b"{not json",
        _visit(user_id=""),
        _visit(user_id="c", properties={"n": 2**64}),
        b"",
        _visit(user_id="d", event_type="signup"),
        _visit(user_id="e", funnel="zz"),
        _visit(user_id="f", ts=NOW_MS + 300_001),
        _visit(user_id="g", event_id=EVENT_ID.upper()),
        _visit(user_id="h", ts=TS_MS + 0.5),
        _visit(user_id="i"),
    ]
    sources = [f"funnel.visit:3:{100 + i}" for i in range(len(values))]
    got = assert_same(decoder, values, "visit", NOW_MS, sources)
    summary = [item.reason if isinstance(item, InvalidEvent) else (item["user_id"], item["source"])
               for item in got]
    assert summary == [
        ("a", "funnel.visit:3:100"), "empty", ("b", "funnel.visit:3:102"), "not_json", "invalid_user_id",
        "invalid_properties", "empty", "wrong_event_type", "unknown_funnel", "future_timestamp",
        ("g", "funnel.visit:3:110"), ("h", "funnel.visit:3:111"), ("i", "funnel.visit:3:112"),
    ]
    assert got[10]["event_id"] == EVENT_ID
    assert got[11]["ts"] == TS_MS


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.randoms(use_true_random=False))
@QUICK
def test_any_mix_of_valid_and_invalid_keeps_its_order(valid: list[bool], rng: random.Random) -> None:
    bad = [None, b"", b"[]", _visit(ts=-1), _visit(event_id="x"), _visit(channel=7), _visit(funnel="zz")]
    values = [_visit(user_id=f"u{i}", ts=TS_MS + i) if ok else rng.choice(bad) for i, ok in enumerate(valid)]
    got = assert_same(DECODERS["keyed"], values, "visit")
    for i, (ok, item) in enumerate(zip(valid, got, strict=True)):
        assert isinstance(item, InvalidEvent) != ok
        if ok:
            assert isinstance(item, dict)
            assert (item["user_id"], item["ts"]) == (f"u{i}", TS_MS + i)


def test_an_empty_batch_gives_no_results() -> None:
    assert DECODERS["keyed"].decode_batch([], "visit", NOW_MS, []) == []


def test_values_and_sources_must_pair_up() -> None:
    with pytest.raises(ValueError, match="sources"):
        DECODERS["keyed"].decode_batch([_visit()], "visit", NOW_MS, [])


def test_an_unknown_event_type_fails_as_decode_does() -> None:
    with pytest.raises(KeyError):
        DECODERS["keyed"].decode(_visit(), "click", NOW_MS)
    with pytest.raises(KeyError):
        DECODERS["keyed"].decode_batch([_visit()], "click", NOW_MS, [""])
    assert DECODERS["keyed"].decode_batch([None], "click", NOW_MS, [""])[0].reason == "empty"  # type: ignore[union-attr]


# -- the fast path's own rules ----------------------------------------------------------------
def test_epoch_milliseconds_below_2038_are_taken_as_they_are() -> None:
    """The reasoning behind the fast path's integer timestamps, checked on many values."""
    rng = random.Random(7)
    limit = decode_module._EXACT_EPOCH_MS
    samples = [rng.randrange(limit) for _ in range(100_000)] + [0, 1, 999, 1000, limit - 1, limit - 1000]
    samples += [rng.randrange(limit - 10**9, limit) for _ in range(20_000)]
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for ms in samples:
        moment = datetime.fromtimestamp(ms / 1000.0, tz=UTC)
        assert (moment - epoch) // timedelta(milliseconds=1) == ms, ms


@pytest.mark.parametrize("ts", [0, 1, 999, TS_MS, 1_088_600_359_396, 135_828_052_390,
                                2**31 * 1000 - 1, 2**31 * 1000, 2**31 * 1000 + 1, 4_102_444_800_123,
                                # Far ahead, the model's float division loses a millisecond:
                                12_251_122_775_644, 95_753_079_651_504, 253_402_300_799_999])
def test_integer_timestamps_near_the_limits(ts: int) -> None:
    decoder = Decoder({"default"}, max_future_seconds=10**13)
    assert_same(decoder, [_visit(ts=ts)], "visit", TS_MS)


@pytest.mark.parametrize("ts", [
    5, 5.0, 0.5, 999.9996, 1_769_860_800, 1_769_860_800.0, 1e10, 2e10, 2e10 + 0.5, TS_MS + 0.4995,
    float(TS_MS), TS_MS + 0.9996, "5", "1769860800", "1769860800000", "1769860800000.5", "2026-01-31",
    "2026-01-31T12:00:00", "2026-01-31T12:00:00.9999995Z", "2026-01-31T12:00:00.0004999+00:30",
    "2026-01-31 12:00:00Z", "2026-01-31T12:00Z", "1970-01-01T00:00:00Z", "1970-01-01T00:59:59.999+01:00",
    "1970-01-01T00:00:00.000-00:01", True, None, [TS_MS], {"ms": TS_MS},
])
def test_timestamp_forms(ts: Any) -> None:
    for decoder in DECODERS.values():
        assert_same(decoder, [_visit(ts=ts)], "visit", NOW_MS)


@pytest.mark.parametrize("properties", [
    {"n": 2**63}, {"n": -(2**63) - 1}, {"n": 2**63 - 1}, {"n": -(2**63)}, {"x": float("inf")},
    {"x": float("-inf")}, {"x": float("nan")}, {"x": 1e308}, {"n": True},
])
def test_property_numbers_at_the_limits(properties: dict[str, Any]) -> None:
    assert_same(DECODERS["keyed"], [_visit(properties=properties)], "visit")


def test_the_fast_path_redoes_the_property_validators() -> None:
    """Parsing keeps integers beyond 64 bits and non-finite floats from it; it checks them all the same."""
    decoder = DECODERS["keyed"]
    fields = {"event_id": EVENT_ID, "user_id": "u", "ts": TS_MS}
    data = {**fields}
    normalize = decoder._normalize_fast
    assert normalize({**fields, "properties": {"n": 2**63 - 1}}, data, "visit", NOW_MS, "")
    for bad in (2**63, -(2**63) - 1, float("inf"), float("nan")):
        assert normalize({**fields, "properties": {"n": bad}}, data, "visit", NOW_MS, "") is None


def test_every_event_type_has_a_fast_path() -> None:
    for event_type in EVENT_TYPES:
        assert decode_module._fast_adapter(event_type) is not None, event_type


def test_a_model_rule_the_fast_path_does_not_know_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    class StricterVisit(VisitEvent):
        @field_validator("user_id")
        @classmethod
        def _no_admin(cls, value: str) -> str:
            if value == "admin":
                raise ValueError("no admin")
            return value

    monkeypatch.setitem(EVENT_MODELS, "visit", StricterVisit)
    decode_module._fast_adapter.cache_clear()
    try:
        assert decode_module._fast_adapter("visit") is None
        got = assert_same(DECODERS["keyed"], [_visit(user_id="admin"), _visit()], "visit")
        assert isinstance(got[0], InvalidEvent)
        assert not isinstance(got[1], InvalidEvent)
    finally:
        monkeypatch.undo()
        decode_module._fast_adapter.cache_clear()


def test_without_orjson_every_record_takes_the_exact_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode_module, "_fast_loads", None)
    values: list[bytes | None] = [_visit(), _visit(ts=-1), None, _visit(properties={"n": 2**70})]
    got = assert_same(DECODERS["keyed"], values, "visit")
    assert [isinstance(item, InvalidEvent) for item in got] == [False, True, True, True]


def test_signup_email_is_hashed_or_dropped_as_decode_does() -> None:
    values = [json.dumps({"event_id": EVENT_ID, "user_id": "u", "ts": TS_MS, "email": email}).encode()
              for email in ["  Person@Example.COM ", "x@y.io", None]]
    keyed = assert_same(DECODERS["keyed"], values, "signup")
    unkeyed = assert_same(DECODERS["unkeyed"], values, "signup")
    assert [e["email_hash"] for e in unkeyed] == [None, None, None]
    assert keyed[0]["email_hash"] == decode_module.hash_email("person@example.com", KEY)
    assert keyed[2]["email_hash"] is None


def test_valid_event_values_have_the_types_decode_gives() -> None:
    raw = json.dumps({"event_id": EVENT_ID, "user_id": " u1 ", "ts": "2026-01-31T12:00:00.1239Z",
                      "amount": "19.90", "currency": "eur", "order_id": "", "campaign": " ",
                      "properties": {"n": 1, "x": 1.0, "b": True, "s": "1", "z": None}}).encode()
    (event,) = assert_same(DECODERS["keyed"], [raw], "purchase")
    assert isinstance(event, dict)
    expected: NormalizedEvent = {
        "event_id": EVENT_ID, "event_type": "purchase", "funnel": None, "user_id": "u1",
            "anonymous_id": None, "person_id": "u1", "ts": TS_MS + 123,
        "received_at": NOW_MS, "channel": None, "campaign": None, "product": None, "region": None,
        "manager": None, "amount": str(Decimal("19.90")), "currency": "EUR", "order_id": "",
        "email_hash": None, "properties": {"n": 1, "x": 1.0, "b": True, "s": "1", "z": None},
        "source": "funnel.purchase:0:0",
    }
    assert fingerprint(event) == fingerprint(expected)
