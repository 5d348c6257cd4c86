"""``funnel demo``: embedded broker + chDB + generator + worker, and one live view of the funnel.

The terminal shows only the demo's view (:mod:`streams.tools.demoview`): the
worker's, broker's and generator's logs go to files under
``FUNNEL_DATA_DIR/logs``. Anything else the process writes to its standard
output or error (a library's warning, a C library's message) goes to the
worker's log too: the view writes to a copy of the terminal taken before.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from pydantic import SecretStr

from streams.pipeline import Pipeline
from streams.settings import Settings
from streams.tools.broker import EmbeddedBroker
from streams.tools.demoview import DemoView
from streams.tools.netutil import free_port
from streams.tools.worker import run_worker

__all__ = ["run_demo"]

log = logging.getLogger("funnel.demo")

#: Without a terminal, the view is printed at most this often (a block per refresh).
PLAIN_MIN_SECONDS = 5.0


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _shown(path: Path) -> Path:
    """``path`` as the user can type it: relative to the working directory when inside it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


class _Terminal:
    """The process's standard output and error sent to ``log``; the terminal kept for the view."""

    def __init__(self, log: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.out: IO[str] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        self.tty = self.out.isatty()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def restore(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        for saved, fd in zip(self._saved, (1, 2), strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.out.flush()
        self.out.close()


def run_demo(settings: Settings, rate: float, refresh: float, snapshot: Path | None = None) -> int:
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    worker_log = logs / "worker.log"
    broker: EmbeddedBroker | None = None
    generator: subprocess.Popen[bytes] | None = None
    view: DemoView | None = None
    print(f"funnel demo: starting (logs in {_shown(logs)})", flush=True)
    terminal = _Terminal(worker_log)
    code = 1
    try:
        if not settings.kafka_url:
            broker = EmbeddedBroker(log_file=logs / "broker.log").start()
            settings.kafka_url = broker.url
        if settings.clickhouse_url is None:
            settings.clickhouse_url = SecretStr(f"chdb://{data_dir / 'chdb'}")
        if not _port_free(settings.web_host, settings.web_port):
            settings.web_port = free_port(settings.web_host)
        settings.data_dir = data_dir
        web = f"http://{settings.web_host}:{settings.web_port}"
        env = {**os.environ, "FUNNEL_KAFKA_URL": settings.kafka_url,
               "FUNNEL_TOPIC_PREFIX": settings.topic_prefix}
        with open(logs / "generator.log", "ab") as gen_log:
            generator = subprocess.Popen(
                [sys.executable, "-m", "streams.tools.cli", "generate", "--rate", str(rate)],
                env=env, stdout=gen_log, stderr=gen_log, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        addresses = {"page": f"{web}/", "metrics": f"{web}/metrics",
                     "sql": 'funnel sql "SELECT * FROM funnel.time_to_convert"'}
        started_ms = int(time.time() * 1000)

        def attach(pipeline: Pipeline) -> None:
            nonlocal view
            view = DemoView(pipeline, terminal.out, addresses, _shown(logs), started_ms, terminal.tty,
                            snapshot_file=snapshot)
            pipeline.app.timer(refresh if terminal.tty else max(refresh, PLAIN_MIN_SECONDS))(view.refresh)

        log.info("demo: broker %s, generator %.0f events/s, page %s", settings.kafka_url, rate, web)
        code = run_worker(settings, customize=attach, quiet=True, logfile=worker_log)
    finally:
        if view is not None:
            view.stop()
        if generator is not None and generator.poll() is None:
            generator.terminate()
            try:
                generator.wait(5)
            except subprocess.TimeoutExpired:
                generator.kill()
        if broker is not None:
            broker.stop()
        terminal.restore()
    print(f"funnel demo stopped. ClickHouse data: {data_dir / 'chdb'} (`funnel sql` reads it); "
          f"logs: {logs}", flush=True)
    return code
