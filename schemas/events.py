"""Funnel event models: one per event type, on a shared envelope.

Pure pydantic: producers can import this module without Faust or ClickHouse.
Validation that needs the clock or configuration (future timestamps, known
funnels, size limits) lives in :mod:`schemas.decode`, which wraps these models.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeAlias
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from schemas.currencies import ISO_4217

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "MAX_PROPERTIES",
    "ConsultationEvent",
    "Event",
    "EventType",
    "FunnelEvent",
    "PurchaseEvent",
    "SignupEvent",
    "VisitEvent",
    "WebinarEvent",
]

EventType: TypeAlias = Literal["visit", "signup", "webinar", "consultation", "purchase"]
#: The five event types in their natural funnel order.
EVENT_TYPES: tuple[EventType, ...] = ("visit", "signup", "webinar", "consultation", "purchase")

MAX_USER_ID = 256
MAX_DIMENSION = 128
MAX_PROPERTIES = 32
MAX_PROPERTY_KEY = 64
MAX_PROPERTY_VALUE = 256
#: Earliest accepted event time. Anything before is a producer bug (epoch seconds
#: sent as milliseconds, a zeroed clock), not a real funnel event.
MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)

_NAME_RE = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{1,63}$")


def _parse_ts(value: Any) -> Any:
    """Accept epoch milliseconds (int/float) as well as ISO 8601 strings."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be ISO 8601 or epoch milliseconds, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError("timestamp is not a finite number")
        try:
            return datetime.fromtimestamp(value / 1000.0, tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise ValueError(f"epoch milliseconds out of range: {value!r}") from exc
    return value


def _check_ts(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp must carry a timezone (e.g. 2026-01-31T12:00:00Z)")
    try:
        value = value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:30:00+01:00: before year 1 in UTC
        raise ValueError("timestamp is outside years 1-9999 in UTC") from None
    if value < MIN_TS:
        raise ValueError("timestamp is before 1970-01-01")
    return value


def _iso_4217(value: str) -> str:
    code = value.upper()
    if code not in ISO_4217:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return code


Timestamp = Annotated[datetime, BeforeValidator(_parse_ts), AfterValidator(_check_ts)]
#: An ISO 4217 alphabetic code, upper-cased.
Currency = Annotated[str, StringConstraints(min_length=3, max_length=3), AfterValidator(_iso_4217)]
UserId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_USER_ID)
]
Dimension = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_DIMENSION)]
FunnelName = Annotated[str, StringConstraints(pattern=_NAME_RE)]
PropertyValue = (
    Annotated[str, StringConstraints(max_length=MAX_PROPERTY_VALUE)]
    | int
    | float
    | bool
    | None
)


class FunnelEvent(BaseModel):
    """The envelope every event shares.

    ``event_id`` is the deduplication key: a producer retrying a send must reuse
    it. ``user_id`` is the known person (an account id); ``anonymous_id`` a
    cookie or device id from before the person was known. At least one must be
    present (:mod:`schemas.decode` rejects an event with neither as
    ``missing_identity``); an event with both links them (README, "Identity").
    """

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    event_type: EventType
    event_id: UUID
    user_id: UserId | None = None
    anonymous_id: UserId | None = None
    ts: Timestamp = Field(description="Event time: ISO 8601 with zone, or epoch milliseconds.")
    funnel: FunnelName | None = Field(
        default=None,
        description="Only this funnel; absent: every configured funnel that has this stage.",
    )
    channel: Dimension | None = None
    campaign: Dimension | None = None
    product: Dimension | None = None
    region: Dimension | None = None
    manager: Dimension | None = None
    properties: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=MAX_PROPERTY_KEY)],
        PropertyValue,
    ] = Field(default_factory=dict, max_length=MAX_PROPERTIES)

    @field_validator("properties", mode="before")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        # Larger integers cannot be serialized downstream, and must not turn
        # into floats on the way: reject them.
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, int) and not isinstance(item, bool) and not -(2**63) <= item < 2**63:
                    raise ValueError(f"property {key!r} is an integer beyond 64 bits")
        return value

    @field_validator("properties")
    @classmethod
    def _finite_numbers(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"property {key!r} is not a finite number")
        return value


class VisitEvent(FunnelEvent):
    """Someone landed on the site."""

    event_type: Literal["visit"] = "visit"


class SignupEvent(FunnelEvent):
    """Someone left an e-mail. The address is never stored raw (see decode)."""

    event_type: Literal["signup"] = "signup"
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=254)] | None = None

    @field_validator("email")
    @classmethod
    def _email_shape(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL_RE.match(value):
            raise ValueError("not an e-mail address")
        return value.lower() if value else value


class WebinarEvent(FunnelEvent):
    """Someone attended the free webinar."""

    event_type: Literal["webinar"] = "webinar"


class ConsultationEvent(FunnelEvent):
    """Someone booked the free consultation."""

    event_type: Literal["consultation"] = "consultation"


class PurchaseEvent(FunnelEvent):
    """Someone bought. Repeat purchases are normal and each counts for revenue."""

    event_type: Literal["purchase"] = "purchase"
    amount: Annotated[Decimal, Field(ge=0, max_digits=18, decimal_places=4)]
    currency: Currency
    order_id: Dimension | None = None


Event: TypeAlias = VisitEvent | SignupEvent | WebinarEvent | ConsultationEvent | PurchaseEvent

EVENT_MODELS: dict[str, type[FunnelEvent]] = {
    "visit": VisitEvent,
    "signup": SignupEvent,
    "webinar": WebinarEvent,
    "consultation": ConsultationEvent,
    "purchase": PurchaseEvent,
}
