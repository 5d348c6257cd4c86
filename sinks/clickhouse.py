"""ClickHouse sink, URL parsing and migrations, through clickhouse-connect.

One code path serves a ClickHouse server (``http(s)://user:pass@host:port/db``)
and the embedded chDB engine (``chdb:///path``): clickhouse-connect offers the
same client API for both.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver import options as driver_options
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from clickhouse_connect.driver.insert import InsertContext

from schemas import FunnelsConfig
from sinks.base import BatchSink, Row
from sinks.cluster import CLUSTER_INSERT_SETTINGS, cluster_statement
from sinks.exceptions import SinkConfigError, SinkRetryableError
from sinks.metrics import FunnelMetrics
from sinks.upgrade import upgrade

__all__ = [
    "COLUMNS",
    "DDL_DIR",
    "INSERT_TYPES",
    "ClickHouseSink",
    "ClickHouseTarget",
    "connect",
    "migrate",
    "parse_clickhouse_url",
    "write_funnel_config",
]

log = logging.getLogger(__name__)

#: The DDL shipped with the project; an installed copy elsewhere (a container
#: image) points FUNNEL_CLICKHOUSE_DDL_DIR at its own.
DDL_DIR = Path(
    os.environ.get("FUNNEL_CLICKHOUSE_DDL_DIR")
    or Path(__file__).resolve().parent.parent / "deploy" / "clickhouse"
)

#: Column order of the rows each table receives (explicit, never positional).
COLUMNS: dict[str, tuple[str, ...]] = {
    "events": (
        "event_id", "event_type", "funnel", "user_id", "anonymous_id", "person_id", "ts",
        "received_at", "channel",
        "attributed_channel", "campaign", "product", "region", "manager", "amount", "currency",
        "order_id", "email_hash", "properties", "source", "customer",
    ),
    "stage_entries": (
        "funnel", "stage", "stage_index", "user_id", "ts", "channel", "event_id", "campaign",
        "product", "region", "manager", "version", "is_deleted", "excluded",
    ),
    "transitions": (
        "funnel", "from_stage", "to_stage", "from_index", "to_index", "user_id", "from_ts",
        "ts", "seconds", "channel", "event_id", "version", "is_deleted", "campaign", "excluded",
    ),
    "funnel_stages": (
        "funnel", "stage", "stage_index", "stages", "conversion_window_seconds", "attribution",
        "updated_at", "within_seconds", "event_type",
    ),
    "spend": (
        "event_id", "channel", "campaign", "amount", "currency", "period_start", "period_end",
        "source", "received_at",
    ),
    "dropoffs": (
        "funnel", "stage", "stage_index", "user_id", "entered_at", "dropped_at", "channel",
        "version", "is_deleted", "excluded",
    ),
    "stage_counts": (
        "window_start", "window_seconds", "funnel", "kind", "from_stage", "stage", "channel",
        "user_id", "version", "is_deleted",
    ),
    "identities": ("anonymous_id", "user_id", "first_seen", "source", "event_id", "status"),
}

#: The types the sink sends each column as (Native format), in ``COLUMNS``
#: order: the table's own types, except that UUID and Decimal columns go as
#: their text (``String``) and the server parses them into the column's type
#: (``input_format_native_allow_types_conversion``). The values stored are the
#: same; clickhouse-connect's own UUID and Decimal encoders cost 0.3-0.4 us a
#: value in Python, on the writer thread, holding the GIL. Callers therefore
#: give UUIDs and decimals as ``str`` (streams.funnel.rows does: ``event_id``,
#: ``amount``). tests/unit/sinks checks these against the DDL.
INSERT_TYPES: dict[str, tuple[str, ...]] = {
    "events": (
        "String", "LowCardinality(String)", "LowCardinality(String)", "String", "String", "String",
        "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "LowCardinality(String)",
        "LowCardinality(String)", "String", "String", "String", "String", "String",
        "LowCardinality(String)", "String", "String", "Map(String, String)", "String",
        "LowCardinality(String)",
    ),
    "stage_entries": (
        "LowCardinality(String)", "LowCardinality(String)", "UInt8", "String",
        "DateTime64(3, 'UTC')", "LowCardinality(String)", "String", "String",
        "LowCardinality(String)", "LowCardinality(String)", "LowCardinality(String)", "UInt32",
        "UInt8", "UInt8",
    ),
    "transitions": (
        "LowCardinality(String)", "LowCardinality(String)", "LowCardinality(String)", "UInt8",
        "UInt8", "String", "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "Float64",
        "LowCardinality(String)", "String", "UInt32", "UInt8", "String", "UInt8",
    ),
    "funnel_stages": (
        "LowCardinality(String)", "LowCardinality(String)", "UInt8", "UInt8", "UInt64",
        "LowCardinality(String)", "DateTime64(3, 'UTC')", "UInt64", "LowCardinality(String)",
    ),
    "spend": (
        "String", "LowCardinality(String)", "String", "String", "LowCardinality(String)",
        "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "String", "DateTime64(3, 'UTC')",
    ),
    "dropoffs": (
        "LowCardinality(String)", "LowCardinality(String)", "UInt8", "String",
        "DateTime64(3, 'UTC')", "DateTime64(3, 'UTC')", "LowCardinality(String)", "UInt32",
        "UInt8", "UInt8",
    ),
    "stage_counts": (
        "DateTime('UTC')", "UInt32", "LowCardinality(String)", "LowCardinality(String)",
        "LowCardinality(String)", "LowCardinality(String)", "LowCardinality(String)", "String",
        "UInt32", "UInt8",
    ),
    "identities": ("String", "String", "DateTime64(3, 'UTC')", "String", "String",
                   "LowCardinality(String)"),
}

# Said explicitly so that a server profile turning it off fails loudly at the
# first insert instead of (silently) never: INSERT_TYPES relies on it.
_INSERT_SETTINGS = {"input_format_native_allow_types_conversion": 1}

# Server error codes that pass by themselves: timeouts, overload, network,
# memory, read-only replica, too many parts, unknown insert status, keeper.
_RETRYABLE_CODES = {159, 202, 203, 209, 210, 241, 242, 252, 319, 425, 473, 999}
_CODE_RE = re.compile(r"Code: (\d+)")
_CREATE_TABLE = re.compile(r"^CREATE TABLE IF NOT EXISTS \w+\.(\w+)\s")


@dataclass(frozen=True)
class ClickHouseTarget:
    """Where the sink writes. ``password`` is never shown by ``str()``."""

    interface: str  # "chdb", "http" or "https"
    database: str
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)
    ca_file: str = ""  # https: the CA bundle the server's certificate is checked against
    cluster: str = ""  # the schema is on this ClickHouse cluster (sinks.cluster)
    verify: bool = True  # https: check the server's certificate

    def __str__(self) -> str:
        if self.interface == "chdb":
            return f"chdb://{self.path} (database {self.database})"
        return f"{self.interface}://{self.username}:***@{self.host}:{self.port}/{self.database}"


def parse_clickhouse_url(url: str, default_database: str = "funnel", ca_file: str = "") -> ClickHouseTarget:
    """Parse ``FUNNEL_CLICKHOUSE_URL``.

    ``chdb:///abs/path`` (or ``chdb://rel/path``) selects the embedded engine;
    ``http(s)://user:pass@host:port/db`` a server. ``?database=NAME`` works for
    both; the URL path names the database of a server. ``ca_file``
    (``FUNNEL_CLICKHOUSE_CA_FILE``) is for https only.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    database = (query.get("database") or [""])[0]
    if ca_file and parts.scheme != "https":
        raise SinkConfigError(f"FUNNEL_CLICKHOUSE_CA_FILE is set, but the ClickHouse URL is "
                              f"{parts.scheme}://: a CA file is for https:// only")
    if parts.scheme == "chdb":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise SinkConfigError(f"ClickHouse URL {url!r}: chdb:// needs a directory, e.g. chdb:///var/lib/funnel")
        return ClickHouseTarget("chdb", database or default_database, path=path)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise SinkConfigError(f"ClickHouse URL {url!r} has no host")
        database = database or parts.path.strip("/") or default_database
        try:
            port = parts.port or (8443 if parts.scheme == "https" else 8123)
        except ValueError:
            where = url.split("@")[-1]
            raise SinkConfigError(f"ClickHouse URL {where!r}: the port is not a number") from None
        return ClickHouseTarget(
            parts.scheme,
            database,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            ca_file=ca_file,
        )
    raise SinkConfigError(
        f"ClickHouse URL {url.split('@')[-1]!r}: scheme must be http, https or chdb"
    )


