"""streams.bench.report: figures, ratios, the printed lines and JSON, the progress line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from streams.bench import cli
from streams.bench.report import Figure, Progress, Report


# -- figures, ratios, output --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "text"),
    [(312_345.6, "312346"), (1458.2, "1458"), (100.0, "100"), (42.345, "42.3"), (1.234, "1.23"),
     (0.0204, "0.0204"), (0.42, "0.420"), (0.0, "0"), (float("nan"), "nan")],
)
def test_figure_line_has_three_significant_digits(value: float, text: str) -> None:
    assert Figure("x", value, "s").line() == f"x: {text} s"


def report_with(**values: float) -> Report:
    report = Report()
    for name, value in values.items():
        report.add(name, value, "events/s")
    return report


def test_ratios_against_ceiling_and_naive() -> None:
    report = report_with(ceiling_events_per_s=300_000, naive_events_per_s=3_000,
                         pipeline_events_per_s=60_000)
    assert [(f.name, f.value, f.unit) for f in report.ratios()] == [
        ("pipeline_over_ceiling", 0.2, "x"), ("pipeline_over_naive", 20.0, "x")]
    assert report.lines()[-2:] == ["pipeline_over_ceiling: 0.200 x", "pipeline_over_naive: 20.0 x"]


@pytest.mark.parametrize(
    "values",
    [{"pipeline_events_per_s": 1.0}, {"ceiling_events_per_s": 1.0},
     {"pipeline_events_per_s": 1.0, "naive_events_per_s": 0.0}],
    ids=["no-baselines", "no-pipeline", "zero-baseline"],
)
def test_ratios_need_both_figures(values: dict[str, float]) -> None:
    assert report_with(**values).ratios() == []


def test_lines_are_name_value_unit_in_measuring_order() -> None:
    report = report_with(ceiling_events_per_s=2.0, pipeline_events_per_s=1.0)
    report.add("rss_rocksdb_store_10000_users", 512.4, "MiB")
    assert report.lines() == [
        "ceiling_events_per_s: 2.00 events/s", "pipeline_events_per_s: 1.00 events/s",
        "rss_rocksdb_store_10000_users: 512 MiB", "pipeline_over_ceiling: 0.500 x"]


def test_json_holds_figures_ratios_and_context(tmp_path: Path) -> None:
    report = report_with(ceiling_events_per_s=10.0, pipeline_events_per_s=5.0)
    report.machine, report.sizes, report.details = {"cores": 2}, {"mode": "quick"}, {"x": 1}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report.as_json()))
    assert json.loads(path.read_text()) == {
        "machine": {"cores": 2}, "sizes": {"mode": "quick"}, "details": {"x": 1},
        "figures": {"ceiling_events_per_s": {"value": 10.0, "unit": "events/s"},
                    "pipeline_events_per_s": {"value": 5.0, "unit": "events/s"}},
        "ratios": {"pipeline_over_ceiling": 0.5},
    }


def test_main_prints_lines_and_writes_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    report = report_with(ceiling_events_per_s=100.0, pipeline_events_per_s=25.0)
    report.machine, report.sizes = {"cpu": "test", "cores": 2}, {"mode": "quick"}
    monkeypatch.setattr(cli, "run", lambda args: report)
    out = tmp_path / "b.json"
    assert cli.main(["--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# funnel bench (quick): test, 2 cores")
    assert lines[1:] == ["ceiling_events_per_s: 100 events/s", "pipeline_events_per_s: 25.0 events/s",
                         "pipeline_over_ceiling: 0.250 x"]
    assert json.loads(out.read_text())["ratios"] == {"pipeline_over_ceiling": 0.25}


# -- progress ---------------------------------------------------------------------------------------
def test_progress_throttles_lines_off_a_terminal() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress("first")
    progress("dropped: too soon")
    progress.done("last")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["first", "last"]


def test_progress_can_be_silenced() -> None:
    out = io.StringIO()
    Progress(out, enabled=False).done("nothing")
    assert out.getvalue() == ""
