"""Start and drive the real parts: embedded broker, worker processes, Kafka I/O."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.faust_adapt.endoffsets import read_end_offsets
from streams.tools.netutil import free_port


def pipeline_environment(broker_url: str, root: Path, app: str = "funnel-test") -> dict[str, str]:
    """Environment of a fresh pipeline under ``root``: its own topic prefix, consumer group and chDB."""
    run = uuid.uuid4().hex[:8]
    return {
        "FUNNEL_KAFKA_URL": broker_url,
        "FUNNEL_CLICKHOUSE_URL": f"chdb://{root / 'chdb'}",
        "FUNNEL_DATA_DIR": str(root / "data"),
        "FUNNEL_TOPIC_PREFIX": f"t{run}.",
        "FUNNEL_APP_ID": f"{app}-{run}",
        "FUNNEL_TOPIC_PARTITIONS": "4",
        "FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
        "FUNNEL_BATCH_MAX_SECONDS": "0.3",
        "FUNNEL_STATUS_INTERVAL_SECONDS": "2",
        "FUNNEL_LOG_LEVEL": "info",
    }


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.25) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError:
            raise  # the check says it can never succeed (a process died)
        except Exception as exc:  # a part still starting answers with errors
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Worker:
    """A `funnel worker` subprocess and its web endpoints."""

    proc: subprocess.Popen[bytes]
    web: str
    log_path: Path
    env: dict[str, str]

    def get(self, path: str, timeout: float = 30.0) -> bytes:
        with urllib.request.urlopen(f"{self.web}{path}", timeout=timeout) as resp:
            return bytes(resp.read())

    def sql(self, query: str) -> list[list[Any]]:
        try:
            answer = json.loads(self.get("/sql?" + urllib.parse.urlencode({"q": query})))
        except urllib.error.HTTPError as exc:
            answer = json.loads(exc.read())
        if "error" in answer:
            raise AssertionError(f"SQL failed: {answer['error']}")
        return list(answer["rows"])

    def scalar(self, query: str) -> Any:
        return self.sql(query)[0][0]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on /metrics, keyed by (name, sorted labels)."""
        samples = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric_sum(self, name: str, **labels: str) -> float:
        want = set(labels.items())
        return sum(v for (n, ls), v in self.metrics().items() if n == name and want <= set(ls))

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_worker(env: dict[str, str], log_path: Path, timeout: float = 60.0, *,
                 command: list[str] | None = None) -> Worker:
    """Start `funnel worker` (or ``command``) and wait until it consumes (/health says ready)."""
    port = free_port()
    full_env = {**os.environ, **env, "FUNNEL_WEB_PORT": str(port), "FUNNEL_WEB_HOST": "127.0.0.1"}
    out = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        command or [sys.executable, "-m", "streams.tools.cli", "worker"], env=full_env, stdout=out,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    out.close()
    worker = Worker(proc, f"http://127.0.0.1:{port}", log_path, full_env)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{worker.log_tail()}")
        return bool(json.loads(worker.get("/health", timeout=2))["ready"])

    try:
        wait_until(ready, timeout, "the worker to start")
    except BaseException:
        worker.stop(signal.SIGKILL)
        raise
    return worker


