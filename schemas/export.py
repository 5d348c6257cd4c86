"""JSON Schema export for producers (``funnel schema --out DIR``)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import EVENT_MODELS

__all__ = ["IDENTITY_RULE", "write_json_schemas"]

#: At least one of the two ids, as a string (the models allow either to be
#: absent or null; schemas.decode rejects an event with neither).
IDENTITY_RULE = {"anyOf": [{"required": [name], "properties": {name: {"type": "string"}}}
                           for name in ("user_id", "anonymous_id")]}


def write_json_schemas(out_dir: Path) -> list[Path]:
    """Write ``<event_type>.schema.json`` for every event type; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"{event_type}.schema.json"
        schema.update(IDENTITY_RULE)
        path = out_dir / f"{event_type}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
