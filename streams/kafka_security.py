"""How every Kafka client of the project connects: TLS and SASL from the settings, built in one place.

:func:`faust_credentials` is what the worker's Faust app gets
(``broker_credentials``); :func:`client_options` the keyword arguments of
the plain aiokafka clients (topic admin, generator, ``funnel emit``). Both
come from the same ``FUNNEL_KAFKA_*`` settings, checked when they are read
(:class:`streams.settings.Settings`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from streams.settings import Settings, split_brokers

__all__ = ["KafkaSecurityError", "check_connection", "client_options", "faust_credentials", "ssl_context"]


class KafkaSecurityError(ValueError):
    """The brokers and the TLS settings do not agree: a command cannot work until they are changed."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL: the CA file (else the system's), the client certificate.

    Host names are checked against the brokers' certificates.
    """
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    return create_ssl_context(cafile=settings.kafka_ssl_cafile, certfile=settings.kafka_ssl_certfile,
                              keyfile=settings.kafka_ssl_keyfile)


def _password(settings: Settings) -> str | None:
    return settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for aiokafka's producer, consumer and admin client."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL_"):
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                       sasl_plain_username=settings.kafka_sasl_username,
                       sasl_plain_password=_password(settings))
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the same connection (None: plaintext)."""
    import faust  # only the worker needs it: the other tools start faster without

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(username=settings.kafka_sasl_username, password=_password(settings),
                                 ssl_context=context, mechanism=settings.kafka_sasl_mechanism)


async def check_connection(settings: Settings, timeout: float = 10.0) -> None:
    """Connect once to the first bootstrap broker that answers, as the clients will, before any starts.

    The TLS handshake and the SASL authentication are those of every client
    (:func:`client_options`). A certificate the settings cannot verify (a
    wrong CA file, a host name the certificate does not name), a broker that
    speaks no TLS, or credentials the broker refuses raise
    :class:`KafkaSecurityError` at once, with the reason and the settings to
    look at: aiokafka alone only logs them and retries its bootstrap until it
    gives up. Brokers that do not answer are left to the clients' own retries.
    Plaintext without SASL has nothing to check.
    """
    if settings.kafka_security_protocol == "PLAINTEXT" or not settings.kafka_url:
        return
    options = client_options(settings)
    for broker in split_brokers(settings.kafka_url):
        host, _, port = broker.rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host.strip("[]"), int(port), request_timeout_ms=int(timeout * 1000), **options),
                timeout)
        except ssl.SSLCertVerificationError as exc:
            trusted = settings.kafka_ssl_cafile or "the system's CA certificates"
            raise KafkaSecurityError(
                f"TLS to {broker}: certificate verify failed: {exc.verify_message}. The broker's "
                f"certificate is not signed by a CA in FUNNEL_KAFKA_SSL_CAFILE ({trusted}), or does not "
                f"name {host}") from None
        except ssl.SSLError as exc:
            raise KafkaSecurityError(
                f"TLS to {broker} failed: {exc}. Does the broker speak TLS on this port? "
                "(FUNNEL_KAFKA_SECURITY_PROTOCOL, FUNNEL_KAFKA_SSL_*)") from None
        except (SaslAuthenticationFailed, UnsupportedSaslMechanismError, IllegalSaslStateError) as exc:
            raise KafkaSecurityError(
                f"SASL to {broker} as {settings.kafka_sasl_username!r} with {settings.kafka_sasl_mechanism} "
                f"was refused: {exc}. Check FUNNEL_KAFKA_SASL_USERNAME, FUNNEL_KAFKA_SASL_PASSWORD and "
                "FUNNEL_KAFKA_SASL_MECHANISM") from None
        except (OSError, TimeoutError, KafkaError):
            continue  # not answering: the clients' own bootstrap retries and reports it
        conn.close()
        return
