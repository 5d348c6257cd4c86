"""How every Kafka client of the project connects: TLS and SASL from the settings, built in one place.

:func:`faust_credentials` is what the worker's Faust app gets
(``broker_credentials``); :func:`client_options` the keyword arguments of
the plain aiokafka clients (topic admin, generator, ``funnel emit``). Both
come from the same ``FUNNEL_KAFKA_*`` settings, checked when they are read
(:class:`streams.settings.Settings`).
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from streams.settings import Settings

__all__ = ["client_options", "faust_credentials", "ssl_context"]


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