def produce(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes | None]],
            **producer_options: Any) -> int:
    """Send (topic, key, value) messages and wait until all are acknowledged."""

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, **producer_options)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for topic, key, value in messages]
            await producer.flush()
            for fut in futures:
                await fut
            return len(futures)
        finally:
            await producer.stop()

    return asyncio.run(run())


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0,
                **consumer_options: Any) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` records arrived (or timeout)."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None, **consumer_options,
        )
        await consumer.start()
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(records) < expected and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    records.extend(msgs)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def event(event_type: str, user: str, ts_ms: int, **fields: Any) -> tuple[str, str, bytes]:
    """One valid event as (event_type, event_id, JSON bytes)."""
    import uuid

    event_id = fields.pop("event_id", None) or str(uuid.uuid4())
    body = {"event_id": event_id, "user_id": user, "ts": ts_ms, **fields}
    return event_type, event_id, json.dumps(body).encode()


# -- helpers for the reliability tests (tests/integration/test_reliability_*.py) ----------------

#: The topics a pipeline's consumer group reads (its lag says what is left to do).
CONSUMED_TOPICS = ("visit", "signup", "webinar", "consultation", "purchase", "normalized")


def bootstrap_of(env: dict[str, str]) -> str:
    return env["FUNNEL_KAFKA_URL"].removeprefix("kafka://")


def start_faulty_worker(env: dict[str, str], log_path: Path, timeout: float = 60.0) -> Worker:
    """Like :func:`start_worker`, with ClickHouse inserts that fail on demand (faulty_worker.py)."""
    launcher = Path(__file__).with_name("faulty_worker.py")
    return start_worker(env, log_path, timeout, command=[sys.executable, str(launcher)])


@contextlib.contextmanager
def generating(env: dict[str, str], truth: Path, *args: str, log_path: Path | None = None
               ) -> Iterator[subprocess.Popen[bytes]]:
    """Run `funnel generate --truth TRUTH ARGS...` in the background; killed if still running at exit."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.tools.cli", "generate", "--truth", str(truth), *args],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


TRUTH_KEYS = ("entries", "entries_by_channel", "transitions", "revenue", "events")


def load_truth(path: Path) -> dict[str, Any]:
    """The generator's ground truth, in the shape of :func:`funnel_numbers`."""
    truth = json.loads(path.read_text())
    numbers = {key: truth[key] for key in TRUTH_KEYS}
    numbers["revenue"] = {c: Decimal(v) for c, v in numbers["revenue"].items()}
    return numbers


def funnel_numbers(worker: Worker) -> dict[str, Any]:
    """What ClickHouse says, in the shape of the generator's ground truth (FINAL reads)."""
    by_channel: dict[str, dict[str, int]] = {}
    for stage, channel, n in worker.sql(
            "SELECT stage, channel, count() FROM funnel.stage_entries FINAL GROUP BY stage, channel"):
        by_channel.setdefault(stage, {})[channel] = n
    return {
        "entries": dict(worker.sql(
            "SELECT stage, count() FROM funnel.stage_entries FINAL GROUP BY stage")),
        "entries_by_channel": by_channel,
        "transitions": dict(worker.sql(
            "SELECT concat(from_stage, '->', to_stage), count() FROM funnel.transitions FINAL "
            "GROUP BY from_stage, to_stage")),
        "revenue": {c: Decimal(v) for c, v in worker.sql(
            "SELECT currency, toString(sum(amount)) FROM funnel.events FINAL "
            "WHERE event_type = 'purchase' GROUP BY currency")},
        "events": worker.scalar("SELECT count() FROM funnel.events FINAL"),
    }


def assert_exact_truth(worker: Worker, truth_path: Path) -> int:
    """ClickHouse equals the ground truth exactly, windows included, users consistent.

    Call once the pipeline is drained. Returns the number of distinct events.
    """
    truth = load_truth(truth_path)
    assert funnel_numbers(worker) == truth
    windows = window_numbers(worker)
    assert windows == {"entries": truth["entries"], "transitions": truth["transitions"]}
    assert consistency_violations(worker) == dict.fromkeys(CONSISTENCY_CHECKS, 0)
    return int(truth["events"])


def window_numbers(worker: Worker) -> dict[str, Any]:
    """Window members summed over all windows, in the shape of entries/transitions."""
    rows = worker.sql(
        "SELECT kind, if(kind = 'entry', stage, concat(from_stage, '->', stage)), sum(users) "
        "FROM funnel.stage_counts_final GROUP BY kind, stage, from_stage")
    return {
        "entries": {k: n for kind, k, n in rows if kind == "entry"},
        "transitions": {k: n for kind, k, n in rows if kind == "transition"},
    }


#: Per-user consistency checks; each query counts violations (all must be 0).
CONSISTENCY_CHECKS = {
    # Never two different entry events for one (funnel, stage, user), in any row ever written.
    "stage entered by two events": (
        "SELECT count() FROM (SELECT uniqExact(event_id) AS n FROM funnel.stage_entries "
        "GROUP BY funnel, stage, user_id HAVING n > 1)"),
    "transition into a stage by two events": (
        "SELECT count() FROM (SELECT uniqExact(event_id) AS n FROM funnel.transitions "
        "GROUP BY funnel, to_stage, user_id HAVING n > 1)"),
    # A transition joins the two entries it connects, at their event times.
    "transition without matching entries": (
        "SELECT count() FROM funnel.transitions AS t FINAL "
        "LEFT JOIN (SELECT funnel, stage, user_id, ts FROM funnel.stage_entries FINAL) AS a "
        "ON a.funnel = t.funnel AND a.stage = t.from_stage AND a.user_id = t.user_id "
        "LEFT JOIN (SELECT funnel, stage, user_id, ts, event_id FROM funnel.stage_entries FINAL) AS b "
        "ON b.funnel = t.funnel AND b.stage = t.to_stage AND b.user_id = t.user_id "
        "WHERE a.ts != t.from_ts OR b.ts != t.ts OR b.event_id != t.event_id"),
    # Every stage entry comes from a stored event of that stage.
    "entry without its event": (
        "SELECT count() FROM funnel.stage_entries AS s FINAL "
        "LEFT ANTI JOIN (SELECT event_id FROM funnel.events FINAL) AS e ON e.event_id = s.event_id"),
}


def consistency_violations(worker: Worker) -> dict[str, int]:
    return {name: worker.scalar(sql) for name, sql in CONSISTENCY_CHECKS.items()}


async def _end_offsets(consumer: AIOKafkaConsumer, tps: list[Any]) -> dict[Any, int]:
    """The next offset of every partition (the embedded broker's ListOffsets undercounts)."""
    return await read_end_offsets(consumer, tps)


def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> dict[str, int]:
    """Messages not yet committed by consumer group ``group``, per topic."""
    wanted = list(topics)
    lag = dict.fromkeys(wanted, 0)
    for tp, (done, end) in group_positions(bootstrap, group, wanted).items():
        lag[tp.topic] += end - done
    return lag


def group_positions(bootstrap: str, group: str, topics: Iterable[str]) -> dict[Any, tuple[int, int]]:
    """(committed offset, end offset) of every partition of ``topics`` for group ``group``."""

    async def run() -> dict[Any, tuple[int, int]]:
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.structs import TopicPartition

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            wanted = list(topics)
            await consumer._client.force_metadata_update()
            tps = [TopicPartition(t, p) for t in wanted
                   for p in sorted(consumer.partitions_for_topic(t) or ())]
            ends = await _end_offsets(consumer, tps)
            committed = await admin.list_consumer_group_offsets(group, partitions=tps)
            positions = {}
            for tp in tps:
                done = committed.get(tp)
                positions[tp] = (max(done.offset if done else 0, 0), ends[tp])
            return positions
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(run())


def pipeline_lag(worker: Worker) -> dict[str, int]:
    """Lag of the worker's consumer group on every topic it consumes."""
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    return group_lag(bootstrap_of(worker.env), worker.env["FUNNEL_APP_ID"],
                     [prefix + t for t in CONSUMED_TOPICS])


def wait_drained(worker: Worker, timeout: float, settle: float = 2.0) -> None:
    """Wait until the worker's group committed everything and its sinks hold nothing.

    Offsets are committed only after the rows are in ClickHouse, so no lag means
    everything produced so far has been written. ``settle`` seconds of quiet make
    sure the journey agent has seen what the ingest agent produced last.
    """
    def drained() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}")
        return not any(pipeline_lag(worker).values()) and \
            worker.metric_sum("funnel_sink_pending_rows") == 0

    try:
        wait_until(drained, timeout, "the pipeline to drain", every=1.0)
        time.sleep(settle)
        wait_until(drained, timeout, "the pipeline to drain (after settling)", every=1.0)
    except AssertionError as exc:
        prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
        behind = {f"{tp.topic}[{tp.partition}]": f"committed {done} of {end}" for tp, (done, end) in
                  group_positions(bootstrap_of(worker.env), worker.env["FUNNEL_APP_ID"],
                                  [prefix + t for t in CONSUMED_TOPICS]).items() if done < end}
        raise AssertionError(f"{exc}\nbehind: {behind}\n{dump_tasks(worker)}") from None


def dump_tasks(worker: Worker) -> str:
    """Where a stuck worker waits: SIGUSR1 makes mode's worker print every asyncio
    task's stack (with locals) to its log; the dump is copied beside the log."""
    if worker.proc.poll() is not None:
        return "(the worker is gone: no task dump)"
    size = worker.log_path.stat().st_size
    worker.proc.send_signal(signal.SIGUSR1)
    time.sleep(5)
    dump = worker.log_path.with_suffix(".tasks.txt")
    with worker.log_path.open("rb") as log:
        log.seek(size)
        dump.write_bytes(log.read())
    return f"task dump ({dump.stat().st_size} bytes): {dump}"


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


#: Log lines that mean something crashed (Faust logs a crashed agent as "Crashed reason=...").
CRASH_MARKERS = ("Traceback", "Crashed", "crashed")


def assert_never_crashed(worker: Worker) -> None:
    """The worker process still runs (same pid) and its log shows no crash."""
    assert worker.proc.poll() is None, f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}"
    text = worker.log_path.read_text(errors="replace")
    crashes = [line for line in text.splitlines() if any(m in line for m in CRASH_MARKERS)]
    assert not crashes, "\n".join(crashes[:20])


#: Per table: the columns a replay may legitimately change (arrival time, versions
#: that depend on processing order). Everything else must stay the same.
PASS_DEPENDENT_COLUMNS = {
    "events": ("received_at",),
    "stage_entries": (),
    "transitions": ("version",),
    "stage_counts": ("version",),
}


def table_fingerprints(worker: Worker) -> dict[str, list[Any]]:
    """Row count and an order-independent hash of every table's current (FINAL) rows."""
    out = {}
    for table, varying in PASS_DEPENDENT_COLUMNS.items():
        columns = f" EXCEPT ({', '.join(varying)})" if varying else ""
        out[table] = worker.sql(
            f"SELECT count(), toString(groupBitXor(cityHash64(*))) "
            f"FROM (SELECT *{columns} FROM funnel.{table} FINAL)")[0]
    return out


@contextlib.contextmanager
def stopped_cleanly(worker: Worker) -> Iterator[Worker]:
    """Use ``worker``, then stop it: it must exit 0 (unless the body already failed)."""
    try:
        yield worker
    except BaseException:
        worker.stop()
        raise
    code = worker.stop()
    assert code == 0, f"worker exited with {code}:\n{worker.log_tail()}"


def send_visits(worker: Worker, users: Iterable[str], ts_ms: int | None = None, **fields: Any) -> int:
    """A visit for each of ``users`` (a minute ago unless ``ts_ms``); returns how many were sent."""
    prefix = worker.env["FUNNEL_TOPIC_PREFIX"]
    ts = ts_ms if ts_ms is not None else int(time.time() * 1000) - 60_000
    return produce(bootstrap_of(worker.env), [
        (f"{prefix}visit", u.encode(), event("visit", u, ts, **fields)[2]) for u in users])


def stored_events(worker: Worker) -> int:
    """Distinct events in ClickHouse."""
    return int(worker.scalar("SELECT count() FROM funnel.events FINAL"))
