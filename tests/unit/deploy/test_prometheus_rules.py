"""Prometheus config, recording/alerting rules and their promtool unit tests."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    COUNTERS,
    DEFAULT_FUNNEL,
    DEFAULT_STAGES,
    GAUGES,
    HISTOGRAMS,
    PROMETHEUS_DIR,
    RULE_FILES,
    RULE_TEST_FILES,
    alerting_rules,
    load_yaml,
    recording_rules,
    rule_groups,
    run_tool,
    unknown_series,
)

import schemas
from schemas import EVENT_TYPES
from tests.named_stages import B2B, B2B_STAGES

SEVERITIES = {"critical", "warning", "info"}
COMPONENTS = {"funnel", "pipeline"}
# Alert labels that come from the data (not from the rule) and so must be
# named in the annotations for a notification to say what is affected.
DATA_LABELS = {"funnel", "stage", "from_stage", "to_stage", "sink", "instance"}
# level:metric:operations, level may be empty (":funnel_events:rate5m").
RECORDING_NAME = re.compile(r"^[a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")

ALERTS = {rule["alert"]: rule for rule in alerting_rules()}
RULE_FILES_BY_NAME = {path.name: path for path in RULE_FILES}


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    # From another directory: rule_files must resolve relative to the config.
    out = run_tool("promtool", "check", "config", PROMETHEUS_DIR / "prometheus.yml", cwd=tmp_path)
    assert f"{len(RULE_FILES)} rule files found" in out


def test_rule_files_are_valid() -> None:
    run_tool("promtool", "check", "rules", *RULE_FILES)


@pytest.mark.parametrize("path", RULE_TEST_FILES, ids=lambda path: path.name)
def test_rule_unit_tests_pass(path: Path) -> None:
    """deploy/prometheus/tests/*.yml: every alert firing and not firing, and the
    values of the recording rules."""
    run_tool("promtool", "test", "rules", path, timeout=120)


def test_there_are_rule_unit_tests() -> None:
    assert len(RULE_TEST_FILES) >= 5


def test_metric_list_matches_what_the_workers_register() -> None:
    """The names dashboards and rules are checked against (deploy_support) are
    the ones sinks.metrics.FunnelMetrics really registers, with the types
    that decide their suffixes."""
    from sinks.metrics import FunnelMetrics

    registered = {(m.name, m.type) for m in FunnelMetrics().registry.collect()}
    expected = {(name, "counter") for name in COUNTERS}
    expected |= {(name, "histogram") for name in HISTOGRAMS}
    expected |= {(name, "gauge") for name in GAUGES}
    assert registered == expected


def test_rules_use_only_exported_or_recorded_series() -> None:
    exprs = [rule["expr"] for group in rule_groups() for rule in group["rules"]]
    assert not unknown_series(exprs)


def test_recording_rule_names_follow_level_metric_operations() -> None:
    bad = sorted({r["record"] for r in recording_rules() if not RECORDING_NAME.match(r["record"])})
    assert not bad


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_labels_and_annotations(name: str) -> None:
    rule = ALERTS[name]
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["labels"]["component"] in COMPONENTS
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def _alert_tests() -> list[tuple[str, str, list[dict]]]:
    """(test group, alertname, expected alerts) of every alert_rule_test."""
    return [
        (f"{path.name}: {group.get('name', index)}", case["alertname"], case.get("exp_alerts", []))
        for path in RULE_TEST_FILES
        for index, group in enumerate(load_yaml(path)["tests"])
        for case in group.get("alert_rule_test", [])
    ]


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_every_alert_has_a_firing_and_a_silent_series_set(name: str) -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for group, alertname, expected in _alert_tests():
        if alertname == name:
            (firing if expected else silent).add(group)
    assert firing, f"no promtool test where {name} fires"
    assert silent - firing, f"no promtool series set on which {name} must stay silent"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_annotations_name_what_is_affected(name: str) -> None:
    """Every data label a firing test expects (funnel, stages, sink, ...) is
    templated into the summary or description."""
    text = " ".join(ALERTS[name]["annotations"].values())
    labels = {
        label
        for _, alertname, expected in _alert_tests()
        if alertname == name
        for alert in expected
        for label in alert.get("exp_labels", {})
    }
    missing = {label for label in labels & DATA_LABELS if f"$labels.{label}" not in text}
    assert not missing


def test_alerts_reference_no_unknown_alertnames_in_tests() -> None:
    assert {alertname for _, alertname, _ in _alert_tests()} <= set(ALERTS)


def test_unit_tests_order_every_rule_group() -> None:
    """promtool evaluates groups in random order unless told; alert groups read
    recorded series, so every test file pins the order of all groups."""
    for path in RULE_TEST_FILES:
        test_file = load_yaml(path)
        loaded = [
            group
            for rule_file in test_file["rule_files"]
            for group in load_yaml(path.parent / rule_file)["groups"]
        ]
        order = test_file.get("group_eval_order", [])
        assert sorted(order) == sorted(group["name"] for group in loaded), path.name
        position = {name: index for index, name in enumerate(order)}
        recording = [position[g["name"]] for g in loaded if any("record" in r for r in g["rules"])]
        alerting = [position[g["name"]] for g in loaded if any("alert" in r for r in g["rules"])]
        assert max(recording) < min(alerting, default=len(order)), path.name


def _step_labels(record: str) -> list[tuple[str, str, str]]:
    return [
        (r["labels"]["funnel"], r["labels"]["from_stage"], r["labels"]["to_stage"])
        for r in recording_rules()
        if r["record"] == record
    ]


def _monitored_steps(stages: tuple[str, ...]) -> set[tuple[str, str]]:
    """Adjacent stages plus the overall first -> last step."""
    return {*itertools.pairwise(stages), (stages[0], stages[-1])}


# A label matcher or a `labels:` entry that names a stage.
_STAGE_MATCHER = re.compile(r"\b(?:stage|from_stage|to_stage)\s*(?:=|!=|=~|!~)\s*[\"'`]")
STAGE_LABELS = {"stage", "from_stage", "to_stage"}


def test_no_rule_names_a_stage() -> None:
    """Stage names are configuration (and need not be event types): the step
    catalogue, conversions and alerts work from the names the workers export.
    Only the conversion floors, thresholds chosen per step, name stages."""
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            if name == "funnel_step:conversion_floor:ratio":
                continue
            assert not _STAGE_MATCHER.search(rule["expr"]), name
            assert not STAGE_LABELS & set(rule.get("labels", {})), name


def test_conversion_floors_are_fractions_of_monitored_steps() -> None:
    """The floor rows shipped for the built-in funnel name its monitored steps (rows for
    other funnels name theirs, which only their funnels file knows)."""
    floors = _step_labels("funnel_step:conversion_floor:ratio")
    assert len(floors) == len(set(floors))
    default = {(a, b) for funnel, a, b in floors if funnel == DEFAULT_FUNNEL}
    assert default and default <= _monitored_steps(DEFAULT_STAGES)
    for rule in recording_rules():
        if rule["record"] == "funnel_step:conversion_floor:ratio":
            match = re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"])
            assert match, rule
            assert 0 < float(match.group(1)) < 1


def test_default_stages_are_the_built_in_funnel() -> None:
    assert (schemas.DEFAULT_FUNNEL.name, schemas.DEFAULT_FUNNEL.names) == (DEFAULT_FUNNEL, DEFAULT_STAGES)


def test_the_step_catalogue_comes_from_what_workers_export(tmp_path: Path) -> None:
    """What a worker configured with the b2b and default funnels really exports
    (FunnelMetrics.declare, before any event) is all the rules need: the steps
    of each funnel are its adjacent stages and first -> last, by stage name,
    and the stages are numbered in funnel order."""
    from prometheus_client import CollectorRegistry

    from sinks.metrics import FunnelMetrics

    metrics = FunnelMetrics(CollectorRegistry(), ["seo", "ads"])
    metrics.declare([schemas.DEFAULT_FUNNEL, B2B])
    series = sorted(
        "funnel_transitions_total{" + ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}"
        for family in metrics.registry.collect() if family.name == "funnel_transitions"
        for s in family.samples if s.name == "funnel_transitions_total"
    )
    funnels = {f.name: f.names for f in (schemas.DEFAULT_FUNNEL, B2B)}
    pairs = {(f, a, b) for f, names in funnels.items() for a, b in itertools.combinations(names, 2)}
    assert len(series) == len(pairs) * 3  # seo, ads and other: the rules must not care
    steps = sorted((f, a, b) for f, names in funnels.items() for a, b in _monitored_steps(names))
    test_file = {
        "rule_files": [str(RULE_FILES_BY_NAME["recording.yml"])],
        "evaluation_interval": "1m",
        "group_eval_order": [g["name"] for g in load_yaml(RULE_FILES_BY_NAME["recording.yml"])["groups"]],
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": "0x10"} for s in series],
            "promql_expr_test": [
                {"expr": "funnel_step:steps:info", "eval_time": "5m", "exp_samples": [
                    {"labels": f'funnel_step:steps:info{{funnel="{f}",from_stage="{a}",to_stage="{b}"}}',
                     "value": 1} for f, a, b in steps]},
                {"expr": "funnel_stage:funnel_stages_before:count", "eval_time": "5m", "exp_samples": [
                    {"labels": f'funnel_stage:funnel_stages_before:count{{funnel="{f}",stage="{s}"}}',
                     "value": i} for f, names in funnels.items() for i, s in enumerate(names)]},
            ],
        }],
    }
    path = tmp_path / "declared.yml"
    path.write_text(yaml.safe_dump(test_file))
    run_tool("promtool", "test", "rules", path)


def _stage_values(labels: dict[str, str]) -> set[str]:
    return {v for k, v in labels.items() if k in STAGE_LABELS}


def test_rule_tests_run_on_stage_names_that_are_not_event_types() -> None:
    """deploy/prometheus/tests has recorded steps and a firing conversion alert
    on stages named otherwise than any event type (tests/named_stages.py)."""
    recorded: set[str] = set()
    alerted: set[str] = set()
    for path in RULE_TEST_FILES:
        for group in load_yaml(path)["tests"]:
            for case in group.get("promql_expr_test", []):
                for sample in case.get("exp_samples", []):
                    if sample["labels"].startswith("funnel_step:steps:info{"):
                        recorded |= set(re.findall(r'_stage="([^"]+)"', sample["labels"]))
            for case in group.get("alert_rule_test", []):
                if case["alertname"] in ("FunnelConversionBelowFloor", "FunnelStageConversionDrop"):
                    for alert in case.get("exp_alerts", []):
                        alerted |= _stage_values(alert.get("exp_labels", {}))
    named = set(B2B_STAGES) - set(EVENT_TYPES)
    assert named <= recorded
    assert alerted - set(EVENT_TYPES)


def test_period_conversion_sums_before_dividing() -> None:
    """Ratios divide summed increases; an avg() of ratios would weight a
    quiet channel like a busy one."""
    by_record = defaultdict(list)
    for rule in recording_rules():
        by_record[rule["record"]].append(rule["expr"])
    for window in ("5m", "1h"):
        (expr,) = by_record[f"funnel_step:funnel_period_conversion:ratio{window}"]
        assert f"funnel_step:funnel_to_stage_persons:increase{window}" in expr
        assert f"funnel_step:funnel_from_stage_persons:increase{window}" in expr
    assert not any("avg" in expr for exprs in by_record.values() for expr in exprs)


@pytest.mark.parametrize("window", ["5m", "1h"])
def test_persons_subtract_merged_and_excluded_entries(window: str) -> None:
    """Per stage, persons = entries - merged - excluded (sinks.metrics), as the page counts."""
    (expr,) = [r["expr"] for r in recording_rules()
               if r["record"] == f"funnel_stage:funnel_stage_persons:increase{window}"]
    assert f"funnel_stage:funnel_stage_entries:increase{window}" in expr
    for counter in ("funnel_stage_entries_merged_total", "funnel_stage_entries_excluded_total"):
        assert f"increase({counter}[{window}])" in expr
