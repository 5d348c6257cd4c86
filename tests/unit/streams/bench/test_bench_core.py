"""streams.bench.core: the core stage on a small traffic, against chDB."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from clickhouse_connect.driver.client import Client

from streams.bench.context import QUICK, Context
from streams.bench.core import stage_core
from streams.bench.report import Progress, Report
from streams.bench.traffic import realistic_traffic

B2B = Path(__file__).resolve().parents[4] / "deploy" / "funnels.b2b.yml"


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


def test_core_stage_with_a_funnels_file(chdb_client: Client, tmp_path: Path) -> None:
    """``--funnels-file``: the core runs every funnel in it; ``events`` has a row per event per funnel."""
    messages, truth = realistic_traffic(2_000, seed=6, stage_properties=True)
    ctx = Context(bootstrap="127.0.0.1:9", run_dir=tmp_path, sizes=QUICK, seed=6,
                  report=Report(), progress=Progress(io.StringIO(), enabled=False),
                  prefix="core.", messages=messages, truth=truth, _chdb=chdb_client, funnels_file=B2B)
    # default routes every type, b2b visits, signups and purchases (a stage or the exclusion).
    copies = Counter[str]()
    for m in messages:
        copies[m.event_type] += m.copies
    b2b_types = copies["visit"] + copies["signup"] + copies["purchase"]
    assert ctx.event_rows(messages) == copies.total() + b2b_types
    try:
        stage_core(ctx)
        by_funnel = dict(chdb_client.query(
            "SELECT funnel, count() FROM bench_core.events FINAL GROUP BY funnel").result_rows)
        distinct = Counter(m.event_type for m in messages)  # a message's copies are one event
        assert by_funnel == {"default": truth["events"],
                             "b2b": distinct["visit"] + distinct["signup"] + distinct["purchase"]}
        entries = dict(chdb_client.query(
            "SELECT stage, count() FROM bench_core.stage_entries FINAL WHERE funnel = 'default' "
            "GROUP BY stage").result_rows)
        assert entries == truth["entries"]  # the b2b funnel and the stage properties leave it alone
        b2b = dict(chdb_client.query(
            "SELECT stage, count() FROM bench_core.stage_entries FINAL WHERE funnel = 'b2b' "
            "GROUP BY stage").result_rows)
        assert b2b["visit"] == truth["entries"]["visit"] and 0 < b2b["pricing"] < b2b["visit"]
        assert 0 < b2b["mql"] < b2b["lead"]
    finally:
        chdb_client.command("DROP DATABASE IF EXISTS bench_core")
