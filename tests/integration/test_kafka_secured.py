"""Kafka over TLS, and SASL/SCRAM-SHA-512 over TLS: the worked example's exact counts; a wrong CA or password.

The embedded broker speaks plaintext without authentication only, so a proxy
(tests/integration/kafka_proxies.py) terminates TLS, and for SASL also
authenticates, in front of it; the broker advertises the proxy's address, so
every client (the worker's Faust app, its end-offset reads, the topic admin,
the test's producer and consumer) goes through it. The test makes its own CA
and a certificate for ``localhost`` (trustme): the CA file and the host name
checks are exercised.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import SecretStr

from streams.kafka_security import client_options
from streams.settings import Settings
from streams.tools.broker import EmbeddedBroker
from streams.tools.netutil import free_port

from .harness import start_worker
from .kafka_proxies import SaslProxy, TlsProxy
from .test_worked_example import run_worked_example

pytestmark = pytest.mark.integration


PASSWORD = "s3cret-scram"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA file, another CA's file, and a server context with a certificate for localhost."""
    where = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(where / "wrong-ca.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    return {"ca": str(where / "ca.pem"), "wrong_ca": str(where / "wrong-ca.pem"), "server": server,
            "dir": where}


@pytest.fixture(scope="module")
def tls(certs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A broker behind a TLS proxy on localhost."""
    port = free_port()
    with EmbeddedBroker(log_file=certs["dir"] / "tls-broker.log", advertised=f"localhost:{port}") as broker, \
            TlsProxy(port, (broker.host, broker.port), certs["server"]) as proxy:
        yield {**certs, "url": f"kafka://localhost:{port}", "proxy": proxy,
               "security": {"FUNNEL_KAFKA_SECURITY_PROTOCOL": "SSL"}}


@pytest.fixture(scope="module")
def sasl(certs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A broker behind a SASL_SSL proxy (SCRAM-SHA-512, user "funnel") on localhost."""
    port = free_port()
    password_file = certs["dir"] / "kafka-password"
    password_file.write_text(PASSWORD + "\n")
    broker_log = certs["dir"] / "sasl-broker.log"
    with EmbeddedBroker(log_file=broker_log, advertised=f"localhost:{port}") as broker, \
            SaslProxy(port, (broker.host, broker.port), {"funnel": PASSWORD}, certs["server"]) as proxy:
        yield {**certs, "url": f"kafka://localhost:{port}", "proxy": proxy, "security": {
            "FUNNEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FUNNEL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "FUNNEL_KAFKA_SASL_USERNAME": "funnel", "FUNNEL_KAFKA_SASL_PASSWORD_FILE": str(password_file)}}


def _env(kafka: dict[str, Any], tmp_path: Path, ca: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        "FUNNEL_KAFKA_URL": kafka["url"],
        **kafka["security"],
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


def _worked_example(kafka: dict[str, Any], tmp_path: Path) -> None:
    env = _env(kafka, tmp_path, kafka["ca"])
    before = kafka["proxy"].connections
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        security = kafka["security"]
        sasl = "FUNNEL_KAFKA_SASL_USERNAME" in security
        settings = Settings(  # the test's own clients connect as the worker does
            kafka_security_protocol=security["FUNNEL_KAFKA_SECURITY_PROTOCOL"],
            kafka_ssl_cafile=Path(kafka["ca"]),
            kafka_sasl_mechanism=security.get("FUNNEL_KAFKA_SASL_MECHANISM"),
            kafka_sasl_username=security.get("FUNNEL_KAFKA_SASL_USERNAME"),
            kafka_sasl_password=SecretStr(PASSWORD) if sasl else None)
        run_worked_example(worker, env, **client_options(settings))
    finally:
        assert worker.stop() == 0, worker.log_tail()
    assert kafka["proxy"].connections > before


def test_the_worked_example_through_tls(tls: dict[str, Any], tmp_path: Path) -> None:
    _worked_example(tls, tmp_path)


def test_the_worked_example_through_sasl_scram_over_tls(sasl: dict[str, Any], tmp_path: Path) -> None:
    _worked_example(sasl, tmp_path)
    assert sasl["proxy"].refused == 0


def _fails_fast(env: dict[str, str], *needles: str) -> None:
    """``funnel emit`` and ``funnel worker`` stop within 30 s, saying why."""
    for command in (["emit", "visit", '{"user_id": "u1"}'], ["worker"]):
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "streams.tools.cli", *command], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        took = time.monotonic() - started
        output = done.stdout + done.stderr
        assert done.returncode != 0, output[-2000:]
        assert took < 30, (command, took)
        assert all(needle in output for needle in needles), output[-2000:]


def test_a_wrong_ca_fails_fast_with_a_clear_message(tls: dict[str, Any], tmp_path: Path) -> None:
    _fails_fast({**os.environ, **_env(tls, tmp_path, tls["wrong_ca"])},
                "certificate verify failed", "FUNNEL_KAFKA_SSL_CAFILE")


def test_a_wrong_password_fails_fast_with_a_clear_message(sasl: dict[str, Any], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    env = {**os.environ, **_env(sasl, tmp_path, sasl["ca"]), "FUNNEL_KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    refused = sasl["proxy"].refused
    _fails_fast(env, "SASL to localhost:", "'funnel' with SCRAM-SHA-512 was refused",
                "FUNNEL_KAFKA_SASL_PASSWORD")
    assert sasl["proxy"].refused >= refused + 2


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_the_other_mechanisms_log_in(sasl: dict[str, Any], tmp_path: Path, mechanism: str) -> None:
    """`funnel emit` through the same SASL_SSL listener with PLAIN and SCRAM-SHA-256."""
    env = {**os.environ, **_env(sasl, tmp_path, sasl["ca"]), "FUNNEL_KAFKA_SASL_MECHANISM": mechanism}
    done = subprocess.run([sys.executable, "-m", "streams.tools.cli", "emit", "visit", '{"user_id": "u1"}'],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "emit: sent visit" in done.stdout
    assert f"Authenticated as funnel via {mechanism}" in done.stderr
