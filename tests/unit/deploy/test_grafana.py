"""Grafana provisioning and dashboards: PromQL parses, uses exported series
only, variables are defined, data sources and mounts line up."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DASHBOARD_FILES,
    GRAFANA_DIR,
    check_promql_parses,
    compose_services,
    container_path_of,
    load_yaml,
    promql_series_names,
    unknown_series,
)

DASHBOARDS = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in DASHBOARD_FILES}
DATASOURCES = load_yaml(GRAFANA_DIR / "provisioning/datasources/datasources.yml")["datasources"]
PROVIDERS = load_yaml(GRAFANA_DIR / "provisioning/dashboards/funnel.yml")["providers"]

# Grafana's own variables, with values that make the query valid PromQL.
BUILTIN_VARIABLES = {"__range": "1h", "__rate_interval": "1m", "__interval": "15s"}
# Values for the dashboards' template variables (any valid value will do).
SAMPLE_VALUES = {"funnel": "default", "channel": ".*", "from_stage": "visit",
                 "to_stage": "purchase", "instance": ".*"}  # fmt: skip
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def _variable_query(var: dict[str, Any]) -> str:
    query = var["query"]
    return query["query"] if isinstance(query, dict) else query


def _substitute(text: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return {**BUILTIN_VARIABLES, **SAMPLE_VALUES}[name]

    return VARIABLE.sub(value, text)


def _exprs(uid: str) -> dict[str, str]:
    """Every PromQL expression of a dashboard, variables substituted, keyed by
    where it comes from. Variable queries contribute their series selector."""
    dashboard = DASHBOARDS[uid]
    exprs = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            exprs[f"{uid} / {panel['title']} / {target['refId']}"] = _substitute(target["expr"])
    for name, var in _variables(dashboard).items():
        match = LABEL_VALUES.match(_variable_query(var))
        assert match, f"{uid}: variable {name} is not a label_values() query"
        if match["selector"]:
            exprs[f"{uid} / ${name}"] = _substitute(match["selector"])
    return exprs


def _used_variables(dashboard: dict[str, Any]) -> set[str]:
    texts = [panel["title"] for panel in _panels(dashboard)]
    texts += [t["expr"] for panel in _panels(dashboard) for t in panel.get("targets", [])]
    texts += [_variable_query(var) for var in _variables(dashboard).values()]
    return {m.group(1) or m.group(2) for text in texts for m in VARIABLE.finditer(text)}


def test_both_dashboards_exist() -> None:
    assert {uid: d["title"] for uid, d in DASHBOARDS.items()} == {
        "funnel-live": "Funnel live",
        "pipeline-health": "Pipeline health",
    }
    assert all(d["uid"] == uid for uid, d in DASHBOARDS.items())


def test_all_promql_parses(tmp_path: Path) -> None:
    exprs = {source: expr for uid in DASHBOARDS for source, expr in _exprs(uid).items()}
    assert len(exprs) > 30
    check_promql_parses(exprs, tmp_path)


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboards_use_only_exported_or_recorded_series(uid: str) -> None:
    assert not unknown_series(_exprs(uid).values())


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_variable_is_defined(uid: str) -> None:
    dashboard = DASHBOARDS[uid]
    defined = set(_variables(dashboard)) | set(BUILTIN_VARIABLES)
    assert _used_variables(dashboard) <= defined
    assert set(_variables(dashboard)) <= set(SAMPLE_VALUES)


def test_funnel_live_has_funnel_and_channel_variables() -> None:
    variables = _variables(DASHBOARDS["funnel-live"])
    assert "funnel" in _variable_query(variables["funnel"])
    channel = variables["channel"]
    assert channel["multi"] and channel["includeAll"] and channel["allValue"] == ".*"
    assert 'funnel="$funnel"' in _variable_query(channel)


# What each dashboard must show (issue 3), as (panel type, series the panel
# reads, a fragment its query must contain).
REQUIRED_PANELS = {
    "funnel-live": [
        ("bargauge", "funnel_stage_entries_total", "by (stage)"),
        ("bargauge", "funnel_step:funnel_period_conversion:ratio1h", ""),
        ("stat", "funnel_stage_entries_total", 'stage="$to_stage"'),
        ("timeseries", "funnel_step:funnel_period_conversion:ratio1h", "offset 1w"),
        ("bargauge", "funnel_transition_duration_seconds_bucket", "histogram_quantile(0.9"),
        ("timeseries", "funnel_transition_duration_seconds_bucket", "histogram_quantile(0.5"),
        ("bargauge", "funnel_stage_entries_total", "by (channel)"),
        ("bargauge", "funnel_stalled_users", "by (stage)"),
    ],
    "pipeline-health": [
        ("timeseries", "funnel_events_total", "by (event_type)"),
        ("timeseries", "funnel_invalid_events_total", "by (reason)"),
        ("timeseries", "funnel_event_lag_seconds_bucket", "histogram_quantile(0.99"),
        ("timeseries", "funnel_sink_rows_total", "by (sink, table)"),
        ("timeseries", "funnel_sink_errors_total", "rate("),
        ("timeseries", "funnel_sink_pending_rows", "by (sink, instance)"),
        ("state-timeline", "up", 'job="funnel-worker"'),
    ],
}


@pytest.mark.parametrize(
    ("uid", "kind", "series", "fragment"),
    [(uid, *panel) for uid, panels in REQUIRED_PANELS.items() for panel in panels],
)
def test_required_panel(uid: str, kind: str, series: str, fragment: str) -> None:
    for panel in _panels(DASHBOARDS[uid]):
        for target in panel.get("targets", []):
            if (
                panel["type"] == kind
                and series in promql_series_names(_substitute(target["expr"]))
                and fragment in target["expr"]
            ):
                return
    pytest.fail(f"{uid}: no {kind} panel reading {series} with {fragment!r}")


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panels_do_not_overlap(uid: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(DASHBOARDS[uid]):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_panels_use_provisioned_datasources(uid: str) -> None:
    provisioned = {ds["uid"] for ds in DATASOURCES}
    dashboard = DASHBOARDS[uid]
    refs = [panel.get("datasource") for panel in _panels(dashboard)]
    refs += [t.get("datasource") for panel in _panels(dashboard) for t in panel["targets"]]
    refs += [var.get("datasource") for var in _variables(dashboard).values()]
    assert {ref["uid"] for ref in refs if ref} <= provisioned


def test_datasources_point_at_compose_services() -> None:
    services = compose_services()
    by_type = {ds["type"]: ds for ds in DATASOURCES}
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"
    assert by_type["alertmanager"]["url"] == "http://alertmanager:9093"
    clickhouse = by_type["grafana-clickhouse-datasource"]
    assert clickhouse["jsonData"]["host"] in services
    assert clickhouse["jsonData"]["port"] == 8123
    grafana = services["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    # `$VAR` in provisioning files is expanded from Grafana's environment.
    referenced = set(re.findall(r"\$(\w+)", json.dumps(clickhouse)))
    assert referenced and referenced <= set(grafana["environment"])


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    grafana = compose_services()["grafana"]
    (provider,) = PROVIDERS
    assert provider["options"]["path"] == container_path_of(grafana, GRAFANA_DIR / "dashboards")
    for kind in ("datasources", "dashboards"):
        target = container_path_of(grafana, GRAFANA_DIR / "provisioning" / kind)
        assert target == f"/etc/grafana/provisioning/{kind}"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/funnel-live.json"
