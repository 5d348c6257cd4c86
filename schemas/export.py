"""JSON Schema export for producers (``funnel schema --out DIR``)."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import EVENT_MODELS

__all__ = ["write_json_schemas"]


def write_json_schemas(out_dir: Path) -> list[Path]:
    """Write ``<event_type>.schema.json`` for every event type; return the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for event_type, model in EVENT_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$id"] = f"{event_type}.schema.json"
        path = out_dir / f"{event_type}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
