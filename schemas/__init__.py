"""Event and funnel-configuration models. Imports pydantic only (and the stdlib)."""

from schemas.decode import NORMALIZED_KEYS, REASONS, Decoder, NormalizedEvent, hash_email
from schemas.events import (
    EVENT_MODELS,
    EVENT_TYPES,
    ConsultationEvent,
    Event,
    EventType,
    FunnelEvent,
    PurchaseEvent,
    SignupEvent,
    VisitEvent,
    WebinarEvent,
)
from schemas.exceptions import FunnelConfigError, InvalidEvent
from schemas.export import write_json_schemas
from schemas.funnels import DEFAULT_FUNNEL, FunnelDefinition, FunnelsConfig, default_config
from schemas.spend import SpendReport

__all__ = [
    "DEFAULT_FUNNEL",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "NORMALIZED_KEYS",
    "REASONS",
    "ConsultationEvent",
    "Decoder",
    "Event",
    "EventType",
    "FunnelConfigError",
    "FunnelDefinition",
    "FunnelEvent",
    "FunnelsConfig",
    "InvalidEvent",
    "NormalizedEvent",
    "PurchaseEvent",
    "SignupEvent",
    "SpendReport",
    "VisitEvent",
    "WebinarEvent",
    "default_config",
    "hash_email",
    "write_json_schemas",
]
