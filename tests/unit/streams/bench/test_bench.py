"""streams.bench: the pure parts (figures, ratios, JSON, latencies, traffic, SQL data shape).

The stages themselves start a broker and workers; `make bench` runs them.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry, generate_latest

from schemas import Decoder
from sinks import FunnelMetrics
from streams import bench
from streams.bench import (
    FULL,
    QUICK,
    Figure,
    Report,
    metric_sum,
    percentile,
    realistic_traffic,
    visibility_latencies,
)

NOW_MS = 1_769_860_800_000  # 2026-01-31T12:00:00Z


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
    monkeypatch.setattr(bench, "run", lambda args: report)
    out = tmp_path / "b.json"
    assert bench.main(["--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# funnel bench (quick): test, 2 cores")
    assert lines[1:] == ["ceiling_events_per_s: 100 events/s", "pipeline_events_per_s: 25.0 events/s",
                         "pipeline_over_ceiling: 0.250 x"]
    assert json.loads(out.read_text())["ratios"] == {"pipeline_over_ceiling": 0.25}


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--only", "ceiling,warp"], "unknown stage(s) warp"),
     (["--stores", "redis"], "--stores: choose from memory, rocksdb"),
     (["--worker-env", "PRODUCER_LINGER"], "expected NAME=VALUE")],
)
def test_bad_arguments_fail_before_anything_starts(argv: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(argv) == 1
    assert message in capsys.readouterr().err


def test_help_names_every_size_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--full", "--events", "--naive-events", "--fresh-rate", "--fresh-seconds",
                 "--memory-users", "--sql-events", "--json", "--only"):
        assert flag in text


def test_sizes_quick_full_and_overrides() -> None:
    parse = bench._parser().parse_args
    assert bench.sizes_from(parse([])) == QUICK
    assert bench.sizes_from(parse(["--full"])) == FULL
    sizes = bench.sizes_from(parse(["--full", "--memory-users", "5", "--fresh-rate", "100"]))
    assert (sizes.memory_users, sizes.fresh_rate, sizes.sql_events) == (5, 100.0, FULL.sql_events)
    # The sizes for the figures it sets targets on.
    assert (FULL.fresh_rate, FULL.fresh_seconds, FULL.memory_users, FULL.sql_events) == (
        10_000, 60, 1_000_000, 10_000_000)


def test_parse_env() -> None:
    assert bench.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}


# -- /metrics, latencies, percentiles ---------------------------------------------------------------
def test_metric_sum_reads_real_exposition() -> None:
    metrics = FunnelMetrics(CollectorRegistry())
    metrics.events.labels("default", "visit").inc(3)
    metrics.events.labels("default", "signup").inc(2)
    metrics.sink_rows.labels("clickhouse", "events").inc(7)
    metrics.sink_rows.labels("clickhouse", "stage_entries").inc(5)
    text = generate_latest(metrics.registry).decode()
    assert metric_sum(text, "funnel_events_total") == 5
    assert metric_sum(text, "funnel_events_total", event_type="signup") == 2
    assert metric_sum(text, "funnel_sink_rows_total") == 12
    assert metric_sum(text, "funnel_sink_rows_total", table="events") == 7
    assert metric_sum(text, "funnel_sink_rows_total", table="dropoffs") == 0
    assert metric_sum(text, "funnel_events") == 0  # a prefix is not a name


def test_metric_sum_unlabelled_and_exponents() -> None:
    text = "# HELP x_total x\nx_total 1.5e+06\nx_total_created 1.7e+09\nx_totalish 9\n"
    assert metric_sum(text, "x_total") == 1_500_000


def test_visibility_from_counter_samples() -> None:
    produced = [0.0, 0.1, 0.2, 0.3]
    samples = [(0.5, 0), (0.25, 1), (0.7, 3), (1.0, 4)]  # out of order on purpose
    latencies, unseen = visibility_latencies(produced, samples, until=2.0)
    assert unseen == 0
    assert latencies == pytest.approx([0.25, 0.6, 0.5, 0.7])


def test_visibility_counts_unseen_until_the_end_as_lower_bounds() -> None:
    latencies, unseen = visibility_latencies([0.0, 1.0, 2.0], [(0.5, 1)], until=10.0)
    assert unseen == 2
    assert latencies == pytest.approx([0.5, 9.0, 8.0])


def test_visibility_ignores_a_counter_going_backwards() -> None:
    latencies, _ = visibility_latencies([0.0, 0.0], [(1.0, 2), (2.0, 1)], until=3.0)
    assert latencies == [1.0, 1.0]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert percentile(list(reversed(values)), 1) == 1
    assert percentile([], 50) != percentile([], 50)  # NaN


# -- traffic ----------------------------------------------------------------------------------------
def test_realistic_traffic_matches_its_ground_truth() -> None:
    messages, truth = realistic_traffic(3_000, seed=7)
    assert len(messages) == truth["events"] == 3_000
    assert sum(m.copies for m in messages) == truth["events"] + truth["duplicates"]
    assert sum(m.entry for m in messages) == sum(truth["entries"].values())
    assert Counter(m.event_type for m in messages if m.entry) == Counter(truth["entries"])
    offsets = [m.offset_ms for m in messages]
    assert offsets == sorted(offsets)
    assert realistic_traffic(3_000, seed=7)[0] == messages  # reproducible


def test_traffic_decodes_with_the_time_set_at_sending() -> None:
    messages, _ = realistic_traffic(500, seed=3, duplicate_rate=0.0)
    decoder = Decoder(["default"])
    for m in messages:
        event = decoder.decode(m.value(NOW_MS + m.offset_ms), m.event_type, NOW_MS + 10**8)
        assert event["ts"] == NOW_MS + m.offset_ms
        assert m.key == event["user_id"].encode()


def test_visit_traffic_is_one_valid_visit_per_distinct_user() -> None:
    messages = bench.visit_traffic(1_000, seed=2)
    decoder = Decoder(["default"])
    users = {decoder.decode(m.value(NOW_MS), "visit", NOW_MS)["user_id"] for m in messages}
    assert len(users) == 1_000
    assert {m.event_type for m in messages} == {"visit"}


# -- progress ---------------------------------------------------------------------------------------
def test_progress_throttles_lines_off_a_terminal() -> None:
    out = io.StringIO()
    progress = bench.Progress(out)
    progress("first")
    progress("dropped: too soon")
    progress.done("last")
    lines = out.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["first", "last"]


def test_progress_can_be_silenced() -> None:
    out = io.StringIO()
    bench.Progress(out, enabled=False).done("nothing")
    assert out.getvalue() == ""


# -- SQL stage data ---------------------------------------------------------------------------------
def test_synthetic_data_fits_the_schema_and_the_queries(chdb_client: Client, ch_database: str) -> None:
    users = bench.insert_synthetic(chdb_client, 1_170, ch_database)
    assert users == 1_000
    count = chdb_client.query(f"SELECT count() FROM {ch_database}.events").result_rows[0][0]
    assert count == 1_000 + 100 + 40 + 20 + 10
    levels = {level: users for level, users in
              chdb_client.query(bench.sql_query("window_funnel", ch_database)).result_rows}
    # Everyone visits; each later stage is reached by the first users, in order and within the window.
    assert levels == {1: 900, 2: 60, 3: 20, 4: 10, 5: 10}
    rows = chdb_client.query(bench.sql_query("funnel_by_channel", ch_database)).result_rows
    assert {stage for _, stage, _, _ in rows} == {"visit", "signup", "webinar", "consultation", "purchase"}
    # Visits spread over the last 13 days: the query's "this week and last week" sees part of them.
    assert 0 < sum(this + last for _, stage, this, last in rows if stage == "visit") <= 1_000


# -- core stage -------------------------------------------------------------------------------------
def test_core_stage_stores_what_the_traffic_holds(chdb_client: Client, tmp_path: Path) -> None:
    """The agents' batch bodies with Kafka stubbed out still write the traffic's ground truth."""
    messages, truth = realistic_traffic(2_000, seed=5)
    ctx = bench.Context(bootstrap="127.0.0.1:9", run_dir=tmp_path, sizes=bench.QUICK, seed=5,
                        report=bench.Report(), progress=bench.Progress(io.StringIO(), enabled=False),
                        prefix="core.", messages=messages, truth=truth, _chdb=chdb_client)
    try:
        bench.stage_core(ctx)
        entries = dict(chdb_client.query(
            "SELECT stage, count() FROM bench_core.stage_entries FINAL WHERE funnel = 'default' "
            "GROUP BY stage").result_rows)
        assert entries == truth["entries"]
        events = chdb_client.query("SELECT count() FROM bench_core.events FINAL").result_rows[0][0]
        assert events == truth["events"]
    finally:
        chdb_client.command("DROP DATABASE IF EXISTS bench_core")
    [figure] = ctx.report.figures
    assert figure.name == "core_events_per_s" and figure.value > 0
    assert ctx.report.details["core"]["events"] == truth["events"] + truth["duplicates"]
