"""``funnel emit``: one event from the command line, checked by the pipeline's own schemas.

The event is built from a JSON object (argument or stdin) and/or flags, gets
an ``event_id`` (a new UUID) and a ``ts`` (now) unless it has them, and is
validated exactly as the ingest agent will validate it
(:class:`schemas.Decoder`), so an event that is sent is never dead-lettered
for its content. It goes to the event type's topic, keyed by its anonymous id (else its user id).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from schemas import EVENT_TYPES, Decoder, InvalidEvent
from streams.kafka_security import check_connection, client_options
from streams.settings import Settings, split_brokers

__all__ = ["EmitError", "SendError", "build_event", "parse_json", "plain_words", "send", "validate"]


class EmitError(ValueError):
    """The event is not valid or not complete; the message says why in plain words."""


class SendError(EmitError):
    """The event is valid but Kafka did not take it."""


def parse_json(text: str, where: str = "the JSON argument") -> dict[str, Any]:
    """A JSON object, or :class:`EmitError` saying what is wrong with ``text``."""
    if not text.strip():
        raise EmitError(f"{where} is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise EmitError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EmitError(f"{where} must be a JSON object, not {type(data).__name__}")
    return data


def _scalar(text: str) -> Any:
    """A --property value: a JSON number/boolean/null if it reads as one, else the string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, bool | int | float) else text


def build_event(
    event_type: str | None,
    body: Mapping[str, Any] | None,
    fields: Mapping[str, Any],
    properties: list[str],
    now_ms: int,
) -> tuple[str, dict[str, Any]]:
    """Merge ``body`` (JSON) and ``fields`` (flags; set ones win) into one event.

    Returns (event type, payload). The type comes from ``event_type`` or the
    body's ``event_type``; ``event_id`` and ``ts`` are filled in when absent.
    """
    payload: dict[str, Any] = dict(body or {})
    declared = payload.get("event_type")
    if event_type and declared and declared != event_type:
        raise EmitError(f"the JSON says event_type {declared!r} but the command says {event_type!r}")
    event_type = event_type or declared
    if not event_type:
        raise EmitError("name the event type, e.g. `funnel emit visit --user u1`, "
                        'or put "event_type" in the JSON')
    if event_type not in EVENT_TYPES:
        raise EmitError(f"unknown event type {event_type!r}: one of {', '.join(EVENT_TYPES)}")
    payload.update({k: v for k, v in fields.items() if v is not None})
    if properties:
        props = dict(payload.get("properties") or {})
        for item in properties:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise EmitError(f"--property {item!r} must look like key=value")
            props[key] = _scalar(value)
        payload["properties"] = props
    if isinstance(payload.get("ts"), str) and payload["ts"].isdigit():
        payload["ts"] = int(payload["ts"])  # epoch milliseconds given as a flag
    payload.setdefault("event_id", str(uuid.uuid4()))
    payload.setdefault("ts", now_ms)
    payload["event_type"] = event_type
    return event_type, payload


# Pydantic's location parts that name a type, not a field ("properties.a.constrained-str").
_TYPE_TAG = re.compile(r"\.(?:constrained-\w+|function-[\w-]+\[[^\]]*\]|str|int|float|bool|none)(?=\.|:|$)")


def plain_words(exc: InvalidEvent) -> str:
    """The decoder's reason and detail as a sentence for people."""
    detail = _TYPE_TAG.sub("", exc.detail).replace("Value error, ", "")
    if exc.reason == "missing_field" and detail.endswith(": Field required"):
        detail = f"{detail.split(':', 1)[0]!r} is required"
    return f"{detail} (reason: {exc.reason})"


def validate(decoder: Decoder, event_type: str, payload: Mapping[str, Any], now_ms: int) -> bytes:
    """The bytes to send, after the ingest agent's own checks; :class:`EmitError` if they fail."""
    raw = json.dumps(payload, ensure_ascii=False).encode()
    try:
        decoder.decode(raw, event_type, now_ms)
    except InvalidEvent as exc:
        raise EmitError(f"invalid {event_type} event: {plain_words(exc)}") from None
    return raw


async def send(
    settings: Settings, topic: str, key: bytes, value: bytes, timeout_ms: int = 15000
) -> tuple[int, int]:
    """Send one message, wait for the broker's acknowledgement; return (partition, offset)."""
    if not settings.kafka_url:
        raise SendError("FUNNEL_KAFKA_URL is not set (e.g. kafka://localhost:9092)")
    await check_connection(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=split_brokers(settings.kafka_url), acks="all", request_timeout_ms=timeout_ms,
        enable_idempotence=False, **client_options(settings),
    )
    try:
        await producer.start()
        meta = await producer.send_and_wait(topic, value, key=key)
    except KafkaError as exc:
        raise SendError(f"cannot send to Kafka at {settings.kafka_url}: {exc}") from None
    finally:
        await producer.stop()
    return int(meta.partition), int(meta.offset)
