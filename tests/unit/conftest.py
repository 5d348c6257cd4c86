"""Fixtures shared by the unit tests: event factory, metrics bundle, embedded ClickHouse.

Unit tests need no server. The sinks tests use chDB in-process, which allows
only one engine path per process, so the whole session shares one chDB
directory and every test gets its own database in it.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from prometheus_client import CollectorRegistry

from schemas import NormalizedEvent
from sinks import FunnelMetrics, connect, migrate, parse_clickhouse_url

#: 2026-01-31T12:00:00Z, the time every made-up event is relative to.
BASE_MS = 1_769_860_800_000

MakeEvent = Callable[..., NormalizedEvent]


@pytest.fixture
def make_event() -> MakeEvent:
    """Factory of normalized events (what the ingest agent passes on).

    ``at`` is seconds after :data:`BASE_MS`; event ids are deterministic and
    unique within a test unless one is given (to make a duplicate). The
    person is the user id unless ``person_id`` is given (an anonymous id's
    event is ``make("visit", None, anonymous_id="a1", person_id=None)``).
    """
    counter = itertools.count(1)

    def make(
        event_type: str = "visit",
        user_id: str | None = "u1",
        at: float = 0,
        *,
        funnel: str = "default",
        channel: str | None = None,
        event_id: str | None = None,
        **fields: Any,
    ) -> NormalizedEvent:
        ts = BASE_MS + round(at * 1000)
        event: dict[str, Any] = {
            "event_id": event_id or str(uuid.UUID(int=next(counter))),
            "event_type": event_type,
            "funnel": funnel,
            "user_id": user_id,
            "anonymous_id": None,
            "person_id": user_id,
            "ts": ts,
            "received_at": ts,
            "channel": channel,
            "campaign": None,
            "product": None,
            "region": None,
            "manager": None,
            "amount": None,
            "currency": None,
            "order_id": None,
            "email_hash": None,
            "properties": {},
            "source": "",
        }
        unknown = fields.keys() - event.keys()
        assert not unknown, f"not a normalized event field: {sorted(unknown)}"
        event.update(fields)
        return NormalizedEvent(**event)  # type: ignore[typeddict-item]

    return make


@pytest.fixture
def metrics() -> FunnelMetrics:
    """A metrics bundle on a fresh registry (read it with ``metrics.registry``)."""
    return FunnelMetrics(CollectorRegistry())


@pytest.fixture(scope="session")
def chdb_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The session's one embedded ClickHouse engine."""
    target = parse_clickhouse_url(f"chdb://{tmp_path_factory.mktemp('chdb')}")
    client = connect(target)
    yield client
    client.close()


@pytest.fixture
def ch_database(chdb_client: Client) -> Iterator[str]:
    """A freshly migrated database of its own, dropped afterwards."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    migrate(chdb_client, database=database)
    yield database
    chdb_client.command(f"DROP DATABASE IF EXISTS {database}")
