"""Kafka over TLS: the worked example's exact counts through a TLS-terminating proxy; a wrong CA fails fast.

The embedded broker speaks plaintext only, so a proxy in this test terminates
TLS in front of it, and the broker advertises the proxy's address: every
client (the worker's Faust app, its end-offset reads, the topic admin, the
test's producer) reaches the broker through TLS. The test makes its own CA and
a certificate for ``localhost`` (trustme), so the CA file and the host name
checks are exercised.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from streams.kafka_security import client_options
from streams.settings import Settings
from streams.tools.broker import EmbeddedBroker
from streams.tools.netutil import free_port

from .harness import start_worker
from .test_worked_example import run_worked_example

pytestmark = pytest.mark.integration


class TlsProxy:
    """Terminates TLS on ``port`` and pipes each connection to the broker's plaintext port."""

    def __init__(self, port: int, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.port, self.upstream, self.context = port, upstream, context
        self.loop = asyncio.new_event_loop()
        self.connections = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tls-proxy", daemon=True)

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        assert self._ready.wait(10), "the TLS proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context))
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A broker behind a TLS proxy on localhost; the CA file that trusts it."""
    where = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(where / "wrong-ca.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    port = free_port()
    with EmbeddedBroker(log_file=where / "broker.log", advertised=f"localhost:{port}") as broker, \
            TlsProxy(port, (broker.host, broker.port), server) as proxy:
        yield {"url": f"kafka://localhost:{port}", "ca": str(where / "ca.pem"),
               "wrong_ca": str(where / "wrong-ca.pem"), "proxy": proxy}  # type: ignore[dict-item]


def _env(tls: dict[str, str], tmp_path: Path, ca: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        "FUNNEL_KAFKA_URL": tls["url"],
        "FUNNEL_KAFKA_SECURITY_PROTOCOL": "SSL",
        "FUNNEL_KAFKA_SSL_CAFILE": ca,
        "FUNNEL_CLICKHOUSE_URL": f"chdb://{tmp_path / 'chdb'}",
        "FUNNEL_DATA_DIR": str(tmp_path / "data"),
        "FUNNEL_TOPIC_PREFIX": f"t{run}.",
        "FUNNEL_APP_ID": f"funnel-tls-{run}",
        "FUNNEL_TOPIC_PARTITIONS": "4",
        "FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS": "6",
        "FUNNEL_BATCH_MAX_SECONDS": "0.3",
        "FUNNEL_STATUS_INTERVAL_SECONDS": "2",
        "FUNNEL_LOG_LEVEL": "info",
    }


def test_the_worked_example_through_tls(tls: dict[str, str], tmp_path: Path) -> None:
    env = _env(tls, tmp_path, tls["ca"])
    before = tls["proxy"].connections  # type: ignore[attr-defined]
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        options = client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=Path(tls["ca"])))
        run_worked_example(worker, env, **options)
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert tls["proxy"].connections > before  # type: ignore[attr-defined]


def test_a_wrong_ca_fails_fast_with_a_clear_message(tls: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, **_env(tls, tmp_path, tls["wrong_ca"])}
    for command in (["emit", "visit", '{"user_id": "u1"}'], ["worker"]):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "streams.tools.cli", *command], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
        output = done.stdout + done.stderr
        assert done.returncode != 0, output[-2000:]
        assert took < 30, (command, took)
        assert "certificate verify failed" in output and "FUNNEL_KAFKA_SSL_CAFILE" in output, output[-2000:]
