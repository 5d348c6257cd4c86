"""The live funnel page and its JSON API, on the worker's own web server.

:func:`install` adds, next to ``/metrics``, ``/health`` and ``/sql``:

* ``/`` the page (``streams/web/static/``: plain HTML, CSS and JavaScript, no build
  step, nothing fetched from elsewhere: the machines may have no internet);
* ``/api/config``, ``/api/funnel``, ``/api/trend``, ``/api/stalled`` and
  ``/api/health``: JSON the page polls, documented for other tools in
  the README ("The JSON API").

ClickHouse is read through the worker's read-only client on the sink thread
(the embedded engine must not be driven from two threads). Every query is
parameterized and every parameter is checked against an allow-list first
(:func:`streams.reports.report.select`); a bad one is a 400 that names the allowed
values, a ClickHouse failure a 503.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

import faust
from prometheus_client import Counter

from streams.reports.report import (
    ALL_CHANNELS,
    DEFAULT_RANGE,
    DEFAULT_STALL,
    OTHER_CHANNEL,
    RANGES,
    STALL_AFTER,
    BadSelection,
    Selection,
    funnel_report,
    select,
    stalled_users,
    trend,
)
from streams.web.endpoints import Worker, view

__all__ = ["API_PATHS", "REFRESH_SECONDS", "FunnelWeb", "install"]

log = logging.getLogger("funnel.web")

#: How often the page polls the API.
REFRESH_SECONDS = 5.0
#: Events/s on the page is the rate over about this many seconds.
RATE_WINDOW_SECONDS = 10.0
_SAMPLE_SECONDS = 1.0

#: URL path -> (file in streams/web/static, content type).
STATIC_FILES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html"),
    "/static/app.js": ("app.js", "text/javascript"),
    "/static/style.css": ("style.css", "text/css"),
}
API_PATHS = ("/api/config", "/api/funnel", "/api/trend", "/api/stalled", "/api/health")
# The page must show fresh numbers and a new version's files at once.
_NO_STORE = {"Cache-Control": "no-store"}


def counter_total(counter: Counter) -> float:
    """Sum of a labelled counter over all its label values."""
    return sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total"))


class FunnelWeb:
    """The page's handlers and the events/s sampler of one worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        root = files("streams.web") / "static"
        self.static = {
            path: (root.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in STATIC_FILES.items()
        }
        self._samples: deque[tuple[float, float]] = deque(
            maxlen=int(RATE_WINDOW_SECONDS / _SAMPLE_SECONDS) + 1
        )

    def routes(self) -> list[tuple[str, Callable[..., Any]]]:
        pages: list[tuple[str, Callable[..., Any]]] = [(p, self._static_handler(p)) for p in self.static]
        return [*pages, *zip(API_PATHS, (self.config, self.funnel, self.trend, self.stalled, self.health),
                             strict=True)]

    def _static_handler(self, path: str) -> Callable[..., Any]:
        body, content_type = self.static[path]

        async def static_file(web: Any, request: Any) -> Any:
            return web.bytes(body, content_type=content_type, headers=dict(_NO_STORE))

        static_file.__name__ = f"static_{STATIC_FILES[path][0].replace('.', '_')}"
        return static_file

    # -- pipeline health -----------------------------------------------------------------
    async def sample(self) -> None:
        """Timer: remember the valid-event counter, for events/s."""
        self._samples.append((time.monotonic(), counter_total(self.worker.metrics.events)))

    def events_per_second(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None

    def health_snapshot(self) -> dict[str, Any]:
        p = self.worker
        m = p.metrics
        last = p.last_event_ms
        rate = self.events_per_second()
        return {
            "app_id": p.settings.app_id,
            "ready": p.ready,
            "events_per_second": None if rate is None else round(rate, 1),
            "events_total": int(counter_total(m.events)),
            "dead_letter_total": int(counter_total(m.invalid_events)),
            "duplicates_total": int(counter_total(m.duplicate_events)),
            "last_event_time": None if last is None else _iso_ms(last),
            "last_event_age_seconds": None if last is None else round(time.time() - last / 1000, 1),
            "consumer_lag": p.consumer_lag(),
            "sink_backlog_rows": p.pending_rows,
            "sink_errors_total": int(counter_total(m.sink_errors)),
        }

    # -- handlers ----------------------------------------------------------------------------
    async def config(self, web: Any, request: Any) -> Any:
        """What the page may ask for: funnels, periods, channels, thresholds, refresh period."""
        p = self.worker
        return web.json({
            "funnels": [{"name": f.name, "stages": list(f.names)} for f in p.funnels.values()],
            "ranges": [{"key": k, "label": label} for k, (_, label) in RANGES.items()],
            "default_range": DEFAULT_RANGE,
            "channels": [ALL_CHANNELS, *p.settings.channel_list, OTHER_CHANNEL],
            "stall_after": [{"key": k, "label": label} for k, (_, label) in STALL_AFTER.items()],
            "default_stall": DEFAULT_STALL,
            "refresh_seconds": REFRESH_SECONDS,
            "clickhouse": p.reader is not None,
        }, headers=dict(_NO_STORE))

    async def funnel(self, web: Any, request: Any) -> Any:
        return await self._answer(web, request, funnel_report)

    async def trend(self, web: Any, request: Any) -> Any:
        return await self._answer(web, request, trend)

    async def stalled(self, web: Any, request: Any) -> Any:
        after = request.query.get("after") or DEFAULT_STALL
        return await self._answer(web, request, lambda rows, sel: stalled_users(rows, sel, after))

    async def health(self, web: Any, request: Any) -> Any:
        return web.json(self.health_snapshot(), headers=dict(_NO_STORE))

    async def _answer(
        self, web: Any, request: Any, build: Callable[[Any, Selection], dict[str, Any]]
    ) -> Any:
        p = self.worker
        if p.reader is None:
            return web.json({"error": "this worker reads no ClickHouse"}, status=404)
        q = request.query
        try:
            sel = select(
                p.funnels, p.settings.channel_list, funnel=q.get("funnel"), period=q.get("range"),
                channel=q.get("channel"), now_ms=int(time.time() * 1000), database=p.database,
            )
            # On the sink's thread: reads queue with the writes, never beside them.
            data = await p.run_blocking(build, self._rows, sel)
        except BadSelection as exc:
            return web.json({"error": str(exc)}, status=400)
        except Exception as exc:
            log.warning("web: %s failed: %s", request.path, exc)
            return web.json({"error": f"ClickHouse: {exc}"}, status=503)
        return web.json(data, headers=dict(_NO_STORE))

    def _rows(self, sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        assert self.worker.reader is not None
        return self.worker.reader.query(sql, parameters=dict(params)).result_rows


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def install(worker: Worker, app: faust.App) -> None:
    """Register the page, its files and the JSON API on the worker's Faust ``app``, plus the rate sampler."""
    site = FunnelWeb(worker)
    for path, handler in site.routes():
        app.page(path)(view(handler))
    app.timer(_SAMPLE_SECONDS)(site.sample)
    s = worker.settings
    log.info("funnel page http://%s:%d/ (JSON API: %s)", s.web_host, s.web_port, ", ".join(API_PATHS))
