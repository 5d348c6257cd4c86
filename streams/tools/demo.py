"""``funnel demo``: embedded broker + chDB + generator + worker + live funnel."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from pydantic import SecretStr

from streams.pipeline import Pipeline
from streams.reports.report import FUNNEL_QUERY, format_funnel
from streams.settings import Settings
from streams.tools.broker import EmbeddedBroker
from streams.tools.netutil import free_port
from streams.tools.worker import run_worker

__all__ = ["run_demo"]

log = logging.getLogger("funnel.demo")


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _attach_printer(pipeline: Pipeline, every: float) -> None:
    """Every ``every`` seconds print the live funnel from ClickHouse."""
    sql = FUNNEL_QUERY.format(database=pipeline.database)

    async def print_funnel() -> None:
        if pipeline.reader is None:
            return
        result = await pipeline.run_blocking(pipeline.reader.query, sql)
        counts: dict[str, dict[str, int]] = {}
        for funnel, stage, users in result.result_rows:
            counts.setdefault(funnel, {})[stage] = users
        m = pipeline.metrics.registry
        valid = sum(s.value for metric in m.collect() if metric.name == "funnel_events"
                    for s in metric.samples if s.name == "funnel_events_total")
        invalid = sum(s.value for metric in m.collect() if metric.name == "funnel_invalid_events"
                      for s in metric.samples if s.name == "funnel_invalid_events_total")
        print(f"\n== {time.strftime('%H:%M:%S')}  {valid:.0f} events, {invalid:.0f} dead-lettered")
        for name, funnel in pipeline.funnels.items():
            print(format_funnel(funnel, counts.get(name, {})))
        sys.stdout.flush()

    pipeline.app.timer(every)(print_funnel)


def run_demo(settings: Settings, rate: float, refresh: float) -> int:
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    broker: EmbeddedBroker | None = None
    generator: subprocess.Popen[bytes] | None = None
    try:
        if not settings.kafka_url:
            broker = EmbeddedBroker(log_file=data_dir / "broker.log").start()
            settings.kafka_url = broker.url
        if settings.clickhouse_url is None:
            settings.clickhouse_url = SecretStr(f"chdb://{data_dir / 'chdb'}")
        if not _port_free(settings.web_host, settings.web_port):
            settings.web_port = free_port(settings.web_host)
        settings.data_dir = data_dir
        web = f"http://{settings.web_host}:{settings.web_port}"
        env = {**os.environ, "FUNNEL_KAFKA_URL": settings.kafka_url,
               "FUNNEL_TOPIC_PREFIX": settings.topic_prefix}
        gen_log = open(data_dir / "generator.log", "ab")  # noqa: SIM115
        generator = subprocess.Popen(
            [sys.executable, "-m", "streams.tools.cli", "generate", "--rate", str(rate)],
            env=env, stdout=gen_log, stderr=gen_log, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        gen_log.close()
        print(
            f"funnel demo\n"
            f"  broker     {settings.kafka_url}{' (embedded Tansu, memory)' if broker else ''}\n"
            f"  clickhouse {settings.clickhouse_url.get_secret_value().split('@')[-1]}\n"
            f"  page       {web}/\n"
            f"  metrics    {web}/metrics\n"
            f"  sql        funnel sql \"SELECT * FROM funnel.time_to_convert\"   (or {web}/sql?q=...)\n"
            f"  generator  {rate:.0f} events/s (log: {data_dir / 'generator.log'})\n"
            f"Ctrl-C stops everything; the ClickHouse data stays in {data_dir / 'chdb'}.",
            flush=True,
        )
        return run_worker(settings, customize=lambda p: _attach_printer(p, refresh), quiet=True)
    finally:
        if generator is not None and generator.poll() is None:
            generator.terminate()
            try:
                generator.wait(5)
            except subprocess.TimeoutExpired:
                generator.kill()
        if broker is not None:
            broker.stop()
