"""What each part of the project may import (read from the source, every import statement).

- ``schemas/`` is pydantic models and decoding: the standard library, pydantic
  and orjson only, and no other package of the project.
- ``sinks/`` knows nothing of Faust or Kafka, nor of ``streams/``.
- The funnel logic (journeys, windows, deadlines and stalls, rows) imports
  neither Faust nor Kafka, ClickHouse or Prometheus: it is unit-tested alone.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The funnel logic: pure functions and data structures over events and journeys.
PURE = tuple(f"streams/funnel/{name}.py" for name in ("journey", "windows", "lifecycle", "rows"))
SCHEMAS_MAY_USE = {"pydantic", "pydantic_core", "orjson", "typing_extensions", "schemas"}
FRAMEWORKS = {"faust", "mode", "aiokafka", "clickhouse_connect", "chdb", "prometheus_client"}


def imports(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports (relative imports resolved to the project's)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package the file is in, up level - 1 packages
                parts = path.relative_to(ROOT).parent.parts
                package = ".".join(parts[: len(parts) - node.level + 1])
                if node.module:
                    found.add(f"{package}.{node.module}")
                else:  # from . import a, b
                    found.update(f"{package}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize("path", sorted((ROOT / "schemas").glob("*.py")), ids=lambda p: p.name)
def test_schemas_use_pydantic_only(path: Path) -> None:
    assert _top(imports(path)) <= SCHEMAS_MAY_USE


@pytest.mark.parametrize("path", sorted((ROOT / "sinks").glob("*.py")), ids=lambda p: p.name)
def test_sinks_know_nothing_of_faust_or_streams(path: Path) -> None:
    assert not _top(imports(path)) & {"faust", "mode", "aiokafka", "streams"}


@pytest.mark.parametrize("name", PURE)
def test_the_funnel_logic_imports_no_framework(name: str) -> None:
    found = imports(ROOT / name)
    assert not _top(found) & (FRAMEWORKS | {"sinks"})
    project = {module for module in found if module.split(".")[0] == "streams"}
    assert project <= {p.removesuffix(".py").replace("/", ".") for p in PURE}


def test_the_rules_see_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads imports inside functions too."""
    (tmp_path / "streams" / "funnel").mkdir(parents=True)
    module = tmp_path / "streams" / "funnel" / "journey.py"
    module.write_text("def f():\n    from faust import Table\n    from .. import pipeline\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imports(module) == {"faust", "streams.pipeline"}
    with pytest.raises(AssertionError):
        test_the_funnel_logic_imports_no_framework("streams/funnel/journey.py")
