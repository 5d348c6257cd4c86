"""What each part of the project may import (read from the source, every import statement).

- ``schemas/`` is pydantic models and decoding: the standard library, pydantic
  and orjson only, and no other package of the project.
- ``sinks/`` knows nothing of Faust or Kafka, nor of ``streams/``.
- The funnel logic (``streams/funnel/``: journeys, windows, deadlines and
  stalls, rows) imports neither Faust nor Kafka, ClickHouse or Prometheus, and
  nothing of ``streams/`` outside itself: it is unit-tested alone.
- Faust's internals (anything but its public ``faust``, ``faust.types`` and
  ``faust.exceptions`` names) are imported in ``streams/faust_adapt/`` only:
  upgrading Faust means reading that folder.
- The adaptations know nothing of the funnel, the agents or the wiring; the
  agents nothing of the wiring, the web server or the tools; the web server
  reads a worker through a protocol, not the pipeline.
- No import cycles between the project's modules.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "sinks", "streams")

SCHEMAS_MAY_USE = {"pydantic", "pydantic_core", "orjson", "typing_extensions", "schemas"}
FRAMEWORKS = {"faust", "mode", "aiokafka", "clickhouse_connect", "chdb", "prometheus_client"}
#: Faust's public API: the rest are internals, for streams/faust_adapt/ only.
FAUST_PUBLIC = {"faust", "faust.types", "faust.exceptions"}

#: package -> project packages it must not import
FORBIDDEN = {
    "streams.faust_adapt": ("streams.funnel", "streams.agents", "streams.pipeline", "streams.web",
                            "streams.tools", "streams.reports", "streams.bench"),
    "streams.agents": ("streams.pipeline", "streams.web", "streams.tools", "streams.reports",
                       "streams.bench"),
    "streams.web": ("streams.pipeline", "streams.agents", "streams.tools", "streams.bench"),
    "streams.reports": ("streams.pipeline", "streams.agents", "streams.faust_adapt", "streams.tools",
                        "streams.web"),
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path | None = None) -> set[str]:
    """Every name ``path`` imports: ``import a.b`` gives a.b, ``from a import b`` gives a and a.b.

    Relative imports are resolved from the package the file is in. Imports
    inside functions and ``if TYPE_CHECKING`` blocks count too.
    """
    root = root or ROOT
    found: set[str] = set()
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package the file is in, up level - 1 packages
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _top(names: Iterable[str]) -> set[str]:
    return {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"__future__"}


def _sources(package: str, root: Path | None = None) -> list[Path]:
    return sorted((root or ROOT).joinpath(*package.split(".")).rglob("*.py"))


def _ids(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", _sources("schemas"), ids=_ids)
def test_schemas_use_pydantic_only(path: Path) -> None:
    assert _top(imports(path)) <= SCHEMAS_MAY_USE


@pytest.mark.parametrize("path", _sources("sinks"), ids=_ids)
def test_sinks_know_nothing_of_faust_or_streams(path: Path) -> None:
    assert not _top(imports(path)) & {"faust", "mode", "aiokafka", "streams"}


@pytest.mark.parametrize("path", _sources("streams.funnel"), ids=_ids)
def test_the_funnel_logic_imports_no_framework(path: Path) -> None:
    found = imports(path)
    assert not _top(found) & (FRAMEWORKS | {"sinks"})
    project = {name for name in found if name.split(".")[0] == "streams"}
    assert all(name.startswith("streams.funnel") for name in project), sorted(project)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a name inside a module, not a module
        return False


@pytest.mark.parametrize("path", [p for package in PACKAGES for p in _sources(package)
                                  if "faust_adapt" not in p.parts], ids=_ids)
def test_faust_internals_are_adapted_in_one_folder(path: Path) -> None:
    # ``from faust import Stream`` names a public class; ``from faust import streams`` a module.
    internal = {name for name in imports(path)
                if name.split(".")[0] in {"faust", "mode"} and name not in FAUST_PUBLIC
                and (name.rpartition(".")[0] not in FAUST_PUBLIC or _is_module(name))}
    assert not internal, f"{_ids(path)} imports Faust's internals {sorted(internal)}: adapt them in " \
                         "streams/faust_adapt/"


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_is_below_it(package: str) -> None:
    for path in _sources(package):
        wrong = {name for name in imports(path) for banned in FORBIDDEN[package]
                 if name == banned or name.startswith(banned + ".")}
        assert not wrong, f"{_ids(path)} imports {sorted(wrong)}"


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Project module -> the project modules importing it runs (a package's ``__init__`` is the package).

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: those are edges too.
    """
    paths = {module_name(path, root): path for package in packages for path in _sources(package, root)}

    def with_parents(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}

    return {name: {run for found in imports(path, root) if found in paths
                   for run in with_parents(found) if run in paths and run != name
                   and not name.startswith(run + ".")}  # a module's own packages ran before it
            for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: each strongly connected set of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50  # the whole project was read
    assert cycles(graph) == []


def test_the_rules_see_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks read imports inside functions too, resolve relative ones, and find a cycle."""
    funnel = tmp_path / "streams" / "funnel"
    funnel.mkdir(parents=True)
    (tmp_path / "streams" / "__init__.py").write_text("")
    (funnel / "__init__.py").write_text("")
    module = funnel / "journey.py"
    module.write_text("def f():\n    from faust.streams import current_event\n    from .. import pipeline\n")
    (tmp_path / "streams" / "pipeline.py").write_text("from streams.funnel.journey import f\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imports(module) == {"faust.streams", "faust.streams.current_event", "streams",
                               "streams.pipeline"}
    with pytest.raises(AssertionError):
        test_the_funnel_logic_imports_no_framework(module)
    with pytest.raises(AssertionError, match="Faust's internals"):
        test_faust_internals_are_adapted_in_one_folder(module)
    assert cycles(import_graph(tmp_path, ["streams"])) == [["streams.funnel.journey", "streams.pipeline"]]
    # A cycle through a package's __init__, which importing any of its modules runs.
    (tmp_path / "streams" / "pipeline.py").write_text("")
    module.write_text("")
    (funnel / "__init__.py").write_text("from streams.funnel import journey\n")
    (tmp_path / "streams" / "web.py").write_text("from streams.funnel import journey\n")
    (funnel / "journey.py").write_text("import streams.web\n")
    assert cycles(import_graph(tmp_path, ["streams"])) == [["streams.funnel", "streams.funnel.journey",
                                                            "streams.web"]]
