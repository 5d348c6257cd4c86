"""The worker's web server: its endpoints, the page and its JSON API, the SQL guard."""

from __future__ import annotations

from typing import Any

from streams.web import routes
from streams.web.endpoints import Worker, install_endpoints

__all__ = ["Worker", "install"]


def install(worker: Worker, app: Any) -> None:
    """Register ``/metrics``, ``/health``, ``/sql``, the page and its API on the worker's Faust ``app``."""
    install_endpoints(worker, app)
    routes.install(worker, app)
