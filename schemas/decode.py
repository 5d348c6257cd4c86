"""Raw message bytes -> one normalized event, or :class:`InvalidEvent` with a reason.

The reasons are a closed set (:data:`REASONS`): they label
``funnel_invalid_events_total{reason}`` and the dead-letter records, so they
must stay few and stable. The normalized event is a plain dict (cheap to
serialize onto the internal topic) whose keys are listed in
:data:`NORMALIZED_KEYS`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from pydantic import ValidationError

from schemas.events import EVENT_MODELS, FunnelEvent, PurchaseEvent, SignupEvent
from schemas.exceptions import InvalidEvent
from schemas.spend import SpendReport

# orjson parses a message about four times faster than json. It is optional:
# producers can use schemas with pydantic alone, and decode the same way.
_fast_loads: Callable[[bytes], Any] | None
try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency of the pipeline
    _fast_loads = None
else:
    _fast_loads = orjson.loads

__all__ = ["NORMALIZED_KEYS", "REASONS", "Decoder", "NormalizedEvent", "hash_email"]

REASONS: tuple[str, ...] = (
    "empty",
    "too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "wrong_event_type",
    "missing_field",
    "invalid_event_id",
    "invalid_user_id",
    "invalid_timestamp",
    "future_timestamp",
    "invalid_funnel",
    "unknown_funnel",
    "invalid_amount",
    "unknown_currency",
    "invalid_properties",
    "invalid_email",
    "invalid_field",
)

# First failing field -> reason. Anything not listed is "invalid_field".
_FIELD_REASONS = {
    "event_id": "invalid_event_id",
    "user_id": "invalid_user_id",
    "ts": "invalid_timestamp",
    "funnel": "invalid_funnel",
    "amount": "invalid_amount",
    "channel": "invalid_field",
    "period_start": "invalid_timestamp",
    "period_end": "invalid_timestamp",
    "currency": "unknown_currency",
    "properties": "invalid_properties",
    "email": "invalid_email",
    "event_type": "wrong_event_type",
}


class NormalizedEvent(TypedDict):
    """The internal form of a valid event (times in epoch milliseconds, UTC)."""

    event_id: str
    event_type: str
    funnel: str | None  # None: every funnel that has this stage
    user_id: str
    ts: int
    received_at: int
    channel: str | None
    campaign: str | None
    product: str | None
    region: str | None
    manager: str | None
    amount: str | None
    currency: str | None
    order_id: str | None
    email_hash: str | None
    properties: dict[str, Any]
    source: str


NORMALIZED_KEYS: tuple[str, ...] = tuple(NormalizedEvent.__annotations__)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


#: A run of 19 digits: an integer literal this long may lie beyond 64 bits,
#: which orjson would read as a float where json keeps the exact integer.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def _ms(value: datetime) -> int:
    # Integer arithmetic: timestamp() * 1000 is a float and loses a
    # millisecond for some times (e.g. 2004-06-30T12:59:19.396Z).
    return (value - _EPOCH) // _MILLISECOND


def hash_email(email: str, key: bytes) -> str:
    """Keyed hash of an e-mail address: joinable across events, not reversible."""
    return hmac.new(key, email.strip().lower().encode(), hashlib.sha256).hexdigest()


def _reason_for(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors(include_url=False)[0]
    loc = first.get("loc") or ("",)
    field = str(loc[0])
    missing = first.get("type") == "missing"
    reason = "missing_field" if missing else _FIELD_REASONS.get(field, "invalid_field")
    return reason, f"{'.'.join(map(str, loc))}: {first.get('msg')}"


class Decoder:
    """Validates raw messages from one of the five event topics.

    Arguments:
        funnels: names of configured funnels; any other is ``unknown_funnel``.
        max_bytes: larger payloads are rejected before parsing (``too_large``).
        max_future_seconds: event times further ahead of ``now`` are rejected.
        email_hash_key: key for :func:`hash_email`; without one, e-mails are dropped.
    """

    def __init__(
        self,
        funnels: Collection[str],
        *,
        max_bytes: int = 65536,
        max_future_seconds: float = 300.0,
        email_hash_key: bytes | None = None,
    ) -> None:
        self.funnels = frozenset(funnels)
        self.max_bytes = max_bytes
        self.max_future_ms = int(max_future_seconds * 1000)
        self.email_hash_key = email_hash_key

    def decode(
        self, raw: bytes | None, event_type: str, now_ms: int, source: str = ""
    ) -> NormalizedEvent:
        """Validate ``raw`` as an event of ``event_type``; raise InvalidEvent if it is not one."""
        data = self._load(raw)
        declared = data.get("event_type", event_type)
        if declared != event_type:
            raise InvalidEvent(
                "wrong_event_type", f"event_type {declared!r} on the {event_type!r} topic"
            )
        model = EVENT_MODELS[event_type]
        try:
            event = model.model_validate(data)
        except ValidationError as exc:
            raise InvalidEvent(*_reason_for(exc)) from None
        return self._normalize(event, now_ms, source)

    def _load(self, raw: bytes | None) -> dict[str, Any]:
        """Bytes -> JSON object, or InvalidEvent (empty, too_large, not_utf8, not_json, not_object)."""
        if not raw:
            raise InvalidEvent("empty", "message has no value")
        if len(raw) > self.max_bytes:
            raise InvalidEvent("too_large", f"{len(raw)} bytes > limit {self.max_bytes}")
        # The fast path must give exactly what json gives. orjson refuses what
        # json accepts beyond the JSON standard (NaN, Infinity, numbers beyond
        # the float range, lone surrogates) and reads integers beyond 64 bits
        # as floats: those messages, and every invalid one, take json's path,
        # which also names the reason.
        if _fast_loads is not None and _LONG_DIGITS.search(raw) is None:
            try:
                data = _fast_loads(raw)
            except ValueError:
                pass
            else:
                if isinstance(data, dict):
                    return data
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent("not_utf8", str(exc)) from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidEvent("not_json", str(exc)[:200]) from None
        if not isinstance(data, dict):
            raise InvalidEvent("not_object", f"JSON {type(data).__name__}, expected an object")
        return data

    def decode_spend(self, raw: bytes | None, source: str = "") -> dict[str, Any]:
        """Validate a spend report; return the row values, or raise InvalidEvent."""
        data = self._load(raw)
        try:
            report = SpendReport.model_validate(data)
        except ValidationError as exc:
            raise InvalidEvent(*_reason_for(exc)) from None
        return {
            "event_id": str(report.event_id), "channel": report.channel.lower(),
            "campaign": report.campaign or "", "amount": str(report.amount),
            "currency": report.currency, "period_start": _ms(report.period_start),
            "period_end": _ms(report.period_end), "source": source,
        }

    def _normalize(self, event: FunnelEvent, now_ms: int, source: str) -> NormalizedEvent:
        if event.funnel is not None and event.funnel not in self.funnels:
            raise InvalidEvent("unknown_funnel", f"funnel {event.funnel!r} is not configured")
        ts = _ms(event.ts)
        if ts - now_ms > self.max_future_ms:
            raise InvalidEvent(
                "future_timestamp",
                f"{event.ts.isoformat()} is {(ts - now_ms) / 1000:.0f}s in the future",
            )
        amount = currency = order_id = email_hash = None
        if isinstance(event, PurchaseEvent):
            amount, currency, order_id = str(event.amount), event.currency, event.order_id
        elif isinstance(event, SignupEvent) and event.email and self.email_hash_key:
            email_hash = hash_email(event.email, self.email_hash_key)
        return NormalizedEvent(
            event_id=str(event.event_id),
            event_type=event.event_type,
            funnel=event.funnel,
            user_id=event.user_id,
            ts=ts,
            received_at=now_ms,
            channel=event.channel or None,
            campaign=event.campaign or None,
            product=event.product or None,
            region=event.region or None,
            manager=event.manager or None,
            amount=amount,
            currency=currency,
            order_id=order_id,
            email_hash=email_hash,
            properties=dict(event.properties),
            source=source,
        )
