"""The schema on a ClickHouse cluster: Replicated local tables, Distributed tables under today's names.

``deploy/clickhouse/*.sql`` is the single-server schema. With
``FUNNEL_CLICKHOUSE_CLUSTER`` set, :func:`cluster_statement` turns each of its
statements into the cluster's (``ON CLUSTER``):

* ``CREATE TABLE x`` becomes ``x_local``, with the Replicated variant of its
  engine (``ReplicatedReplacingMergeTree`` keeping the version and
  ``is_deleted`` arguments), and ``x``, a ``Distributed`` table over it;
* ``non_replicated_deduplication_window`` becomes
  ``replicated_deduplication_window``: the sinks' insert tokens keep making a
  retried batch a no-op on every shard;
* views are created on every node and read the Distributed tables.

Sharding: a ReplacingMergeTree collapses rows with the same sorting key only
within one shard, so every table is sharded by a function of its sorting key:
by the person for the tables keyed by person, by ``event_id`` for ``events``
(a replay may count an event under another person once it is linked), by
the anonymous id for ``identities``, by the whole key for ``spend`` and
``funnel_stages``. A
``FINAL`` read of a Distributed table therefore sees each row once.

Inserts go to the Distributed tables (the sinks are unchanged) with
``insert_distributed_sync = 1``: an insert returns once every shard has its
part, so a failure is seen and the batch retried with the same token, which
each shard's replicated deduplication drops if it already has that part.
Writing to the local tables instead would need the writer to know the
sharding, in a second place.
"""

from __future__ import annotations

import re

__all__ = ["CLUSTER_INSERT_SETTINGS", "SHARDING", "cluster_statement", "cluster_tables"]

#: table -> the Distributed sharding key (a function of the table's sorting key).
SHARDING = {
    "events": "cityHash64(event_id)",
    "identities": "cityHash64(anonymous_id)",
    "stage_entries": "cityHash64(user_id)",
    "transitions": "cityHash64(user_id)",
    "stage_counts": "cityHash64(user_id)",
    "dropoffs": "cityHash64(user_id)",
    "spend": "cityHash64(channel, campaign, currency, period_start, period_end)",
    "funnel_stages": "cityHash64(funnel, stage)",
}

#: What the sinks' inserts need on a cluster (sinks.clickhouse adds it when a cluster is set).
CLUSTER_INSERT_SETTINGS = {"insert_distributed_sync": 1}

_TABLE = re.compile(
    r"^CREATE TABLE IF NOT EXISTS (?P<db>\{database\}|\w+)\.(?P<name>\w+)\s*(?P<columns>\(.*\))\s*"
    r"ENGINE = (?P<engine>\w+)(?:\((?P<args>[^)]*)\))?(?P<rest>.*)$", re.S)
_VIEW = re.compile(r"^CREATE OR REPLACE VIEW (?P<target>(?:\{database\}|\w+)\.\w+)", re.S)
_DATABASE = re.compile(r"^CREATE DATABASE IF NOT EXISTS (?P<db>\{database\}|\w+)$")


def _quoted(cluster: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", cluster):
        raise ValueError(f"FUNNEL_CLICKHOUSE_CLUSTER {cluster!r} is not a plain cluster name")
    return f"'{cluster}'"


def cluster_statement(statement: str, cluster: str) -> list[str]:
    """The statements of the cluster schema for one statement of the single-server one."""
    on = f"ON CLUSTER {_quoted(cluster)}"
    if match := _DATABASE.match(statement):
        return [f"{statement} {on}"]
    if match := _VIEW.match(statement):
        return [f"{statement[:match.end()]} {on}{statement[match.end():]}"]
    match = _TABLE.match(statement)
    if match is None:
        raise ValueError(f"no cluster form for the statement: {statement[:80]!r}")
    db, name, engine = match["db"], match["name"], match["engine"]
    if name not in SHARDING:
        raise ValueError(f"table {name} has no sharding key in sinks.cluster.SHARDING")
    if not engine.endswith("MergeTree") or engine.startswith("Replicated"):
        raise ValueError(f"table {name}: no Replicated form of engine {engine}")
    path = f"'/clickhouse/tables/{{shard}}/{db}/{name}_local', '{{replica}}'"
    args = f"{path}, {match['args']}" if match["args"] else path
    rest = match["rest"].replace("non_replicated_deduplication_window", "replicated_deduplication_window")
    local = (f"CREATE TABLE IF NOT EXISTS {db}.{name}_local {on}\n{match['columns']}\n"
             f"ENGINE = Replicated{engine}({args}){rest}")
    distributed = (f"CREATE TABLE IF NOT EXISTS {db}.{name} {on} AS {db}.{name}_local\n"
                   f"ENGINE = Distributed({_quoted(cluster)}, {db}, {name}_local, {SHARDING[name]})")
    return [local, distributed]


def cluster_tables(statements: list[str]) -> list[str]:
    """Names of the tables the single-server ``statements`` create."""
    return [m["name"] for s in statements if (m := _TABLE.match(s))]
