"""Grafana provisioning and dashboards: PromQL parses, uses exported series
only, variables are defined, data sources and mounts line up."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    DASHBOARD_FILES,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    check_promql_parses,
    compose_services,
    container_path_of,
    load_yaml,
    promql_series_names,
    run_tool,
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
QUERY_RESULT = re.compile(r"^query_result\((?P<query>.+)\)$")


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
        query = _variable_query(var)
        match = LABEL_VALUES.match(query) or QUERY_RESULT.match(query)
        assert match, f"{uid}: variable {name} is not a label_values() or query_result() query"
        selector = match.groupdict().get("selector") or match.groupdict().get("query")
        if selector:
            exprs[f"{uid} / ${name}"] = _substitute(selector)
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


# A stage label matched against anything but a dashboard variable.
_STAGE_LITERAL = re.compile(r'\b(?:stage|from_stage|to_stage)\s*(?:=|!=|=~|!~)\s*"(?!\$)')


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_no_query_names_a_stage(uid: str) -> None:
    """Stage names are configuration (and need not be event types): panels select
    stages through the stage pickers or not at all, and no picker has a stage preset."""
    dashboard = DASHBOARDS[uid]
    texts = [t["expr"] for panel in _panels(dashboard) for t in panel.get("targets", [])]
    texts += [_variable_query(var) for var in _variables(dashboard).values()]
    assert not [text for text in texts if _STAGE_LITERAL.search(text)]
    for name in ("from_stage", "to_stage"):
        assert not _variables(dashboard).get(name, {}).get("current")


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


# -- the funnel-live dashboard on a funnel whose stage names are not event types -------------
# A worker configured with the default and the b2b funnel (tests/named_stages.py) exports
# every bounded label set at 0 (FunnelMetrics.declare); on top of that, 90 minutes of b2b
# traffic per minute. Persons per stage (entries - merged - excluded) are 80 visit, 40 pricing,
# 16 lead, 8 mql and 1 won a minute; on entries alone every ratio would differ.
B2B_VALUES = {"funnel": "b2b", "channel": ".*", "from_stage": "pricing", "to_stage": "won",
              "instance": ".*", "__range": "1h", "__rate_interval": "5m", "__interval": "1m"}  # fmt: skip
B2B_MINUTES = 90
B2B_PER_MINUTE: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
    ("funnel_stage_entries_total", (("channel", "seo"), ("stage", "visit"))): 60,
    ("funnel_stage_entries_total", (("channel", "ads"), ("stage", "visit"))): 40,
    ("funnel_stage_entries_merged_total", (("stage", "visit"),)): 20,
    ("funnel_stage_entries_total", (("channel", "seo"), ("stage", "pricing"))): 40,
    ("funnel_stage_entries_total", (("channel", "seo"), ("stage", "lead"))): 12,
    ("funnel_stage_entries_total", (("channel", "ads"), ("stage", "lead"))): 8,
    ("funnel_stage_entries_merged_total", (("stage", "lead"),)): 2,
    ("funnel_stage_entries_excluded_total", (("stage", "lead"),)): 2,
    ("funnel_stage_entries_total", (("channel", "seo"), ("stage", "mql"))): 11,
    ("funnel_stage_entries_excluded_total", (("stage", "mql"),)): 3,
    ("funnel_stage_entries_total", (("channel", "seo"), ("stage", "won"))): 1.5,
    ("funnel_stage_entries_excluded_total", (("stage", "won"),)): 0.5,
    ("funnel_transitions_total", (("channel", "seo"), ("from_stage", "visit"), ("to_stage", "pricing"))): 40,
    ("funnel_transitions_total", (("channel", "seo"), ("from_stage", "lead"), ("to_stage", "mql"))): 8,
    ("funnel_dropoffs_total", (("channel", "seo"), ("stage", "pricing"))): 4,
    ("funnel_transition_duration_seconds_count", (("from_stage", "lead"), ("to_stage", "mql"))): 8,
    ("funnel_transition_duration_seconds_sum", (("from_stage", "lead"), ("to_stage", "mql"))): 8 * 600,
}
#: Not declared by a worker (currency and temperature come with the data).
B2B_EXTRA_SERIES = {
    'funnel_revenue_total{funnel="b2b",channel="seo",currency="EUR"}': "0+100x90",
    'funnel_stalled_users{funnel="b2b",stage="mql",temperature="hot"}': "5x90",
}


def _b2b_input_series() -> list[dict[str, str]]:
    from prometheus_client import CollectorRegistry

    from schemas import DEFAULT_FUNNEL
    from sinks.metrics import FunnelMetrics
    from tests.named_stages import B2B

    metrics = FunnelMetrics(CollectorRegistry(), ["seo", "ads"])
    metrics.declare([DEFAULT_FUNNEL, B2B])
    series = []
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = dict(sample.labels)
            per_minute = 0.0
            if labels.get("funnel") == "b2b":
                key = tuple(sorted((k, v) for k, v in labels.items() if k not in ("funnel", "le")))
                per_minute = B2B_PER_MINUTE.get((sample.name, key), 0.0)
                if sample.name == "funnel_transition_duration_seconds_bucket" and float(labels["le"]) >= 600:
                    per_minute = B2B_PER_MINUTE.get(
                        ("funnel_transition_duration_seconds_count", key), 0.0)  # every one took 600 s
            text = ",".join(f'{k}="{v}"' for k, v in labels.items())
            series.append({"series": f"{sample.name}{{{text}}}", "values": f"0+{per_minute}x{B2B_MINUTES}"})
    series += [{"series": s, "values": v} for s, v in B2B_EXTRA_SERIES.items()]
    return series


def _samples(name: str, values: dict[tuple[tuple[str, str], ...], float]) -> list[dict[str, Any]]:
    return [{"labels": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}", "value": value}
            for labels, value in values.items()]


def _b2b_expr(text: str, **values: str) -> str:
    chosen = {**B2B_VALUES, **values}
    return VARIABLE.sub(lambda m: chosen[m.group(1) or m.group(2)], text)


def _panel(uid: str, title_start: str) -> dict[str, Any]:
    (found,) = [p for p in _panels(DASHBOARDS[uid]) if p["title"].startswith(title_start)]
    return found


def test_funnel_live_on_stage_names_that_are_not_event_types(tmp_path: Path) -> None:
    """Every panel and stage picker of Funnel live shows the b2b funnel (stages visit, pricing,
    lead, mql, won: event types visit, signup, purchase) with the real rules and what a worker
    exports: nothing assumes a stage is an event type or one of the default funnel's stages."""
    from tests.named_stages import B2B_STAGES

    dashboard = DASHBOARDS["funnel-live"]
    at = f"{B2B_MINUTES}m"
    cases: list[dict[str, Any]] = []
    # Every panel has data for b2b (absent() of a query with data is empty); last week's
    # baseline is the same query a week earlier, when this data set has none.
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            expr = _b2b_expr(target["expr"]).replace(" offset 1w", "")
            cases.append({"expr": f"absent({expr})", "eval_time": at, "exp_samples": []})
    # The stage pickers list b2b's stages, in funnel order: from the first, to the last by default.
    variables = _variables(dashboard)
    for name, order in (("from_stage", "sort("), ("to_stage", "sort_desc(")):
        query = _variable_query(variables[name])
        match = QUERY_RESULT.match(query)
        assert match and match["query"].startswith(order), query
        assert variables[name]["sort"] == 0 and not variables[name].get("current")
        found = re.search(variables[name]["regex"].strip("/"), 'x{funnel="b2b", stage="mql"} 3')
        assert found and found.group(1) == "mql"
        cases.append({"expr": f"max by (stage) ({_b2b_expr(match['query'])})", "eval_time": at,
                      "exp_samples": _samples("", {(("stage", s),): i for i, s in enumerate(B2B_STAGES)})})
    channel = LABEL_VALUES.match(_variable_query(variables["channel"]))
    assert channel
    cases.append({"expr": f"group by (channel) ({_b2b_expr(channel['selector'])})", "eval_time": at,
                  "exp_samples": _samples("", {(("channel", c),): 1 for c in ("ads", "other", "seo")})})
    # Persons per stage: merged and excluded entries taken off with all channels selected ...
    persons = _panel("funnel-live", "Persons per stage")["targets"][0]["expr"]
    hour = {"visit": 4800, "pricing": 2400, "lead": 960, "mql": 480, "won": 60}
    cases.append({"expr": _b2b_expr(persons), "eval_time": at,
                  "exp_samples": _samples("", {(("stage", s),): n for s, n in hour.items()})})
    # ... not with one channel (they are not counted per channel): that channel's entries.
    ads = {"visit": 2400, "pricing": 0, "lead": 480, "mql": 0, "won": 0}
    cases.append({"expr": _b2b_expr(persons, channel="ads"), "eval_time": at,
                  "exp_samples": _samples("", {(("stage", s),): n for s, n in ads.items()})})
    # Conversion between the two picked stages (pricing -> won): persons.
    conversion = _panel("funnel-live", "Conversion $from_stage → $to_stage (selected")["targets"][0]["expr"]
    cases.append({"expr": _b2b_expr(conversion), "eval_time": at,
                  "exp_samples": _samples("", {(("funnel", "b2b"),): 60 / 2400})})
    # Stage-to-stage conversion: b2b's adjacent steps and first -> last, by name.
    steps = _panel("funnel-live", "Stage-to-stage conversion")["targets"][0]["expr"]
    ratios = {("visit", "pricing"): 0.5, ("pricing", "lead"): 0.4, ("lead", "mql"): 0.5,
              ("mql", "won"): 0.125, ("visit", "won"): 0.0125}
    cases.append({"expr": _b2b_expr(steps), "eval_time": at, "exp_samples": _samples(
        "funnel_step:funnel_period_conversion:ratio1h",
        {(("funnel", "b2b"), ("from_stage", a), ("to_stage", b)): r for (a, b), r in ratios.items()})})

    rules = PROMETHEUS_DIR / "rules" / "recording.yml"
    test_file = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "group_eval_order": [group["name"] for group in load_yaml(rules)["groups"]],
        "tests": [{"interval": "1m", "input_series": _b2b_input_series(), "promql_expr_test": cases}],
    }
    path = tmp_path / "funnel-live-b2b.yml"
    path.write_text(yaml.safe_dump(test_file, allow_unicode=True))
    run_tool("promtool", "test", "rules", path, timeout=120)
