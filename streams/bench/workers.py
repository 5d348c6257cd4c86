"""The worker processes the ``pipeline``, ``freshness`` and ``memory`` stages measure, and py-spy on them."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.bench.context import Context
from streams.bench.kafka import PARTITIONS, SESSION_TIMEOUT
from streams.bench.measure import metric_sum, rate
from streams.bench.report import Progress

#: /metrics poll period of wait_drained until the worker has consumed anything.
FIRST_POLL_SECONDS = 0.02


def stop_process(proc: subprocess.Popen[bytes], signum: int, timeout: float) -> None:
    """Send ``signum``, wait up to ``timeout`` seconds for the process to exit, then SIGKILL it."""
    proc.send_signal(signum)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerProcess:
    """`python -m streams.tools.cli worker` on its own prefix, data directory and port."""

    def __init__(self, bootstrap: str, run_dir: Path, name: str, prefix: str, store: str = "memory",
                 extra_env: dict[str, str] | None = None, module: str | None = None) -> None:
        from streams.tools.netutil import free_port

        self.name = name
        self.port = free_port()
        data = run_dir / name
        data.mkdir(parents=True, exist_ok=True)
        self.log_path = data / "worker.log"
        self.env = {
            **os.environ,
            "FUNNEL_KAFKA_URL": f"kafka://{bootstrap}",
            "FUNNEL_CLICKHOUSE_URL": f"chdb://{data / 'chdb'}",
            "FUNNEL_DATA_DIR": str(data),
            "FUNNEL_APP_ID": f"bench-{name}-{uuid.uuid4().hex[:8]}",
            "FUNNEL_TOPIC_PREFIX": prefix,
            "FUNNEL_TOPIC_PARTITIONS": str(PARTITIONS),
            "FUNNEL_STORE": f"{store}://",
            "FUNNEL_WEB_HOST": "127.0.0.1",
            "FUNNEL_WEB_PORT": str(self.port),
            "FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS": str(SESSION_TIMEOUT),
            "FUNNEL_STATUS_INTERVAL_SECONDS": "5",
            **(extra_env or {}),
        }
        command = [sys.executable, "-m", *(module.split() if module else ["streams.tools.cli", "worker"])]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.started = time.monotonic()

    def get(self, path: str, timeout: float = 30.0) -> bytes:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bytes(resp.read())

    def metrics(self) -> str:
        return self.get("/metrics", timeout=10).decode()

    def sql(self, query: str, timeout: float = 300.0) -> list[list[Any]]:
        try:
            answer = json.loads(self.get("/sql?" + urllib.parse.urlencode({"q": query}), timeout))
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        if "error" in answer:
            raise RuntimeError(f"{self.name}: SQL failed: {answer['error']}")
        return list(answer["rows"])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"worker {self.name} exited with {self.proc.returncode}:\n{tail}")

    def rss(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) in bytes."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def wait_metrics(self, timeout: float = 120.0) -> str:
        """/metrics once it answers (the web server starts before the partitions are assigned)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                return self.metrics()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if json.loads(self.get("/health", timeout=2)).get("ready"):
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout:.0f}s (log: {self.log_path})")

    def stop(self, timeout: float = 3.0) -> None:
        """SIGTERM, then SIGKILL: the bench needs none of what a graceful stop saves."""
        if self.proc.poll() is None:
            stop_process(self.proc, signal.SIGTERM, timeout)


@dataclass
class Drained:
    """A worker's run through a backlog, read from its /metrics."""

    first_at: float  # monotonic time of the first sample with events consumed
    first_count: float  # events already consumed at that sample
    last_row_at: float  # monotonic time of the sample where the last row count appeared
    rows: float
    cpu: dict[str, float]  # CPU seconds each process used from the first sample to the last


def wait_drained(worker: WorkerProcess, expected_events: int, progress: Progress, what: str,
                 timeout: float, settle: float = 2.0, every: float = 0.25,
                 others: dict[str, int | None] | None = None, event_rows: int | None = None) -> Drained:
    """Poll /metrics until ``event_rows`` event rows are written and the sinks are quiet.

    ``expected_events`` are the default funnel's events (what the consumed
    count and its rate follow); ``event_rows`` the ``events`` rows of every funnel
    (:meth:`Context.event_rows`; default ``expected_events``, one funnel).

    The last row is visible when the sink row counter last moved: an insert is
    queryable in chDB when it returns, and the counter moves right after.
    ``settle`` seconds without a change (an agent waits up to FUNNEL_BATCH_MAX_SECONDS
    to fill a batch) and nothing pending mean the pipeline is done. Each poll
    costs the worker a few milliseconds: ``every`` keeps that near 2 %.
    """
    deadline = time.monotonic() + timeout
    first_at = first_count = None
    pids = {"worker": worker.proc.pid, **{k: v for k, v in (others or {}).items() if v}}
    cpu_first: dict[str, float] = {}
    cpu_last: dict[str, float] = {}

    def cpu() -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in pids.items()}
    rows, last_change = -1.0, time.monotonic()
    worker.wait_metrics()
    while True:
        worker.check_alive()
        text = worker.metrics()
        now = time.monotonic()
        consumed = metric_sum(text, "funnel_events_total", funnel="default")
        written = metric_sum(text, "funnel_sink_rows_total")
        events_rows = metric_sum(text, "funnel_sink_rows_total", table="events")
        if first_at is None and consumed > 0:
            first_at, first_count, cpu_first = now, consumed, cpu()
        if written != rows:
            rows, last_change, cpu_last = written, now, cpu()
        progress(f"{what}: {consumed:.0f}/{expected_events} events consumed, {events_rows:.0f} event rows, "
                 f"{written:.0f} rows in all, "
                 f"{rate(consumed - (first_count or 0), now - (first_at or now)):.0f} events/s")
        if (first_at is not None and events_rows >= (event_rows or expected_events)
                and now - last_change >= settle and metric_sum(text, "funnel_sink_pending_rows") == 0):
            used = {k: round(cpu_last[k] - cpu_first[k], 2) for k in cpu_first}
            return Drained(first_at, first_count or 0.0, last_change, rows, used)
        if now > deadline:
            raise TimeoutError(f"{what}: {events_rows:.0f}/{event_rows or expected_events} event rows after "
                               f"{timeout:.0f}s (log: {worker.log_path})")
        # Until the worker consumes, poll often: the rate is timed from the first sample that
        # sees consumption, and a pre-produced backlog is consumed at tens of thousands a second.
        time.sleep(every if first_at is not None else min(every, FIRST_POLL_SECONDS))


@contextlib.contextmanager
def profiled(ctx: Context, worker: WorkerProcess) -> Iterator[None]:
    """With ``--profile DIR``: py-spy records ``worker`` meanwhile (SIGINT makes it write the file)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if ctx.profile is None or not Path(spy).exists():
        if ctx.profile is not None:
            print("bench: --profile needs py-spy (pip install py-spy); not profiling", file=sys.stderr)
        yield
        return
    ctx.profile.mkdir(parents=True, exist_ok=True)
    out = ctx.profile / f"{worker.name}.txt"
    spy_proc = subprocess.Popen([spy, "record", "--pid", str(worker.proc.pid), "--rate", "100",
                                 "--format", "raw", "--threads", "-o", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield
    finally:
        stop_process(spy_proc, signal.SIGINT, 60)
    ctx.report.details.setdefault("profiles", []).append(str(out))
