"""sinks.clickhouse: URLs, migrations and idempotent writes, on the embedded engine (chDB)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from schemas import EVENT_TYPES, FunnelDefinition
from sinks import (
    COLUMNS,
    DDL_DIR,
    INSERT_TYPES,
    ClickHouseSink,
    ClickHouseTarget,
    FunnelMetrics,
    SinkConfigError,
    SinkRetryableError,
    migrate,
    parse_clickhouse_url,
)
from streams.funnel.journey import UserState, apply_event
from streams.funnel.outputs import Breakdown, Dropoff, StageEntry, Transition
from streams.funnel.rows import dropoff_row, entry_row, event_row, transition_row
from streams.funnel.windows import ENTRY, TRANSITION, WindowAggregator

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


# -- what is sent: INSERT_TYPES --------------------------------------------------------------

# The only columns INSERT_TYPES may send as something else than the table's type:
# the server parses their text (input_format_native_allow_types_conversion).
SENT_AS_TEXT = ("UUID", "Decimal(")


def ddl_types(client: Client, database: str, table: str) -> dict[str, str]:
    rows = client.query(f"DESCRIBE TABLE {database}.{table}").named_results()
    return {r["name"]: r["type"] for r in rows}


def test_insert_types_follow_the_ddl(chdb_client: Client, ch_database: str) -> None:
    assert INSERT_TYPES.keys() == COLUMNS.keys()
    for table, columns in COLUMNS.items():
        ddl = ddl_types(chdb_client, ch_database, table)
        assert set(columns) == set(ddl), table  # every column, none unknown
        for column, sent in zip(columns, INSERT_TYPES[table], strict=True):
            expected = "String" if ddl[column].startswith(SENT_AS_TEXT) else ddl[column]
            assert sent == expected, (table, column)


UUIDS = ["7ce42c82-1807-4e8c-b5bf-992dc9e9c616", "00000000-0000-0000-0000-000000000000",
         "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF", "00000000-0000-0000-0000-000000000001",
         "80000000-0000-0000-8000-000000000000", "0123456789abcdef0123456789ABCDEF"]
TS = [1_769_860_800_123, 0, 4_102_444_799_999]  # 2026, the epoch, 2099-12-31T23:59:59.999


def every_kind_of_row() -> dict[str, list[tuple]]:
    """Rows of every table with edge values in each column type (as the callers build them)."""
    event = {"event_id": UUIDS[0], "event_type": "purchase", "user_id": "u-ünï 1",
             "anonymous_id": "a-ünï ☃", "person_id": "u-ünï 1", "ts": TS[0],
             "received_at": TS[0] + 999, "channel": "ads", "campaign": "spring", "product": "pro",
             "region": "eu", "manager": "bob", "currency": "EUR", "order_id": "o-1",
             "email_hash": "ab" * 32, "source": "funnel.purchase:3:42"}
    amounts = ["19.90", "99999999999999.9999", "0.0001", "1E+3", "0", "149"]
    props: list[dict[str, Any]] = [{"coupon": "SPRING", "items": 2, "ok": True, "none": None,
                                    "nested": {"a": [1, "x"]}, "": "empty key"}, {}, {"ünï": "☃"}]
    events = []
    for i, amount in enumerate(amounts):
        e: Any = {**event, "event_id": UUIDS[i], "amount": amount, "ts": TS[i % 3],
                  "properties": props[i % 3], "channel": None if i == 1 else "ads",
                  "user_id": None if i == 2 else event["user_id"]}
        events.append(event_row(e, "default", "ads", ["new", "returning", ""][i % 3]))
    entries = [
        entry_row(StageEntry(funnel="default", stage="visit", stage_index=i, user_id=f"u{i}", ts=TS[i],
                             channel="seo", event_id=UUIDS[i],
                             dims=Breakdown(campaign=f"c{i}", product="pro", region="eu", manager=""),
                             version=[1, 4_294_967_295, 2][i], deleted=i == 1, excluded=i == 2))
        for i in range(3)
    ]
    transitions = [
        transition_row(Transition(funnel="default", from_stage="visit", to_stage="signup", from_index=0,
                                  to_index=255, user_id="u1", from_ts=TS[1], ts=TS[0],
                                  seconds=(TS[0] - TS[1]) / 1000, channel="ads", event_id=UUIDS[0],
                                  version=4_294_967_295, deleted=True, campaign="c", excluded=True)),
        transition_row(Transition(funnel="default", from_stage="signup", to_stage="webinar", from_index=1,
                                  to_index=2, user_id="u2", from_ts=TS[0], ts=TS[0] + 1, seconds=0.001,
                                  channel="", event_id=UUIDS[2], version=1)),
    ]
    agg = WindowAggregator(3600)
    agg.add(TS[0], "default", ENTRY, "", "visit", "seo", "u1")
    agg.add(TS[2], "default", TRANSITION, "visit", "signup", "", "u2", 7, True)
    dropoffs = [
        dropoff_row(Dropoff(funnel="default", stage="signup", stage_index=1, user_id="u3", entered_ts=TS[0],
                            dropped_ts=TS[2], channel="email", version=2, deleted=True)),
        dropoff_row(Dropoff(funnel="default", stage="visit", stage_index=0, user_id="u4", entered_ts=TS[1],
                            dropped_ts=TS[0], channel="", version=1, excluded=True)),
    ]
    spend = [(UUIDS[1], "ads", "spring", "1234.5678", "USD", TS[1], TS[0], "funnel.spend:0:1", TS[2]),
             (UUIDS[2], "seo", "", "0", "EUR", TS[0], TS[2], "", TS[0])]
    stages = [("default", "visit", 0, 5, 2_592_000, "first_touch",
               datetime(2026, 1, 31, 12, 0, 0, 123000, tzinfo=UTC), 0, "visit"),
              ("b2b", "mql", 3, 5, 2_592_000, "last_touch",
               datetime(2026, 1, 31, 12, 0, 0, 123000, tzinfo=UTC), 1_209_600, "signup")]
    identities = [("a-ünï ☃", "u-ünï 1", TS[0], "funnel.signup:1:7", UUIDS[3], "linked"),
                  ("a-2", "", TS[2], "", UUIDS[4], "conflict")]
    return {"events": events, "stage_entries": entries, "transitions": transitions,
            "stage_counts": list(agg.rows()), "dropoffs": dropoffs, "spend": spend,
            "funnel_stages": stages, "identities": identities}


def stored(client: Client, database: str, table: str) -> Any:
    return client.query(f"SELECT * FROM {database}.{table} ORDER BY tuple(*)").result_rows


def test_every_column_type_is_stored_as_the_table_types_would_store_it(
        sink: ClickHouseSink, chdb_client: Client) -> None:
    """The sink's path (INSERT_TYPES, reused contexts) against clickhouse-connect's plain one.

    The reference inserts the same rows with the table's own types (read with
    DESCRIBE, clickhouse-connect encoding UUIDs and decimals itself): the
    values stored must be the same, column by column.
    """
    reference = f"r_{uuid.uuid4().hex[:12]}"
    migrate(chdb_client, database=reference)
    try:
        rows = every_kind_of_row()
        assert rows.keys() == COLUMNS.keys()
        for table, table_rows in rows.items():
            sink.write(table, table_rows, f"all-types:{table}")  # no retries: fail at once
            chdb_client.insert(f"{reference}.{table}", table_rows, column_names=COLUMNS[table])
        for table, table_rows in rows.items():
            ours = stored(chdb_client, sink.database, table)
            assert len(ours) == len(table_rows), table
            assert ours == stored(chdb_client, reference, table), table
        # Spot checks that the reference is what the DDL means.
        amounts = chdb_client.query(f"SELECT DISTINCT toString(amount) AS a FROM {sink.database}.events "
                                    f"ORDER BY amount").result_rows
        assert [a for (a,) in amounts] == ["0", "0.0001", "19.9", "149", "1000", "99999999999999.9999"]
        ids = chdb_client.query(f"SELECT DISTINCT toString(event_id) FROM {sink.database}.events "
                                f"ORDER BY 1").result_rows
        assert [i for (i,) in ids] == sorted(str(uuid.UUID(u)) for u in UUIDS)
    finally:
        chdb_client.command(f"DROP DATABASE IF EXISTS {reference}")


class CountingClient:
    """Passes everything to the real client and counts the calls per method."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)
        return counted


