"""Bring tables created by an earlier version of the schema up to this one.

``CREATE TABLE IF NOT EXISTS`` leaves an existing table as it is, so columns
and engines added later need a step of their own. :func:`upgrade` runs after
the DDL files in :func:`sinks.clickhouse.migrate` and is idempotent:

* ``events`` gains ``anonymous_id`` and ``person_id`` (identity): added in
  place, filled for old rows with the person they were counted under
  (``person_id`` defaults to ``user_id``); ``stage_entries``, ``transitions``
  and ``dropoffs`` gain ``excluded`` (funnel exclusions), ``funnel_stages``
  ``within_seconds`` and ``event_type`` (named stages), all in place;
* ``stage_entries`` gains ``version`` and ``is_deleted`` and the
  ``ReplacingMergeTree(version, is_deleted)`` engine, which no ``ALTER`` can
  change: the table is rebuilt - a new table from the current DDL, every row
  copied as version 1, then swapped in by ``EXCHANGE TABLES`` and the old one
  dropped. On a cluster that needs an operator (each replica's copy must be
  swapped while writers are stopped): :func:`upgrade` refuses with the steps.
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.client import Client

from sinks.exceptions import SinkConfigError

__all__ = ["upgrade"]

log = logging.getLogger(__name__)

_EXCLUDED = ("excluded", "UInt8 DEFAULT 0 COMMENT '1: the person is excluded from this funnel''s figures'")
#: Columns added in place (ALTER TABLE ... ADD COLUMN IF NOT EXISTS), per table.
_ADDED = {
    "events": (
        ("anonymous_id", "String COMMENT 'as sent, empty when absent' AFTER user_id"),
        ("person_id", "String DEFAULT user_id COMMENT 'the person the event was counted under' "
                      "AFTER anonymous_id"),
    ),
    "transitions": (_EXCLUDED,),
    "dropoffs": (_EXCLUDED,),
    "funnel_stages": (
        ("within_seconds", "UInt64 DEFAULT 0 COMMENT 'within_days of the stage in seconds, 0 for none'"),
        ("event_type", "LowCardinality(String) DEFAULT stage COMMENT 'the event type the stage reads'"),
    ),
}


def _columns(client: Client, database: str, table: str) -> set[str] | None:
    """The table's column names, or None when it does not exist."""
    rows = client.query(
        "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String}",
        parameters={"db": database, "t": table}).result_rows
    return {row[0] for row in rows} or None


def upgrade(client: Client, database: str, create_statements: dict[str, str],
            cluster: str | None = None) -> list[str]:
    """Upgrade the tables of ``database`` created by earlier versions; what was done.

    ``create_statements`` maps a table name to its current ``CREATE TABLE``
    statement (database filled in), as :func:`sinks.clickhouse.ddl` gives it.
    """
    done: list[str] = []
    on = f" ON CLUSTER '{cluster}'" if cluster else ""
    for table, added in _ADDED.items():
        found = _columns(client, database, f"{table}_local" if cluster else table)
        missing = [(name, spec) for name, spec in added if found is not None and name not in found]
        if not missing:
            continue
        for target in ((f"{table}_local", table) if cluster else (table,)):
            client.command(f"ALTER TABLE {database}.{target}{on} "
                           + ", ".join(f"ADD COLUMN IF NOT EXISTS {n} {spec}" for n, spec in missing))
        done.append(f"{table}: added " + ", ".join(n for n, _ in missing))
    entries = _columns(client, database, "stage_entries_local" if cluster else "stage_entries")
    if entries is not None and "is_deleted" not in entries:
        if cluster:
            raise SinkConfigError(
                f"{database}.stage_entries_local predates identity (no version, is_deleted columns) and "
                "needs the ReplacingMergeTree(version, is_deleted) engine; on a cluster rebuild it by "
                "hand with the workers stopped: create the new table from deploy/clickhouse/001_tables.sql "
                "under another name on each replica, INSERT ... SELECT *, 1, 0 from the old one, EXCHANGE "
                "TABLES, then run `funnel migrate` again")
        _rebuild_entries(client, database, create_statements["stage_entries"], sorted(entries))
        done.append("stage_entries: rebuilt with version, is_deleted, excluded")
    elif entries is not None and "excluded" not in entries:
        for target in (("stage_entries_local", "stage_entries") if cluster else ("stage_entries",)):
            client.command(f"ALTER TABLE {database}.{target}{on} ADD COLUMN IF NOT EXISTS {_EXCLUDED[0]} "
                           f"{_EXCLUDED[1]}")
        done.append("stage_entries: added excluded")
    for line in done:
        log.warning("clickhouse: upgraded %s.%s", database, line)
    return done


def _rebuild_entries(client: Client, database: str, create: str, old_columns: list[str]) -> None:
    table, new = f"{database}.stage_entries", f"{database}.stage_entries__upgrade"
    client.command(f"DROP TABLE IF EXISTS {new}")  # a rebuild that stopped half way
    client.command(create.replace(table, new, 1))
    columns = ", ".join(old_columns)
    client.command(f"INSERT INTO {new} ({columns}, version, is_deleted) SELECT {columns}, 1, 0 FROM {table}")
    client.command(f"EXCHANGE TABLES {table} AND {new}")
    client.command(f"DROP TABLE {new}")
