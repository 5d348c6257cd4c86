"""Raw message bytes -> one normalized event, or :class:`InvalidEvent` with a reason.

The reasons are a closed set (:data:`REASONS`): they label
``funnel_invalid_events_total{reason}`` and the dead-letter records, so they
must stay few and stable. The normalized event is a plain dict (cheap to
serialize onto the internal topic) whose keys are listed in
:data:`NORMALIZED_KEYS`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import re
import sys
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, NotRequired, TypedDict, cast, get_args
from uuid import UUID

from pydantic import ConfigDict, Field, Strict, StringConstraints, TypeAdapter, ValidationError

from schemas.events import (
    _EMAIL_RE,
    EVENT_MODELS,
    FunnelEvent,
    PurchaseEvent,
    SignupEvent,
    _check_ts,
    _parse_ts,
)
from schemas.exceptions import InvalidEvent
from schemas.spend import SpendReport

if sys.version_info >= (3, 12):
    from typing import TypedDict as _ValidatedTypedDict
else:  # before 3.12 pydantic validates only typing_extensions' TypedDict (pydantic requires that package)
    from typing_extensions import TypedDict as _ValidatedTypedDict

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
    "missing_identity",
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
    "anonymous_id": "invalid_user_id",
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
    user_id: str | None  # at least one of user_id and anonymous_id is set
    anonymous_id: str | None
    #: The person the event counts for: the user id of an event without an
    #: anonymous id; for one with an anonymous id, None until the journey agent
    #: of that id resolves it (README, "Identity").
    person_id: str | None
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


# -- the batch fast path (Decoder.decode_batch) ------------------------------------------------
# decode_batch validates a batch's parsed objects with one pydantic TypeAdapter
# over a list of TypedDicts (no model instances). Their fields have the event
# models' own types, taken from the models, except two that are cheaper and
# stricter: event_id (a string in the canonical UUID spelling only) and ts (an
# int, or a datetime that decode_batch only takes when parsed from a string).
# The models' Python validators are redone by hand after validation. Whatever
# the fast path does not accept in full is decoded by Decoder.decode, which
# alone names reasons.

#: ``_LONG_DIGITS.search(raw) is None`` is the same test as
#: ``_LONG_RUN not in raw.translate(_DIGITS_TO_ZERO)``, five times faster.
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_RUN = b"0" * 19

#: The form str(UUID(...)) gives: only this event_id spelling is taken as is.
_CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"

#: Integer epoch milliseconds below this (2038-01-19) come out of the model's
#: ``datetime.fromtimestamp(ms / 1000.0)`` unchanged: ``ms / 1000.0`` is below
#: 2**31, so within 2**-23 s of the exact value, and the rounding to whole
#: microseconds gives the exact value back. Later times take the exact path.
_EXACT_EPOCH_MS = 2**31 * 1000

#: ISO timestamps at or after this (9999-12-31T00:00Z) take the exact path:
#: the model's ``astimezone(UTC)`` may overflow near the end of year 9999.
_LAST_FAST_MS = (datetime(9999, 12, 31, tzinfo=UTC) - _EPOCH) // _MILLISECOND

_INT64_MIN, _INT64_END = -(2**63), 2**63

#: What the fast path redoes by hand for the models' Python validators and
#: configuration; a model with any other validator or setting is decoded the
#: exact way only (see _fast_adapter).
_HANDLED_FIELD_VALIDATORS = {
    "visit": {"_int64", "_finite_numbers"},
    "signup": {"_int64", "_finite_numbers", "_email_shape"},
    "webinar": {"_int64", "_finite_numbers"},
    "consultation": {"_int64", "_finite_numbers"},
    "purchase": {"_int64", "_finite_numbers"},
}
_HANDLED_CONFIG = {"extra": "ignore", "frozen": True, "allow_inf_nan": False}
_BASE_FIELDS = {"event_type", "event_id", "user_id", "anonymous_id", "ts", "funnel", "channel", "campaign",
                "product", "region", "manager", "properties"}
_EXTRA_FIELDS = {"signup": {"email"}, "purchase": {"amount", "currency", "order_id"}}


def _field_type(model: type[FunnelEvent], name: str) -> Any:
    """The model's type of field ``name``, constraints included (its field validators are not)."""
    field = model.model_fields[name]
    return Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation


