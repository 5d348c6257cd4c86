"""sinks.upgrade: tables made by the schema before identity are brought up to this one, data kept."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from sinks import migrate
from sinks.clickhouse import ddl
from sinks.exceptions import SinkConfigError
from sinks.upgrade import upgrade

#: The tables of the last schema before identity (fdbffab): events without
#: anonymous_id and person_id, stage_entries without version and is_deleted.
OLD_SCHEMA = Path(__file__).resolve().parent / "schema_before_identity"


@pytest.fixture
def database(chdb_client: Client) -> Iterator[str]:
    name = f"u_{uuid.uuid4().hex[:12]}"
    yield name
    chdb_client.command(f"DROP DATABASE IF EXISTS {name}")


def columns(client: Client, database: str, table: str) -> list[str]:
    return [r[0] for r in client.query(f"DESCRIBE TABLE {database}.{table}").result_rows]


def test_a_database_from_before_identity_is_upgraded_with_its_rows(
        chdb_client: Client, database: str) -> None:
    for _, statements in ddl(database, OLD_SCHEMA):  # as the version before created it
        for statement in statements:
            chdb_client.command(statement)
    assert "is_deleted" not in columns(chdb_client, database, "stage_entries")
    event_id = "00000000-0000-4000-8000-000000000001"
    chdb_client.command(f"INSERT INTO {database}.events (event_id, event_type, funnel, user_id, ts, "
                        f"received_at) VALUES ('{event_id}', 'visit', 'default', 'u1', 0, 0)")
    chdb_client.command(f"INSERT INTO {database}.stage_entries (funnel, stage, stage_index, user_id, ts, "
                        f"event_id) VALUES ('default', 'visit', 0, 'u1', 0, '{event_id}')")
    migrate(chdb_client, database)  # today's schema
    assert columns(chdb_client, database, "events")[3:6] == ["user_id", "anonymous_id", "person_id"]
    assert columns(chdb_client, database, "stage_entries")[-2:] == ["version", "is_deleted"]
    engine = chdb_client.command(f"SELECT engine_full FROM system.tables WHERE database = '{database}' "
                                 "AND name = 'stage_entries'")
    assert "ReplacingMergeTree(version, is_deleted)" in str(engine)
    ids = chdb_client.query(f"SELECT user_id, anonymous_id, person_id FROM {database}.events").result_rows
    assert ids == [("u1", "", "u1")]
    assert chdb_client.query(f"SELECT user_id, version, is_deleted FROM {database}.stage_entries FINAL"
                             ).result_rows == [("u1", 1, 0)]
    assert upgrade(chdb_client, database, {}) == []  # nothing left to do
    assert "stage_entries__upgrade" not in {r[0] for r in chdb_client.query(
        f"SHOW TABLES FROM {database}").result_rows}


def test_on_a_cluster_the_entries_rebuild_is_left_to_the_operator(chdb_client: Client, database: str) -> None:
    chdb_client.command(f"CREATE DATABASE {database}")
    chdb_client.command(f"CREATE TABLE {database}.stage_entries_local (user_id String) ENGINE = MergeTree "
                        "ORDER BY user_id")
    with pytest.raises(SinkConfigError, match="rebuild it by hand"):
        upgrade(chdb_client, database, {}, cluster="funnel")
