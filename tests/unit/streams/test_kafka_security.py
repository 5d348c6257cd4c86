"""streams.kafka_security: one set of settings, the same connection for Faust and every aiokafka client."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import faust
import pytest
import trustme

from streams.kafka_security import client_options, faust_credentials, ssl_context
from streams.settings import Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("FUNNEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_plaintext_by_default(env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert client_options(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None and ssl_context(s) is None


def test_tls_checks_the_brokers_against_the_ca_file(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("funnel-worker")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    s = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "ca.pem",
                 kafka_ssl_certfile=tmp_path / "client.pem", kafka_ssl_keyfile=tmp_path / "client.key")
    options = client_options(s)
    context = options["ssl_context"]
    assert options["security_protocol"] == "SSL" and isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # ours, not the system's
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SSLCredentials) and credentials.context is not None


def test_sasl_ssl_gives_the_same_user_to_faust_and_aiokafka(env: pytest.MonkeyPatch) -> None:
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="funnel", kafka_sasl_password="pw")
    options = client_options(s)
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "funnel", "sasl_plain_password": "pw"}
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(s)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password, credentials.mechanism.value,
            credentials.protocol.value) == ("funnel", "pw", "SCRAM-SHA-512", "SASL_SSL")
    plain = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                     kafka_sasl_username="funnel", kafka_sasl_password="pw")
    assert "ssl_context" not in client_options(plain)
    assert faust_credentials(plain).protocol.value == "SASL_PLAINTEXT"