def connect(target: ClickHouseTarget, *, readonly: bool = False) -> Client:
    """A client for ``target``; a ``readonly`` one cannot write or change tables.

    (readonly=1: no writes, DDL, setting changes or table functions.)
    """
    settings: dict[str, Any] = {"readonly": 1} if readonly else {}
    if target.cluster and not readonly:
        settings.update(CLUSTER_INSERT_SETTINGS)
    _without_pandas()
    if target.interface == "chdb":
        Path(target.path).mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{target.path}", settings=settings)
    tls: dict[str, Any] = {"ca_cert": target.ca_file} if target.ca_file else {}
    if target.interface == "https" and not target.verify:
        tls["verify"] = False
    return clickhouse_connect.get_client(
        interface=target.interface,
        host=target.host,
        port=target.port,
        username=target.username,
        password=target.password,
        settings=settings,
        connect_timeout=10,
        send_receive_timeout=60,
        **tls,
    )


def _without_pandas() -> None:
    """Tell clickhouse-connect that pandas is absent, unless something loaded it already.

    Its insert path asks ``options.pd`` on every call, and that imports pandas
    (installed because chDB depends on it) into a process that never hands
    clickhouse-connect a DataFrame: 42 MiB of the worker's RSS. This is the
    state clickhouse-connect is in wherever pandas is not installed.
    """
    if "pandas" not in sys.modules:
        lazy = vars(driver_options)
        lazy.setdefault("pd", None)
        lazy.setdefault("pd_time_test", None)


