"""The README's configuration table lists every setting, with its default."""

from __future__ import annotations

import re
from pathlib import Path

from streams.settings import Settings

README = Path(__file__).resolve().parents[3] / "README.md"


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    rows = dict(re.findall(r"^\| `(FUNNEL_[A-Z_]+)` \| ([^|]*) \|", README.read_text(), re.M))
    for name, field in Settings.model_fields.items():
        env = f"FUNNEL_{name.upper()}"
        assert env in rows, f"{env} is missing from the README configuration table"
        assert field.description and field.description.startswith(f"{env}:"), name
        default = "" if field.default is None else f"`{field.default}`"
        assert rows[env].strip() == default, f"{env}: README says {rows[env]!r}, code {default!r}"