def test_writes_reuse_one_insert_context_per_table(chdb_client: Client, ch_database: str,
                                                    metrics: FunnelMetrics, make_event) -> None:
    """No DESCRIBE (a query, ~1 ms of CPU on chDB) per insert: the context is made once."""
    client = CountingClient(chdb_client)
    sink = ClickHouseSink(client, ch_database, metrics)  # type: ignore[arg-type]
    try:
        for i in range(3):
            sink.write("events", [event_row(make_event("visit", f"u{i}"), "default", "direct", "")], f"t{i}")
            sink.write("stage_counts", [(1_769_860_800, 60, "default", "entry", "", "visit", "", f"u{i}",
                                         1, 0)], f"w{i}")
        sink.write("events", [], "nothing")  # an empty batch is no insert (and no error)
    finally:
        sink.close()
    assert client.calls == {"create_insert_context": 2, "insert": 7}
    assert count(chdb_client, f"SELECT count() FROM {ch_database}.events") == 3
    assert count(chdb_client, f"SELECT count() FROM {ch_database}.stage_counts") == 3


# -- error classification -------------------------------------------------------------------


class FailingClient:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def create_insert_context(self, *args: object, **kwargs: object) -> Any:
        return types.SimpleNamespace()

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


def test_a_private_ca_reaches_the_https_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks import clickhouse as clickhouse_module
    from sinks.clickhouse import connect

    target = parse_clickhouse_url("https://w:pw@ch.internal:8443/funnel", ca_file="/etc/funnel/ch-ca.pem")
    assert target.ca_file == "/etc/funnel/ch-ca.pem" and "ch-ca" not in str(target).split("@")[0]
    seen: dict[str, Any] = {}
    monkeypatch.setattr(clickhouse_module.clickhouse_connect, "get_client", lambda **kw: seen.update(kw))
    connect(target, readonly=True)
    assert (seen["interface"], seen["ca_cert"], seen["settings"]) == ("https", "/etc/funnel/ch-ca.pem",
                                                                      {"readonly": 1})
    seen.clear()
    connect(parse_clickhouse_url("https://w:pw@ch.internal:8443/funnel"))
    assert "ca_cert" not in seen and "verify" not in seen  # the system's CAs, checked
    import dataclasses

    connect(dataclasses.replace(target, verify=False))
    assert seen["verify"] is False
    with pytest.raises(SinkConfigError, match="FUNNEL_CLICKHOUSE_CA_FILE is set, but the ClickHouse URL is "
                                              "http://"):
        parse_clickhouse_url("http://ch:8123/funnel", ca_file="/etc/funnel/ch-ca.pem")
