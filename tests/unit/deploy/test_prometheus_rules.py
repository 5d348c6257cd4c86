"""Prometheus config, recording/alerting rules and their promtool unit tests."""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from pathlib import Path

import pytest
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

SEVERITIES = {"critical", "warning", "info"}
COMPONENTS = {"funnel", "pipeline"}
# Alert labels that come from the data (not from the rule) and so must be
# named in the annotations for a notification to say what is affected.
DATA_LABELS = {"funnel", "stage", "from_stage", "to_stage", "sink", "instance"}
# level:metric:operations, level may be empty (":funnel_events:rate5m").
RECORDING_NAME = re.compile(r"^[a-z_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")

ALERTS = {rule["alert"]: rule for rule in alerting_rules()}


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


def test_default_funnel_steps_are_adjacent_stages_plus_overall() -> None:
    steps = _step_labels("funnel_step:steps:info")
    assert len(steps) == len(set(steps))
    adjacent = list(itertools.pairwise(DEFAULT_STAGES))
    overall = (DEFAULT_STAGES[0], DEFAULT_STAGES[-1])
    default_steps = [(a, b) for funnel, a, b in steps if funnel == DEFAULT_FUNNEL]
    assert default_steps == [*adjacent, overall]


def test_conversion_floors_are_fractions_of_monitored_steps() -> None:
    floors = _step_labels("funnel_step:conversion_floor:ratio")
    assert len(floors) == len(set(floors))
    assert set(floors) <= set(_step_labels("funnel_step:steps:info"))
    for rule in recording_rules():
        if rule["record"] == "funnel_step:conversion_floor:ratio":
            match = re.fullmatch(r"vector\(([\d.]+)\)", rule["expr"])
            assert match, rule
            assert 0 < float(match.group(1)) < 1


def test_period_conversion_sums_before_dividing() -> None:
    """Ratios divide summed increases; an avg() of ratios would weight a
    quiet channel like a busy one."""
    by_record = defaultdict(list)
    for rule in recording_rules():
        by_record[rule["record"]].append(rule["expr"])
    for window in ("5m", "1h"):
        (expr,) = by_record[f"funnel_step:funnel_period_conversion:ratio{window}"]
        assert f"funnel_step:funnel_to_stage_entries:increase{window}" in expr
        assert f"funnel_step:funnel_from_stage_entries:increase{window}" in expr
    assert not any("avg" in expr for exprs in by_record.values() for expr in exprs)
