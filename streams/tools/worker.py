"""Start a worker: check config, create topics, migrate ClickHouse, run Faust."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faust
import prometheus_client
from clickhouse_connect.driver.client import Client

from schemas import FunnelsConfig
from sinks import ClickHouseTarget, connect, migrate, parse_clickhouse_url, write_funnel_config
from streams.agents.collector import BatchCollector
from streams.pipeline import Pipeline
from streams.settings import Settings, load_funnels
from streams.topics import ensure_topics

__all__ = ["open_clickhouse", "run_worker"]

log = logging.getLogger("funnel.worker")


def clickhouse_target(settings: Settings, *, reader: bool = False) -> ClickHouseTarget:
    """Where the sinks write; with ``reader``, what /sql, the page and the reports read.

    The reader is ``FUNNEL_CLICKHOUSE_READER_URL`` when set, else the writer's URL
    (always used in a readonly session).
    """
    if settings.clickhouse_url is None:
        raise ValueError(
            "FUNNEL_CLICKHOUSE_URL is not set (http://user:pass@host:8123/funnel or chdb:///path)"
        )
    url = settings.clickhouse_url
    if reader and settings.clickhouse_reader_url is not None:
        url = settings.clickhouse_reader_url
    ca_file = str(settings.clickhouse_ca_file) if settings.clickhouse_ca_file else ""
    target = parse_clickhouse_url(url.get_secret_value(), settings.clickhouse_database, ca_file)
    if settings.clickhouse_cluster and target.interface == "chdb":
        raise ValueError("FUNNEL_CLICKHOUSE_CLUSTER needs a ClickHouse server (http:// or https:// in "
                         "FUNNEL_CLICKHOUSE_URL), not the embedded chdb:// engine")
    return dataclasses.replace(target, cluster=settings.clickhouse_cluster or "",
                               verify=settings.clickhouse_verify)


def open_clickhouse(
    target: ClickHouseTarget, funnels: FunnelsConfig | None = None, wait_seconds: float = 60.0
) -> Client:
    """Connect (waiting for a server that is still starting), apply the DDL and
    record the funnel configuration."""
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            client = connect(target)
            break
        except Exception as exc:
            if target.interface == "chdb" or time.monotonic() > deadline:
                raise
            log.info("waiting for ClickHouse at %s: %s", target, exc)
            time.sleep(1.0)
    migrate(client, target.database, cluster=target.cluster or None)
    if funnels is not None:
        write_funnel_config(client, target.database, funnels)
    return client


#: Allocations between two young-generation collections of the garbage collector (Python's
#: default: 700). A worker allocates a few dicts and lists per event and keeps every
#: user's journey alive, so with the default the collector ran every few hundred
#: events and each run walked the survivors: 25-30 % of a worker's throughput
#: (BENCHMARKS.md). A running worker also freezes what lives through each batch
#: (streams.agents.collector), which starts the count afresh: 500 000 is more than a batch
#: allocates, so these collections are for start-up and table recovery.
GC_THRESHOLDS = (500_000, 20, 100)


def tune_gc() -> None:
    """Collect garbage less often (see :data:`GC_THRESHOLDS`)."""
    gc.set_threshold(*GC_THRESHOLDS)


class _Worker(faust.Worker):
    """Faust's worker, whose second Ctrl-C stops the process at once (the first stops it cleanly)."""

    _interrupts = 0

    def _on_sigint(self) -> None:
        self._interrupts += 1
        if self._interrupts == 1:
            super()._on_sigint()
        else:
            log.warning("second interrupt: stopping now, without a clean shutdown")
            os._exit(130)


def run_worker(
    settings: Settings,
    *,
    funnels: FunnelsConfig | None = None,
    customize: Callable[[Pipeline], None] | None = None,
    quiet: bool = False,
    logfile: Path | None = None,
) -> int:
    """Run until stopped (SIGINT/SIGTERM; a second SIGINT stops at once). Returns the exit code.

    ``logfile``: the worker's log goes there (at ``FUNNEL_LOG_LEVEL``), and
    nothing of Faust's goes to the terminal (no banner, no redirected prints).
    """
    funnels = funnels or load_funnels(settings.funnels_file)
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    target = clickhouse_target(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    created = loop.run_until_complete(ensure_topics(settings))
    client = open_clickhouse(target, funnels)
    reader = connect(clickhouse_target(settings, reader=True), readonly=True)
    pipeline = Pipeline(
        settings, funnels, clickhouse=client, database=target.database, reader=reader
    )
    if customize:
        customize(pipeline)
    log.info(
        "worker %s: kafka %s, clickhouse %s, funnels %s, web http://%s:%d/ (page, api, metrics, sql, "
        "health)%s",
        settings.app_id, settings.kafka_url, target, ", ".join(pipeline.funnels),
        settings.web_host, settings.web_port,
        f", created topics {', '.join(created)}" if created else "",
    )
    # The embedded engine has one owner per data directory: tell `funnel sql`
    # (and anyone else) where to send read-only queries while this runs.
    owner_file = settings.data_dir / "worker.json"
    if target.interface == "chdb":
        web = f"http://{settings.web_host}:{settings.web_port}"
        owner_file.write_text(json.dumps({"web": web, "pid": os.getpid(), "chdb": target.path}))
    logs: dict[str, Any] = {}
    if logfile is not None:
        logs = {"logfile": str(logfile), "redirect_stdouts": False}
    worker = _Worker(pipeline.app, loop=loop, loglevel=settings.log_level, quiet=quiet, **logs)
    tune_gc()
    pipeline.runner.collector = BatchCollector()
    # No `<counter>_created` series: one per counter series, read by no dashboard or alert
    # here, they made each scrape a third longer (and Prometheus store them).
    prometheus_client.disable_created_metrics()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        pipeline.close()
        if target.interface == "chdb":
            owner_file.unlink(missing_ok=True)
    return 0
