"""streams.bench.core: the core stage on a small traffic, against chDB."""

from __future__ import annotations

import io
from pathlib import Path

from clickhouse_connect.driver.client import Client

from streams.bench.context import QUICK, Context
from streams.bench.core import stage_core
from streams.bench.report import Progress, Report
from streams.bench.traffic import realistic_traffic


def test_core_stage_stores_what_the_traffic_holds(chdb_client: Client, tmp_path: Path) -> None:
    """The agents' batch bodies with Kafka stubbed out still write the traffic's ground truth."""
    messages, truth = realistic_traffic(2_000, seed=5)
    ctx = Context(bootstrap="127.0.0.1:9", run_dir=tmp_path, sizes=QUICK, seed=5,
                  report=Report(), progress=Progress(io.StringIO(), enabled=False),
                  prefix="core.", messages=messages, truth=truth, _chdb=chdb_client)
    try:
        stage_core(ctx)
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
