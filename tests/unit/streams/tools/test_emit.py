"""`funnel emit`: building, validating and the command line (no broker needed)."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest

from schemas import Decoder, InvalidEvent
from streams.tools.cli import main
from streams.tools.emit import EmitError, build_event, parse_json, plain_words, validate

NOW_MS = 1_769_860_800_000


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No broker configured, nothing on standard input unless a test puts it there."""
    for name in ("FUNNEL_KAFKA_URL", "FUNNEL_FUNNELS_FILE", "FUNNEL_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["emit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_flags_make_a_complete_event() -> None:
    event_type, payload = build_event(
        "purchase", None, {"user_id": "u1", "amount": "49.90", "currency": "EUR", "channel": None},
        ["coupon=BF", "items=3", "gift=true"], NOW_MS)
    assert event_type == "purchase"
    assert uuid.UUID(payload.pop("event_id")).version == 4
    assert payload == {"user_id": "u1", "amount": "49.90", "currency": "EUR", "ts": NOW_MS,
                       "event_type": "purchase", "properties": {"coupon": "BF", "items": 3, "gift": True}}


def test_json_body_with_flags_on_top() -> None:
    body = {"event_type": "visit", "user_id": "u1", "event_id": "0b7c0000-0000-4000-8000-000000000001",
            "ts": "2026-01-31T11:00:00Z", "properties": {"page": "/"}}
    event_type, payload = build_event(None, body, {"user_id": "u2", "ts": "1769860000000"}, ["ab=b"], NOW_MS)
    assert event_type == "visit"
    assert payload["user_id"] == "u2" and payload["ts"] == 1_769_860_000_000  # epoch ms flag typed
    assert payload["event_id"] == body["event_id"] and payload["properties"] == {"page": "/", "ab": "b"}


@pytest.mark.parametrize(("args", "message"), [
    ((None, None, {}, []), "name the event type"),
    (("buy", None, {}, []),
     "unknown event type 'buy': one of visit, signup, webinar, consultation, purchase"),
    (("visit", {"event_type": "signup"}, {}, []),
     "the JSON says event_type 'signup' but the command says 'visit'"),
    (("visit", None, {}, ["novalue"]), "--property 'novalue' must look like key=value"),
])
def test_incomplete_input_is_explained(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(EmitError, match=message):
        build_event(*args, NOW_MS)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"), ("{oops", "is not valid JSON: Expecting property name"),
    ("[1]", "must be a JSON object, not list"),
])
def test_bad_json(text: str, message: str) -> None:
    with pytest.raises(EmitError, match=message):
        parse_json(text)


@pytest.mark.parametrize(("fields", "message"), [
    ({"currency": "XYZ"}, "currency: 'XYZ' is not an ISO 4217 currency code (reason: unknown_currency)"),
    ({"currency": None}, "'currency' is required (reason: missing_field)"),
    ({"amount": "-1"}, "amount: Input should be greater than or equal to 0 (reason: invalid_amount)"),
    ({"funnel": "b2b"}, "funnel 'b2b' is not configured (reason: unknown_funnel)"),
    ({"ts": "2026-01-31T12:00:00"}, "ts: timestamp must carry a timezone (e.g. 2026-01-31T12:00:00Z) "
                                    "(reason: invalid_timestamp)"),
    ({"properties": {"tags": ["a"]}}, "properties.tags: Input should be a valid string"),
])
def test_validation_is_the_decoders_in_plain_words(fields: dict[str, Any], message: str) -> None:
    payload = {"user_id": "u1", "event_id": str(uuid.uuid4()), "ts": NOW_MS, "amount": "5", "currency": "EUR"}
    payload.update(fields)
    payload = {k: v for k, v in payload.items() if v is not None}
    with pytest.raises(EmitError) as err:
        validate(Decoder(["default"]), "purchase", payload, NOW_MS)
    assert str(err.value).startswith("invalid purchase event: ")
    assert message in str(err.value)


def test_valid_event_bytes_are_what_the_decoder_accepts() -> None:
    payload = {"user_id": "u1", "event_id": str(uuid.uuid4()), "ts": NOW_MS, "email": "A@Example.com"}
    raw = validate(Decoder(["default"]), "signup", payload, NOW_MS)
    assert json.loads(raw) == payload


def test_plain_words_keeps_other_details() -> None:
    assert plain_words(InvalidEvent("too_large", "70000 bytes > limit 65536")) == \
        "70000 bytes > limit 65536 (reason: too_large)"


def test_cli_dry_run_prints_the_event(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "purchase", "--user", "u1", "--amount", "49.90", "--currency", "eur",
                          "--channel", "ads", "--dry-run")
    assert code == 0, err
    sent = json.loads(out)
    fields = ("event_type", "user_id", "amount", "currency")
    assert [sent[k] for k in fields] == ["purchase", "u1", "49.90", "eur"]
    assert err.strip() == "emit: valid purchase event, not sent (--dry-run)"


def test_cli_reads_json_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"event_type": "webinar", "user_id": "u7"}'))
    code, out, _ = _run(capsys, "-", "--dry-run")
    assert code == 0 and json.loads(out)["user_id"] == "u7"
    monkeypatch.setattr("sys.stdin", io.StringIO('{"user_id": "u8"}'))  # piped, no "-"
    code, out, _ = _run(capsys, "visit", "--dry-run")
    assert code == 0 and json.loads(out)["user_id"] == "u8"


def test_cli_invalid_event_exits_2_in_plain_words(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "purchase", "--user", "u1", "--amount", "5", "--currency", "XYZ")
    assert (code, out) == (2, "")
    assert err.strip() == ("emit: invalid purchase event: currency: 'XYZ' is not an ISO 4217 currency code "
                           "(reason: unknown_currency)")
    code, _, err = _run(capsys, '{"user_id": "u1"', "--dry-run")
    assert code == 2 and "the JSON argument is not valid JSON" in err
    code, _, err = _run(capsys, "visit", "signup", "--user", "u1")
    assert code == 2 and "unexpected argument 'signup'" in err


def test_cli_without_a_broker_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "visit", "--user", "u1")
    assert code == 1
    assert err.strip() == "emit: FUNNEL_KAFKA_URL is not set (e.g. kafka://localhost:9092)"


def test_cli_sends_anonymous_ids_and_links(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "visit", "--anonymous-id", "cookie-7", "--dry-run")
    assert code == 0, err
    assert json.loads(out)["anonymous_id"] == "cookie-7" and "user_id" not in json.loads(out)
    code, out, err = _run(capsys, "signup", "--anonymous-id", "cookie-7", "--user", "u3", "--dry-run")
    assert code == 0 and (json.loads(out)["anonymous_id"], json.loads(out)["user_id"]) == ("cookie-7", "u3")
    code, out, err = _run(capsys, '{"event_type": "visit"}', "--dry-run")
    assert (code, out) == (2, "")
    assert err.strip() == ("emit: invalid visit event: neither user_id nor anonymous_id is set "
                           "(reason: missing_identity)")
