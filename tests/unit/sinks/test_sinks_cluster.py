"""sinks.cluster: the schema on a ClickHouse cluster, rendered from the single-server one."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from sinks import clickhouse as clickhouse_module
from sinks.clickhouse import DDL_DIR, _statements, connect, ddl, parse_clickhouse_url
from sinks.cluster import SHARDING, cluster_statement, cluster_tables

CLUSTER = "funnel_cluster"


def _all(statements: list[tuple[str, list[str]]]) -> list[str]:
    return [s for _, file_statements in statements for s in file_statements]


def test_the_single_server_schema_is_the_files_unchanged() -> None:
    rendered = ddl("funnel")
    assert [name for name, _ in rendered] == sorted(p.name for p in DDL_DIR.glob("*.sql"))
    for (name, statements) in rendered:
        source = _statements((DDL_DIR / name).read_text())
        assert statements == [s.replace("{database}", "funnel") for s in source]
    assert not any("ON CLUSTER" in s or "Replicated" in s or "Distributed" in s for s in _all(rendered))


def test_the_cluster_schema_names_the_cluster_and_replicated_engines_everywhere() -> None:
    single = _all(ddl("funnel"))
    cluster = _all(ddl("funnel", cluster=CLUSTER))
    assert all(f"ON CLUSTER '{CLUSTER}'" in s for s in cluster)
    tables = cluster_tables([s.replace("funnel.", "{database}.") for s in single])
    assert set(tables) == set(SHARDING)  # every table has a sharding key, and no key is left over
    for table in tables:
        local = next(s for s in cluster if s.startswith(f"CREATE TABLE IF NOT EXISTS funnel.{table}_local "))
        assert re.search(r"ENGINE = Replicated\w*MergeTree\('/clickhouse/tables/\{shard\}/funnel/"
                         rf"{table}_local', '\{{replica\}}'", local), local
        assert "non_replicated_deduplication_window" not in local
        distributed = next(s for s in cluster if s.startswith(f"CREATE TABLE IF NOT EXISTS funnel.{table} "))
        assert f"AS funnel.{table}_local" in distributed
        assert f"ENGINE = Distributed('{CLUSTER}', funnel, {table}_local, {SHARDING[table]})" in distributed
        # Rows that FINAL collapses (same sorting key) must land on one shard.
        order_by = re.search(r"ORDER BY \((.*?)\)", local, re.S)
        assert order_by, local
        key_columns = set(re.findall(r"\w+", SHARDING[table].removeprefix("cityHash64"))) - {"cityHash64"}
        assert key_columns <= {c.strip() for c in order_by.group(1).split(",")}, table
    # The versioned engines keep their version and is_deleted arguments.
    transitions = next(s for s in cluster
                       if s.startswith("CREATE TABLE IF NOT EXISTS funnel.transitions_local"))
    assert "{replica}', version, is_deleted)" in transitions
    views = [s for s in cluster if s.startswith("CREATE OR REPLACE VIEW")]
    assert views and len(views) == len([s for s in single if s.startswith("CREATE OR REPLACE VIEW")])


def test_every_statement_of_both_schemas_parses(chdb_client: Client) -> None:
    for statement in _all(ddl("funnel")) + _all(ddl("funnel", cluster=CLUSTER)):
        chdb_client.query(f"EXPLAIN AST {statement}")  # raises on a syntax error


def test_the_parser_sees_a_broken_statement(chdb_client: Client) -> None:
    with pytest.raises(DatabaseError, match=r"(?i)syntax"):
        chdb_client.query("EXPLAIN AST CREATE TABLE t ON CLUSTER 'c' (x UInt8) ENGINE = Distributed(")


def test_statements_without_a_cluster_form_are_refused() -> None:
    with pytest.raises(ValueError, match="no cluster form"):
        cluster_statement("ALTER TABLE {database}.events ADD COLUMN x UInt8", CLUSTER)
    with pytest.raises(ValueError, match="has no sharding key"):
        cluster_statement("CREATE TABLE IF NOT EXISTS {database}.other (x UInt8) "
                          "ENGINE = MergeTree ORDER BY x", CLUSTER)
    with pytest.raises(ValueError, match="not a plain cluster name"):
        cluster_statement("CREATE DATABASE IF NOT EXISTS {database}", "c'; DROP")


def test_cluster_writers_wait_for_every_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(clickhouse_module.clickhouse_connect, "get_client", lambda **kw: seen.update(kw))
    target = parse_clickhouse_url("https://w:pw@ch:8443/funnel")
    import dataclasses

    connect(dataclasses.replace(target, cluster=CLUSTER))
    assert seen["settings"] == {"insert_distributed_sync": 1}
    connect(dataclasses.replace(target, cluster=CLUSTER), readonly=True)
    assert seen["settings"] == {"readonly": 1}


def test_a_cluster_needs_a_server(tmp_path: Path) -> None:
    from streams.settings import Settings
    from streams.tools.worker import clickhouse_target

    with pytest.raises(ValueError, match="FUNNEL_CLICKHOUSE_CLUSTER needs a ClickHouse server"):
        clickhouse_target(Settings(clickhouse_url=f"chdb://{tmp_path}", clickhouse_cluster=CLUSTER))
    server = Settings(clickhouse_url="http://ch:8123/f", clickhouse_cluster=CLUSTER)
    assert clickhouse_target(server).cluster == CLUSTER
