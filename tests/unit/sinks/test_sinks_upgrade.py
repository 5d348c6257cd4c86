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
    assert columns(chdb_client, database, "stage_entries")[-3:] == ["version", "is_deleted", "excluded"]
    for table in ("transitions", "dropoffs"):  # named stages: the exclusion mark
        assert columns(chdb_client, database, table)[-1] == "excluded"
    assert columns(chdb_client, database, "funnel_stages")[-2:] == ["within_seconds", "event_type"]
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


def test_a_database_from_before_named_stages_gets_the_exclusion_mark_and_stage_limits(
        chdb_client: Client, database: str) -> None:
    migrate(chdb_client, database)
    for table in ("stage_entries", "transitions", "dropoffs"):  # as the identity version left them
        chdb_client.command(f"ALTER TABLE {database}.{table} DROP COLUMN excluded")
    chdb_client.command(f"ALTER TABLE {database}.funnel_stages DROP COLUMN within_seconds, "
                        "DROP COLUMN event_type")
    chdb_client.command(f"INSERT INTO {database}.funnel_stages (funnel, stage, stage_index, stages, "
                        "conversion_window_seconds, attribution, updated_at) "
                        "VALUES ('default', 'visit', 0, 5, 0, 'first_touch', now())")
    assert sorted(upgrade(chdb_client, database, {})) == [
        "dropoffs: added excluded", "funnel_stages: added within_seconds, event_type",
        "stage_entries: added excluded", "transitions: added excluded"]
    assert chdb_client.query(f"SELECT stage, event_type, within_seconds FROM {database}.funnel_stages"
                             ).result_rows == [("visit", "visit", 0)]  # an old stage reads its own type
    migrate(chdb_client, database)  # the views, which read the new columns, are made again
    assert upgrade(chdb_client, database, {}) == []
