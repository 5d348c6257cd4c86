"""JSON Schema export for producers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema

from schemas import EVENT_TYPES, write_json_schemas

ENVELOPE_REQUIRED = {"event_id", "ts"}


def refs(node: Any) -> list[str]:
    """Every ``$ref`` in a schema document."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_one_schema_per_event_type(tmp_path: Path) -> None:
    out = tmp_path / "schemas"  # created on demand
    written = write_json_schemas(out)
    assert written == [out / f"{t}.schema.json" for t in EVENT_TYPES]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{t}.schema.json" for t in EVENT_TYPES)


def test_schemas_are_json_schema_objects_with_envelope_fields(tmp_path: Path) -> None:
    for event_type, path in zip(EVENT_TYPES, write_json_schemas(tmp_path), strict=True):
        schema = json.loads(path.read_text())
        assert schema["$id"] == f"{event_type}.schema.json"
        assert schema["type"] == "object"
        assert set(schema["required"]) >= ENVELOPE_REQUIRED, event_type
        assert set(schema["required"]) <= set(schema["properties"])
        assert schema["properties"]["event_type"]["const"] == event_type
        assert schema["properties"]["event_id"]["format"] == "uuid"
        for ref in refs(schema):  # every reference resolves inside the document
            assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"]


def test_purchase_schema_requires_amount_and_currency(tmp_path: Path) -> None:
    write_json_schemas(tmp_path)
    purchase = json.loads((tmp_path / "purchase.schema.json").read_text())
    assert set(purchase["required"]) == ENVELOPE_REQUIRED | {"amount", "currency"}
    visit = json.loads((tmp_path / "visit.schema.json").read_text())
    assert set(visit["required"]) == ENVELOPE_REQUIRED


def test_schemas_require_a_user_id_or_an_anonymous_id(tmp_path: Path) -> None:
    write_json_schemas(tmp_path)
    visit = json.loads((tmp_path / "visit.schema.json").read_text())
    base = {"event_id": "5b0d7c1e-8f3a-4c55-9d2e-1a2b3c4d5e6f", "ts": "2026-01-31T12:00:00Z"}
    for ids in ({"user_id": "u1"}, {"anonymous_id": "a1"}, {"user_id": "u1", "anonymous_id": "a1"},
                {"user_id": None, "anonymous_id": "a1"}):
        jsonschema.validate({**base, **ids}, visit)
    for ids in ({}, {"user_id": None}, {"user_id": None, "anonymous_id": None}):
        try:
            jsonschema.validate({**base, **ids}, visit)
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"accepted {ids}")