def _statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def ddl(database: str, ddl_dir: Path = DDL_DIR,
        cluster: str | None = None) -> list[tuple[str, list[str]]]:
    """Every statement of the schema, per ``*.sql`` file of ``ddl_dir`` in name order.

    With ``cluster``, the cluster's form of each (:mod:`sinks.cluster`): Replicated
    local tables, Distributed tables under the same names, ``ON CLUSTER``.
    """
    files = sorted(ddl_dir.glob("*.sql"))
    if not files:
        raise FileNotFoundError(
            f"no ClickHouse DDL in {ddl_dir} (set FUNNEL_CLICKHOUSE_DDL_DIR)"
        )
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", database):
        raise SinkConfigError(f"database name {database!r} is not a plain identifier")
    out = []
    for path in files:
        statements = _statements(path.read_text())
        if cluster:
            statements = [s for statement in statements for s in cluster_statement(statement, cluster)]
        out.append((path.name, [s.replace("{database}", database) for s in statements]))
    return out


def migrate(client: Client, database: str, ddl_dir: Path = DDL_DIR,
            cluster: str | None = None) -> list[str]:
    """Apply every ``*.sql`` file in ``ddl_dir`` in name order (on ``cluster`` if given); idempotent.

    Returns the file names applied. Raises FileNotFoundError if there are none.
    """
    files = ddl(database, ddl_dir, cluster)
    # Tables first, from every file, then the upgrade of tables made by an
    # earlier version, then the rest (views), which may read the added columns.
    creates: dict[str, str] = {}
    for _, statements in files:
        for statement in statements:
            if not statement.startswith("CREATE OR REPLACE VIEW"):
                client.command(statement)
                if match := _CREATE_TABLE.match(statement):
                    creates[match[1]] = statement
    upgrade(client, database, creates, cluster)
    applied = []
    for name, statements in files:
        for statement in statements:
            if statement.startswith("CREATE OR REPLACE VIEW"):
                client.command(statement)
        log.info("clickhouse: applied %s to database %s%s", name, database,
                 f" on cluster {cluster}" if cluster else "")
        applied.append(name)
    return applied


def write_funnel_config(client: Client, database: str, funnels: FunnelsConfig) -> int:
    """Record the configured funnels in ``funnel_stages`` (views join it); returns rows written."""
    now = datetime.now(UTC)
    rows = [
        (f.name, stage.name, i, len(f.stages), round(f.conversion_window_days * 86400), f.attribution, now,
         round((stage.within_days or 0) * 86400), stage.event)
        for f in funnels.funnels
        for i, stage in enumerate(f.stages)
    ]
    client.insert(f"{database}.funnel_stages", rows, column_names=COLUMNS["funnel_stages"])
    return len(rows)


class ClickHouseSink(BatchSink):
    """Batched inserts with explicit columns and a deduplication token per batch.

    Each table's insert context is made once (column names and
    :data:`INSERT_TYPES`, so no ``DESCRIBE`` per insert) and reused by every
    write; writes run on the sink's one thread, so contexts are never shared.
    """

    name = "clickhouse"

    def __init__(self, client: Client, database: str, metrics: FunnelMetrics, **kwargs: Any) -> None:
        super().__init__(metrics, **kwargs)
        self.client = client
        self.database = database
        self._contexts: dict[str, InsertContext] = {}

    def write(self, table: str, rows: Sequence[Row], token: str) -> None:
        try:
            context = self._contexts.get(table)
            if context is None:
                context = self.client.create_insert_context(
                    f"{self.database}.{table}", COLUMNS[table], column_type_names=INSERT_TYPES[table]
                )
                self._contexts[table] = context
            context.settings = {**_INSERT_SETTINGS, "insert_deduplication_token": token}
            try:
                self.client.insert(data=rows, context=context)
            finally:
                context.data = None  # do not keep the batch alive after a failure
        except OperationalError as exc:
            raise SinkRetryableError(str(exc)) from exc
        except DatabaseError as exc:
            match = _CODE_RE.search(str(exc))
            if match and int(match.group(1)) in _RETRYABLE_CODES:
                raise SinkRetryableError(str(exc)) from exc
            raise

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a read query on the sink's client (call through :meth:`run_blocking`)."""
        return self.client.query(sql, parameters=parameters)
