"""Start and drive the real parts: embedded broker, worker processes, Kafka I/O."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from streams.netutil import free_port


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


def start_worker(env: dict[str, str], log_path: Path, timeout: float = 60.0) -> Worker:
    """Start `funnel worker` and wait until it consumes (its /health answers and it joined)."""
    port = free_port()
    full_env = {**os.environ, **env, "FUNNEL_WEB_PORT": str(port), "FUNNEL_WEB_HOST": "127.0.0.1"}
    out = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"], env=full_env, stdout=out,
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


def produce(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Send (topic, key, value) messages and wait until all are acknowledged."""

    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
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


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list[Any]:
    """Read ``topic`` from the beginning until ``expected`` records arrived (or timeout)."""

    async def run() -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            enable_auto_commit=False, group_id=None,
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
