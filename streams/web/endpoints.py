"""The worker's own endpoints: ``/metrics`` (Prometheus), ``/health`` and ``/sql``.

The handlers read a :class:`Worker`: what the web server may know of the
worker it runs in (:class:`streams.pipeline.Pipeline` is one). They never
import the pipeline, so the pipeline can import them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from clickhouse_connect.driver.client import Client
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas import FunnelDefinition
from sinks import FunnelMetrics
from streams.settings import Settings
from streams.web.sqlguard import UnsafeQuery, check_read_only

__all__ = ["Worker", "install_endpoints", "view"]


class Worker(Protocol):
    """What the web handlers read of the worker they run in."""

    settings: Settings
    funnels: dict[str, FunnelDefinition]
    metrics: FunnelMetrics
    reader: Client | None  # read-only ClickHouse client; None: this worker serves no SQL
    database: str

    @property
    def ready(self) -> bool:
        """Partitions assigned and no rebalance under way: the worker consumes."""

    @property
    def last_event_ms(self) -> int | None:
        """The newest event time processed, epoch milliseconds."""

    @property
    def pending_rows(self) -> int:
        """Rows the journey sinks hold, not yet written."""

    def consumer_lag(self) -> int | None:
        """Messages not yet processed on this worker's input partitions; None: not known yet."""

    async def run_blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the ClickHouse thread, queued with the sinks' writes."""


def view(handler: Any) -> Any:
    """Faust binds a page function as the view's ``get``: hand it a plain function."""

    async def get(view: Any, request: Any) -> Any:
        return await handler(view, request)

    get.__name__ = handler.__name__.lstrip("_")
    return get


def jsonable(value: Any) -> Any:
    """A ClickHouse value as JSON can carry it."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def install_endpoints(worker: Worker, app: Any) -> None:
    """Register ``/metrics``, ``/health`` and ``/sql`` on the Faust ``app``."""

    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the content type.
        content_type = CONTENT_TYPE_LATEST.split("; charset=")[0]
        return web.bytes(generate_latest(worker.metrics.registry), content_type=content_type)

    async def health_page(web: Any, request: Any) -> Any:
        ready = worker.ready
        return web.json(
            {"status": "ok" if ready else "starting", "ready": ready, "app_id": worker.settings.app_id},
            status=200 if ready else 503,
        )

    async def sql_page(web: Any, request: Any) -> Any:
        """Read-only SQL for other processes (the embedded engine has one owner)."""
        reader = worker.reader
        if reader is None:
            return web.json({"error": "this worker serves no SQL"}, status=404)
        try:
            query = check_read_only(request.query.get("q", ""))
        except UnsafeQuery as exc:
            return web.json({"error": f"{exc} (pass one query as ?q=)"}, status=400)
        try:
            result = await worker.run_blocking(reader.query, query)
        except Exception as exc:
            return web.json({"error": str(exc)}, status=400)
        rows = [[jsonable(v) for v in row] for row in result.result_rows]
        return web.json({"columns": list(result.column_names), "rows": rows})

    for path, handler in (("/metrics", metrics_page), ("/health", health_page), ("/sql", sql_page)):
        app.page(path)(view(handler))
