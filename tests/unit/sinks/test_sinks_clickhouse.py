"""sinks.clickhouse: URLs, migrations and idempotent writes, on the embedded engine (chDB)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas import EVENT_TYPES, FunnelDefinition
from sinks import (
    COLUMNS,
    DDL_DIR,
    ClickHouseSink,
    ClickHouseTarget,
    FunnelMetrics,
    SinkConfigError,
    SinkRetryableError,
    migrate,
    parse_clickhouse_url,
)
from streams.journey import UserState, apply_event
from streams.rows import event_row
from streams.windows import ENTRY, TRANSITION, WindowAggregator

DEFAULT = FunnelDefinition(name="default", stages=EVENT_TYPES)
REQUIRED_TABLES = {"events", "stage_entries", "transitions", "stage_counts"}
REQUIRED_VIEWS = {"stage_counts_final", "conversion_by_day_channel", "cohort_conversion", "time_to_convert"}


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("chdb:///var/lib/funnel", ClickHouseTarget("chdb", "funnel", path="/var/lib/funnel")),
        ("chdb://data/chdb", ClickHouseTarget("chdb", "funnel", path="data/chdb")),
        ("chdb:///tmp/my%20data?database=shop", ClickHouseTarget("chdb", "shop", path="/tmp/my data")),
        ("http://ch", ClickHouseTarget("http", "funnel", host="ch", port=8123)),
        ("https://ch.example.com", ClickHouseTarget("https", "funnel", host="ch.example.com", port=8443)),
        ("http://ch:18123/analytics", ClickHouseTarget("http", "analytics", host="ch", port=18123)),
        ("https://ch/?database=shop", ClickHouseTarget("https", "shop", host="ch", port=8443)),
        ("https://writer:p%40ss%3Aw0rd@ch:9443/funnel",
         ClickHouseTarget("https", "funnel", host="ch", port=9443, username="writer", password="p@ss:w0rd")),
    ],
)
def test_parse_clickhouse_url(url: str, target: ClickHouseTarget) -> None:
    assert parse_clickhouse_url(url) == target


def test_default_database_applies_when_the_url_names_none() -> None:
    assert parse_clickhouse_url("http://ch", default_database="growth").database == "growth"
    assert parse_clickhouse_url("chdb:///d", default_database="growth").database == "growth"


def test_str_masks_the_password() -> None:
    target = parse_clickhouse_url("https://writer:s3cret@ch:9443/funnel")
    assert str(target) == "https://writer:***@ch:9443/funnel"
    assert str(parse_clickhouse_url("chdb:///var/lib/funnel")) == "chdb:///var/lib/funnel (database funnel)"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("tcp://writer:s3cret@ch:9000", "scheme must be http, https or chdb"),
        ("ch:8123", "scheme must be http, https or chdb"),
        ("http://", "has no host"),
        ("chdb://", "chdb:// needs a directory"),
    ],
)
def test_unusable_url(url: str, problem: str) -> None:
    with pytest.raises(SinkConfigError, match=problem) as caught:
        parse_clickhouse_url(url)
    assert "s3cret" not in str(caught.value)


# -- migrations -----------------------------------------------------------------------------


def tables(client: Client, database: str) -> dict[str, str]:
    rows = client.query("SELECT name, engine FROM system.tables WHERE database = {db:String}",
                        parameters={"db": database}).result_rows
    return {name: engine for name, engine in rows}


def count(client: Client, sql: str) -> int:
    return client.query(sql).result_rows[0][0]


def test_migrate_creates_the_tables_and_views(chdb_client: Client, ch_database: str) -> None:
    found = tables(chdb_client, ch_database)
    assert {name for name, engine in found.items() if engine.endswith("MergeTree")} >= REQUIRED_TABLES
    assert {name for name, engine in found.items() if engine == "View"} >= REQUIRED_VIEWS


def test_migrate_is_idempotent_and_keeps_data(chdb_client: Client, ch_database: str, make_event) -> None:
    before = tables(chdb_client, ch_database)
    chdb_client.insert(f"{ch_database}.events", [event_row(make_event(), "default", "direct", "")],
                       column_names=COLUMNS["events"])
    assert migrate(chdb_client, database=ch_database) == sorted(p.name for p in DDL_DIR.glob("*.sql"))
    assert tables(chdb_client, ch_database) == before
    assert count(chdb_client, f"SELECT count() FROM {ch_database}.events") == 1


def test_migrate_refuses_odd_database_names(chdb_client: Client) -> None:
    with pytest.raises(SinkConfigError, match="not a plain identifier"):
        migrate(chdb_client, database="funnel; DROP TABLE x")


def test_migrate_needs_ddl(chdb_client: Client, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no ClickHouse DDL"):
        migrate(chdb_client, database="unused", ddl_dir=tmp_path)


# -- writes ---------------------------------------------------------------------------------


@pytest.fixture
def sink(chdb_client: Client, ch_database: str, metrics: FunnelMetrics) -> Iterator[ClickHouseSink]:
    s = ClickHouseSink(chdb_client, ch_database, metrics, backoff_initial=0.01, backoff_max=0.02)
    yield s
    s.close()


def flush(sink: ClickHouseSink, table: str, rows: list, token: str) -> None:
    sink.extend(table, rows)
    asyncio.run(sink.flush(token))


def test_events_are_written_with_explicit_columns(sink: ClickHouseSink, make_event) -> None:
    purchase = make_event("purchase", channel="ads", amount="19.90", currency="EUR", order_id="o-1",
                          properties={"coupon": "SPRING", "items": 2}, source="funnel.purchase:1:42")
    flush(sink, "events", [event_row(purchase, "default", "ads", "new")], "ingest:1:42-42")
    rows = sink.query(
        f"SELECT toString(event_id), event_type, user_id, toUnixTimestamp64Milli(ts), channel, "
        f"toString(amount), currency, properties, source FROM {sink.database}.events"
    ).result_rows
    assert rows == [(purchase["event_id"], "purchase", "u1", purchase["ts"], "ads", "19.9", "EUR",
                     {"coupon": "SPRING", "items": "2"}, "funnel.purchase:1:42")]


def test_retried_batch_with_the_same_token_is_written_once(sink: ClickHouseSink, make_event) -> None:
    rows = [event_row(make_event("visit", f"u{i}"), "default", "direct", "") for i in range(3)]
    for _ in range(2):  # a retry after an unknown outcome
        flush(sink, "events", rows, "ingest:0:0-2")
    assert count(sink.client, f"SELECT count() FROM {sink.database}.events") == 3
    flush(sink, "events", rows, "ingest:0:0-2-replayed")  # a replay forms another batch
    assert count(sink.client, f"SELECT count() FROM {sink.database}.events") == 6
    assert count(sink.client, f"SELECT count() FROM {sink.database}.events FINAL") == 3


def window_counts(sink: ClickHouseSink) -> list[tuple]:
    return sink.query(
        f"SELECT kind, from_stage, stage, users FROM {sink.database}.stage_counts_final "
        f"ORDER BY kind, stage"
    ).result_rows


def test_window_members_count_once_across_replays(sink: ClickHouseSink, make_event) -> None:
    state: UserState = {}
    results = [apply_event(state, e, DEFAULT)
               for e in (make_event("visit", "u1"), make_event("signup", "u1", at=30))]
    results.append(apply_event({}, make_event("visit", "u2", at=10), DEFAULT))
    agg = WindowAggregator(60)
    for r in results:
        for x in r.entries:
            agg.add(x.ts, x.funnel, ENTRY, "", x.stage, x.channel, x.user_id)
        for t in r.transitions:
            agg.add(t.ts, t.funnel, TRANSITION, t.from_stage, t.to_stage, t.channel, t.user_id, t.version)
    for token in ("window:0:0-9", "window:0:0-9", "window:0:0-9-replayed"):
        flush(sink, "stage_counts", list(agg.rows()), token)
    assert window_counts(sink) == [("entry", "", "signup", 1), ("entry", "", "visit", 2),
                                   ("transition", "visit", "signup", 1)]


def test_corrected_transition_replaces_its_window_member(sink: ClickHouseSink) -> None:
    ts = 1_769_860_800_000
    for version, from_stage, deleted, token in [(1, "visit", False, "a"), (2, "signup", False, "b")]:
        agg = WindowAggregator(60)
        agg.add(ts, "default", TRANSITION, from_stage, "webinar", "ads", "u1", version, deleted)
        flush(sink, "stage_counts", list(agg.rows()), token)
    assert window_counts(sink) == [("transition", "signup", "webinar", 1)]
    agg = WindowAggregator(60)
    agg.add(ts, "default", TRANSITION, "", "webinar", "ads", "u1", 3, True)  # retracted
    flush(sink, "stage_counts", list(agg.rows()), "c")
    assert window_counts(sink) == []


# -- error classification -------------------------------------------------------------------


class FailingClient:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def insert(self, *args: object, **kwargs: object) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (OperationalError("connection reset"), True),
        (DatabaseError("Code: 241. DB::Exception: Memory limit exceeded"), True),
        (DatabaseError("Code: 252. DB::Exception: Too many parts"), True),
        (DatabaseError("Code: 60. DB::Exception: Unknown table"), False),
        (DatabaseError("no code at all"), False),
    ],
    ids=["network", "memory", "too-many-parts", "unknown-table", "uncoded"],
)
def test_write_names_retryable_failures(metrics: FunnelMetrics, error: Exception, retryable: bool) -> None:
    sink = ClickHouseSink(FailingClient(error), "funnel", metrics)  # type: ignore[arg-type]
    try:
        with pytest.raises(SinkRetryableError if retryable else DatabaseError) as caught:
            sink.write("events", [], "t")
        assert caught.value is not error if retryable else caught.value is error
    finally:
        sink.close()


def test_writing_rows_does_not_load_pandas(tmp_path: Path) -> None:
    """clickhouse-connect would import pandas (42 MiB) on the first insert; the worker never needs it."""
    script = f"""
import sys
from sinks.clickhouse import connect, parse_clickhouse_url
client = connect(parse_clickhouse_url("chdb://{tmp_path / 'ch'}"))
client.command("CREATE TABLE t (x UInt32) ENGINE = MergeTree ORDER BY x")
client.insert("t", [[1], [2]], column_names=["x"])
assert client.query("SELECT sum(x) FROM t").result_rows == [(3,)]
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
