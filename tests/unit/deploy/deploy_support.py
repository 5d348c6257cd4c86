"""Shared helpers for the deploy-config tests (tests/unit/deploy/test_*.py).

The deploy configs are validated with the real tools (promtool, amtool,
docker-compose) from Debian's packages. A missing tool FAILS the test with the
install command: a skipped check would look like a passing one in CI.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_DIR = DEPLOY / "alertmanager"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD_FILES = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
README = REPO / "README.md"

INSTALL_HINT = "apt-get install -y prometheus prometheus-alertmanager docker-compose"

# The stages of the built-in default funnel, in order (DESIGN.md).
DEFAULT_FUNNEL = "default"
DEFAULT_STAGES = ("visit", "signup", "webinar", "consultation", "purchase")

# What the workers export (sinks/metrics.py); dashboards and rules may use
# nothing else, apart from recorded series and Prometheus' own `up`.
COUNTERS = (
    "funnel_events",
    "funnel_invalid_events",
    "funnel_duplicate_events",
    "funnel_late_events",
    "funnel_stage_entries",
    "funnel_transitions",
    "funnel_revenue",
    "funnel_sink_rows",
    "funnel_sink_errors",
    "funnel_produce_retries",
    "funnel_dropoffs",
    "funnel_customers",
    "funnel_spend",
    "funnel_stage_entries_merged",
    "funnel_stage_entries_excluded",
    "funnel_identity_links",
    "funnel_identity_conflicts",
)
HISTOGRAMS = (
    "funnel_transition_duration_seconds",
    "funnel_sink_write_seconds",
    "funnel_event_lag_seconds",
)
GAUGES = ("funnel_stalled_users", "funnel_sink_pending_rows")
EXPORTED_SERIES = frozenset(
    [f"{name}_total" for name in COUNTERS]
    + [f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")]
    + list(GAUGES)
    + ["up"]
)


# --------------------------------------------------------------------------- tools


def run_tool(
    *args: str | os.PathLike[str], timeout: float = 60, context: str = "", **kwargs: Any
) -> str:
    """Runs a command line tool and returns its stdout; fails the test when the
    tool is missing or exits non-zero (its output, and `context`, are in the
    failure message)."""
    tool = str(args[0])
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` is not installed; install it with: {INSTALL_HINT}", pytrace=False)
    cmd = [path, *map(str, args[1:])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(cmd)}` did not finish within {timeout}s", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"`{' '.join(cmd)}` exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}\n{context}",
            pytrace=False,
        )
    return proc.stdout


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------ docker-compose

# Only what docker-compose needs: the defaults in the file must be enough.
MINIMAL_ENV = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}


def compose_config(env: Mapping[str, str] | None = None, *extra_files: Path) -> dict[str, Any]:
    """`docker-compose config` (interpolated, merged) parsed as YAML."""
    files: list[str] = []
    for path in (COMPOSE_FILE, *extra_files):
        files += ["-f", str(path)]
    out = run_tool(
        "docker-compose", *files, "config", cwd=REPO, env={**MINIMAL_ENV, **(env or {})}
    )
    return yaml.safe_load(out)


@functools.cache
def default_compose_config() -> dict[str, Any]:
    """The compose config with nothing set in the environment (cached: several
    test modules need it and docker-compose takes a second to start)."""
    return compose_config()


def compose_services() -> dict[str, dict[str, Any]]:
    return default_compose_config()["services"]


def bind_mounts(service: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts, as
    `docker-compose config` prints them (absolute source paths)."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield Path(volume["source"]), volume["target"]
            continue
        source, target, *_ = volume.split(":")
        if source.startswith("/"):
            yield Path(source), target


def container_path_of(service: Mapping[str, Any], host_path: Path) -> str:
    """Where a service sees a repository path (through its bind mounts)."""
    for source, target in bind_mounts(service):
        if host_path.resolve() == source.resolve():
            return target
    raise AssertionError(f"{host_path} is not mounted into the service")


# ------------------------------------------------------------------- Prometheus


def rule_groups() -> list[dict[str, Any]]:
    return [group for path in RULE_FILES for group in load_yaml(path)["groups"]]


def alerting_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recording_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "record" in rule]


def recorded_names() -> frozenset[str]:
    return frozenset(rule["record"] for rule in recording_rules())


def known_series_names() -> frozenset[str]:
    return EXPORTED_SERIES | recorded_names()


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier that does not continue a number or duration (`1w`, `1e3`).
_IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset(
    ("and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "offset", "bool", "inf", "nan")
)  # fmt: skip


def promql_series_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects. Not a parser (promtool checks
    syntax): strings, label matchers, ranges and label lists are removed, and
    what is left that is not a keyword or a function call is a metric name."""
    text = _STRING.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _BRACKETS.sub("", text)
    text = _LABEL_LISTS.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        if name.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(name)
    return names


def check_promql_parses(exprs: Mapping[str, str], tmp_path: Path) -> None:
    """Parses PromQL with promtool: each expression becomes a recording rule
    in a temporary rules file, and `promtool check rules` must accept it. The
    keys say where an expression comes from; a failure lists them by rule
    number, which is what promtool reports."""
    rules = [
        {"record": f"parse_check:expr_{i}:value", "expr": expr}
        for i, expr in enumerate(exprs.values())
    ]
    path = tmp_path / "promql-parse-check.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "parse_check", "rules": rules}]}))
    sources = "\n".join(f"rule {i + 1}: {source}" for i, source in enumerate(exprs))
    run_tool("promtool", "check", "rules", path, context=sources)


def unknown_series(exprs: Iterable[str]) -> set[str]:
    known = known_series_names()
    return {name for expr in exprs for name in promql_series_names(expr)} - known


def readme_production() -> str:
    """The README's "Production" section (up to the next top-level heading)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Production\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]
