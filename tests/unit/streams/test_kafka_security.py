"""streams.kafka_security: one set of settings, the same connection for Faust and every aiokafka client."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import faust
import pytest
import trustme

from streams.kafka_security import (
    KafkaSecurityError,
    check_connection,
    client_options,
    faust_credentials,
    ssl_context,
)
from streams.settings import Settings
from streams.tools.netutil import free_port


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


def test_check_connection_names_the_reason_and_the_setting(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """One handshake before any client starts: a wrong CA, a wrong host name, no TLS at all."""
    ca, other = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    other.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)

    async def check(url: str, cafile: str) -> str:
        settings = Settings(kafka_url=url, kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / cafile)
        try:
            await check_connection(settings, timeout=5)
        except KafkaSecurityError as exc:
            return str(exc)
        return "ok"

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def plaintext(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(5)  # a TLS hello read as a Kafka request: an answer that is no TLS
        writer.write(b"\x00\x00\x00\x08" + bytes(8))
        await writer.drain()
        writer.close()

    async def run() -> list[str]:
        tls = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
        plain = await asyncio.start_server(plaintext, "127.0.0.1", 0)
        port, plain_port = tls.sockets[0].getsockname()[1], plain.sockets[0].getsockname()[1]
        unused = free_port()
        try:
            return [await check(f"kafka://localhost:{port}", "ca.pem"),
                    await check(f"kafka://localhost:{port}", "other.pem"),
                    await check(f"kafka://127.0.0.1:{port}", "ca.pem"),
                    await check(f"kafka://localhost:{plain_port}", "ca.pem"),
                    await check(f"kafka://localhost:{unused},localhost:{port}", "ca.pem")]
        finally:
            tls.close()
            plain.close()

    good, wrong_ca, wrong_host, no_tls, first_down = asyncio.run(run())
    assert good == "ok" and first_down == "ok"  # a broker that does not answer is the client's business
    assert "certificate verify failed: unable to get local issuer certificate" in wrong_ca
    assert f"FUNNEL_KAFKA_SSL_CAFILE ({tmp_path / 'other.pem'})" in wrong_ca
    assert "IP address mismatch" in wrong_host and "does not name 127.0.0.1" in wrong_host
    assert "Does the broker speak TLS on this port?" in no_tls