def _handled(model: type[FunnelEvent], event_type: str) -> bool:
    """Whether the fast path knows every rule ``model`` applies (else it must not be used)."""
    decorators = model.__pydantic_decorators__
    ts = model.model_fields["ts"]
    return (
        set(model.model_fields) == _BASE_FIELDS | _EXTRA_FIELDS.get(event_type, set())
        and set(decorators.field_validators) == _HANDLED_FIELD_VALIDATORS.get(event_type)
        and not (decorators.model_validators or decorators.validators or decorators.root_validators
                 or decorators.field_serializers or decorators.computed_fields)
        and dict(model.model_config) == _HANDLED_CONFIG
        and get_args(model.model_fields["event_type"].annotation) == (event_type,)
        and model.model_fields["event_type"].default == event_type
        and model.model_fields["event_id"].annotation is UUID
        and ts.annotation is datetime
        and [getattr(m, "func", None) for m in ts.metadata] == [_parse_ts, _check_ts]
        and model.model_fields["properties"].default_factory is dict
    )


@functools.cache
def _fast_adapter(event_type: str) -> TypeAdapter[list[dict[str, Any]]] | None:
    """A TypeAdapter over a list of this event type's fast-path TypedDict, or None."""
    model = EVENT_MODELS.get(event_type)
    if model is None or not _handled(model, event_type):
        return None
    fields: dict[str, Any] = {
        "event_id": Annotated[str, StringConstraints(pattern=_CANONICAL_UUID)],
        # An int (not a bool, not a float) is epoch milliseconds; anything else
        # goes to datetime, which decode_batch only takes from a string.
        "ts": Annotated[Annotated[int, Strict()] | datetime, Field(union_mode="left_to_right")],
    }
    for name in sorted(set(model.model_fields) - {"event_type", "event_id", "ts"}):
        kind = _field_type(model, name)
        fields[name] = kind if model.model_fields[name].is_required() else NotRequired[kind]
    typed_dict = cast(Any, _ValidatedTypedDict)(f"_Fast{model.__name__}", fields)
    typed_dict.__pydantic_config__ = ConfigDict(extra="ignore", allow_inf_nan=False)
    return TypeAdapter(cast(Any, list)[typed_dict])


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

    def decode_batch(
        self, values: Sequence[bytes | None], event_type: str, now_ms: int, sources: Sequence[str]
    ) -> list[NormalizedEvent | InvalidEvent]:
        """Decode a batch of messages from one topic: :meth:`decode` for each, only faster.

        Returns one result per value, in order: the dict that
        ``decode(values[i], event_type, now_ms, sources[i])`` returns, or the
        :class:`InvalidEvent` it raises (returned, not raised); any other
        exception ``decode`` raises propagates, as it would from a loop of
        ``decode`` calls. ``values`` and ``sources`` must have the same length.

        The fast path parses each message the way :meth:`_load` does when it
        takes orjson, validates the batch's objects with one pydantic
        TypeAdapter over TypedDicts of the models' own field types, and redoes
        the models' Python validators, the known funnels and the future limit
        by hand. It takes only what it can decode exactly as ``decode`` does,
        and is stricter where that is cheaper: a message it does not accept in
        full (any invalid one; a non-canonical event_id spelling; a timestamp
        given as a float, or as epoch ms from 2038 on; no orjson; ...) is
        decoded by ``decode`` itself, so reasons and details are decode's own.
        """
        if len(values) != len(sources):
            raise ValueError(f"{len(values)} values but {len(sources)} sources")
        adapter = _fast_adapter(event_type)
        if adapter is None or _fast_loads is None:
            return [self._decode_or_invalid(raw, event_type, now_ms, source)
                    for raw, source in zip(values, sources, strict=True)]
        loads, max_bytes = _fast_loads, self.max_bytes
        results: list[NormalizedEvent | InvalidEvent | None] = [None] * len(values)
        positions: list[int] = []
        objects: list[dict[str, Any]] = []
        for i, raw in enumerate(values):
            # _load's orjson branch, and decode's event_type check, for plain bytes.
            if (type(raw) is bytes and raw and len(raw) <= max_bytes
                    and _LONG_RUN not in raw.translate(_DIGITS_TO_ZERO)):
                try:
                    data = loads(raw)
                except ValueError:
                    pass
                else:
                    if type(data) is dict and data.get("event_type", event_type) == event_type:
                        positions.append(i)
                        objects.append(data)
                        continue
            results[i] = self._decode_or_invalid(raw, event_type, now_ms, sources[i])
        if objects:
            try:
                checked: list[dict[str, Any] | None] = list(adapter.validate_python(objects))
            except ValidationError:
                # Some object is invalid: validate them one by one, decode the failures exactly.
                checked = [self._validate_one(adapter, data) for data in objects]
            normalize = self._normalize_fast
            for i, data, fields in zip(positions, objects, checked, strict=True):
                event = None if fields is None else normalize(fields, data, event_type, now_ms, sources[i])
                if event is None:
                    results[i] = self._decode_or_invalid(values[i], event_type, now_ms, sources[i])
                else:
                    results[i] = event
        return cast(list[NormalizedEvent | InvalidEvent], results)

    def _decode_or_invalid(
        self, raw: bytes | None, event_type: str, now_ms: int, source: str
    ) -> NormalizedEvent | InvalidEvent:
        try:
            return self.decode(raw, event_type, now_ms, source)
        except InvalidEvent as exc:
            return exc

    @staticmethod
    def _validate_one(
        adapter: TypeAdapter[list[dict[str, Any]]], data: dict[str, Any]
    ) -> dict[str, Any] | None:
        try:
            return adapter.validate_python([data])[0]
        except ValidationError:
            return None

    def _normalize_fast(
        self, fields: dict[str, Any], data: dict[str, Any], event_type: str, now_ms: int, source: str
    ) -> NormalizedEvent | None:
        """What _normalize would make of the validated ``fields``; None: take the exact path.

        ``data`` is the parsed object ``fields`` came from. Redoes the
        models' Python validators (timestamp, 64-bit integers and finite
        numbers in properties, e-mail shape) and decode's own checks.
        """
        ts = fields["ts"]
        if type(ts) is int:
            if not 0 <= ts < _EXACT_EPOCH_MS:
                return None
        else:  # a datetime: only one parsed from a string is the model's
            if type(data["ts"]) is not str or ts.tzinfo is None or ts.utcoffset() is None:
                return None
            ts = _ms(ts)
            if not 0 <= ts < _LAST_FAST_MS:
                return None
        if ts - now_ms > self.max_future_ms:
            return None
        funnel = fields.get("funnel")
        if funnel is not None and funnel not in self.funnels:
            return None
        user, anonymous = fields.get("user_id"), fields.get("anonymous_id")
        if user is None and anonymous is None:  # missing_identity: decode names it
            return None
        properties = fields.get("properties")
        if properties is None:
            properties = {}
        else:
            for item in properties.values():
                kind = type(item)
                if kind is int:
                    if not _INT64_MIN <= item < _INT64_END:
                        return None
                elif kind is float and not math.isfinite(item):
                    return None
        amount = currency = order_id = email_hash = None
        if event_type == "purchase":
            amount, currency, order_id = str(fields["amount"]), fields["currency"], fields.get("order_id")
        elif event_type == "signup":
            email = fields.get("email")
            if email is not None:
                if not _EMAIL_RE.match(email):
                    return None
                if self.email_hash_key:
                    email_hash = hash_email(email.lower(), self.email_hash_key)
        return {
            "event_id": fields["event_id"],
            "event_type": event_type,
            "funnel": funnel,
            "user_id": user,
            "anonymous_id": anonymous,
            "person_id": user if anonymous is None else None,
            "ts": ts,
            "received_at": now_ms,
            "channel": fields.get("channel") or None,
            "campaign": fields.get("campaign") or None,
            "product": fields.get("product") or None,
            "region": fields.get("region") or None,
            "manager": fields.get("manager") or None,
            "amount": amount,
            "currency": currency,
            "order_id": order_id,
            "email_hash": email_hash,
            "properties": properties,
            "source": source,
        }

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
        if event.user_id is None and event.anonymous_id is None:
            raise InvalidEvent("missing_identity", "neither user_id nor anonymous_id is set")
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
            anonymous_id=event.anonymous_id,
            person_id=event.user_id if event.anonymous_id is None else None,
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
