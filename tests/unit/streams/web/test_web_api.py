"""streams.web.routes: the JSON API handlers and health, on a stand-in worker with chDB behind it."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from schemas import DEFAULT_FUNNEL
from sinks import FunnelMetrics
from streams.settings import Settings
from streams.web.routes import API_PATHS, STATIC_FILES, FunnelWeb
from tests.named_stages import B2B, B2B_STAGES


class _View:
    """What Faust hands a page function: response builders."""

    def json(self, value: Any, *, status: int = 200, headers: Any = None) -> tuple[int, Any]:
        return status, value

    def bytes(self, value: bytes, *, content_type: str, headers: Any = None) -> tuple[int, Any]:
        return 200, (content_type, value)


async def _run_blocking(fn: Any, *args: Any) -> Any:
    return fn(*args)


class _Reader:
    def query(self, sql: str, parameters: Any = None) -> Any:
        raise RuntimeError("Code: 210. Connection refused")


def _worker(reader: Any, database: str = "funnel", **extra: Any) -> Any:
    """A stand-in for streams.web.endpoints.Worker."""
    parts: dict[str, Any] = {
        "reader": reader, "database": database, "funnels": {"default": DEFAULT_FUNNEL},
        "settings": Settings(channels="seo,ads", app_id="test-app"),
        "run_blocking": _run_blocking, "pending_rows": 0, "consumer_lag": lambda: None,
        "metrics": FunnelMetrics(None, ["seo", "ads"]), "last_event_ms": None, "ready": True,
    }
    parts.update(extra)
    return SimpleNamespace(**parts)


def _get(handler: Any, **query: str) -> tuple[int, Any]:
    request = SimpleNamespace(query=query, path="/api/test")
    return asyncio.run(handler(_View(), request))  # type: ignore[no-any-return]


@pytest.fixture
def site(chdb_client: Client, ch_database: str) -> FunnelWeb:
    now = datetime.fromtimestamp(time.time() - 60, tz=UTC)
    rows = [["default", stage, i, f"u{n}", now, "ads" if n % 2 else "seo", uuid.uuid4()]
            for i, (stage, users) in enumerate([("visit", 4), ("signup", 2)]) for n in range(users)]
    chdb_client.insert(f"{ch_database}.stage_entries", rows, column_names=[
        "funnel", "stage", "stage_index", "user_id", "ts", "channel", "event_id"])
    return FunnelWeb(_worker(chdb_client, ch_database))


def test_funnel_endpoint_reads_clickhouse(site: FunnelWeb) -> None:
    status, body = _get(site.funnel, range="15m")
    assert status == 200
    assert [(s["stage"], s["users"]) for s in body["stages"]][:3] == [
        ("visit", 4), ("signup", 2), ("webinar", 0)]
    status, body = _get(site.funnel, range="1h", channel="ads")
    assert [s["users"] for s in body["stages"]][:2] == [2, 1]
    assert (body["funnel"], body["range"], body["channel"]) == ("default", "1h", "ads")


def test_trend_and_stalled_endpoints(site: FunnelWeb) -> None:
    status, body = _get(site.trend, range="1h")
    assert status == 200 and body["bucket_seconds"] == 300
    assert sum(b["entries"]["visit"] for b in body["buckets"]) == 4
    status, body = _get(site.stalled, after="1h")
    assert status == 200 and body["total"] == 0 and body["after_seconds"] == 3600


@pytest.mark.parametrize(("handler", "query", "message"), [
    ("funnel", {"range": "1y"}, "range '1y' is not one of: 15m, 1h, 24h, 7d, all"),
    ("funnel", {"channel": "tiktok"}, "channel 'tiktok' is not one of: all, seo, ads, other"),
    ("trend", {"funnel": "b2b"}, "funnel 'b2b' is not one of: default"),
    ("stalled", {"after": "2h"}, "stalled threshold '2h' is not one of: 1h, 1d, 7d"),
])
def test_bad_parameters_are_400_naming_the_allowed(
    site: FunnelWeb, handler: str, query: dict[str, str], message: str
) -> None:
    assert _get(getattr(site, handler), **query) == (400, {"error": message})


def test_clickhouse_failure_is_503_and_no_reader_is_404() -> None:
    status, body = _get(FunnelWeb(_worker(_Reader())).funnel)
    assert status == 503 and body["error"].startswith("ClickHouse: Code: 210")
    assert _get(FunnelWeb(_worker(None)).trend) == (404, {"error": "this worker reads no ClickHouse"})


def test_config_lists_what_may_be_asked() -> None:
    status, body = _get(FunnelWeb(_worker(None)).config)
    assert status == 200
    assert body["funnels"] == [{"name": "default", "stages": list(DEFAULT_FUNNEL.names)}]
    assert [r["key"] for r in body["ranges"]] == ["15m", "1h", "24h", "7d", "all"]
    assert body["channels"] == ["all", "seo", "ads", "other"]
    assert [s["key"] for s in body["stall_after"]] == ["1h", "1d", "7d"]
    assert body["refresh_seconds"] > 0 and body["clickhouse"] is False


def test_health_counts_and_rate() -> None:
    last = int(time.time() * 1000) - 2000
    site = FunnelWeb(_worker(None, last_event_ms=last))
    m = site.worker.metrics
    asyncio.run(site.sample())
    m.events.labels("default", "visit").inc(30)
    m.events.labels("default", "signup").inc(10)
    m.invalid_events.labels("not_json").inc(2)
    m.invalid_events.labels("empty").inc()
    site._samples[0] = (site._samples[0][0] - 4.0, 0.0)  # the first sample, four seconds earlier
    asyncio.run(site.sample())
    status, h = _get(site.health)
    assert status == 200
    assert h["events_total"] == 40 and h["dead_letter_total"] == 3
    assert h["events_per_second"] == pytest.approx(10.0, rel=0.05)
    assert h["last_event_time"].endswith("Z") and 1.5 < h["last_event_age_seconds"] < 30
    assert h["consumer_lag"] is None  # no consumer: unknown, not zero
    assert (h["ready"], h["sink_backlog_rows"], h["app_id"]) == (True, 0, "test-app")


def test_static_files_and_routes() -> None:
    site = FunnelWeb(_worker(None))
    paths = [path for path, _ in site.routes()]
    assert paths == [*STATIC_FILES, *API_PATHS]
    handlers = dict(site.routes())
    status, (content_type, body) = _get(handlers["/"])
    assert status == 200 and content_type == "text/html" and body.startswith(b"<!doctype html>")
    assert _get(handlers["/static/app.js"])[1][0] == "text/javascript"


# -- a funnel whose stage names are not event types (tests/named_stages.py) -------------------
@pytest.fixture
def b2b_site(chdb_client: Client, ch_database: str) -> FunnelWeb:
    """b2b: 6 visit, 3 pricing, 2 lead, 1 mql, 1 won, a minute apart; x1 entered every stage but was
    excluded (a refund), so they count nowhere."""
    start = time.time() - 600
    reached = {"u0": 5, "u1": 3, "u2": 2, "u3": 1, "u4": 1, "u5": 1, "x1": 5}
    rows = [["b2b", stage, i, person, datetime.fromtimestamp(start + 60 * i, tz=UTC), "ads", uuid.uuid4(),
             int(person.startswith("x"))]
            for person, n in reached.items() for i, stage in enumerate(B2B_STAGES[:n])]
    chdb_client.insert(f"{ch_database}.stage_entries", rows, column_names=[
        "funnel", "stage", "stage_index", "user_id", "ts", "channel", "event_id", "excluded"])
    return FunnelWeb(_worker(chdb_client, ch_database, funnels={"default": DEFAULT_FUNNEL, "b2b": B2B}))


def test_named_stages_through_the_api(b2b_site: FunnelWeb) -> None:
    status, config = _get(b2b_site.config)
    assert status == 200
    assert config["funnels"][1] == {"name": "b2b", "stages": ["visit", "pricing", "lead", "mql", "won"]}
    status, body = _get(b2b_site.funnel, funnel="b2b", range="15m")
    assert status == 200 and body["funnel"] == "b2b"
    assert [(s["stage"], s["users"]) for s in body["stages"]] == [
        ("visit", 6), ("pricing", 3), ("lead", 2), ("mql", 1), ("won", 1)]
    assert body["overall_conversion"] == 1 / 6 and body["cohort_size"] == 6
    status, trend = _get(b2b_site.trend, funnel="b2b", range="1h")
    assert status == 200 and trend["stages"] == list(B2B_STAGES)
    assert {stage: sum(b["entries"][stage] for b in trend["buckets"]) for stage in B2B_STAGES} == {
        "visit": 6, "pricing": 3, "lead": 2, "mql": 1, "won": 1}
    status, stalled = _get(b2b_site.stalled, funnel="b2b", after="1h")
    assert status == 200 and [s["stage"] for s in stalled["stages"]] == ["visit", "pricing", "lead", "mql"]
    # The default funnel, beside it, has none of b2b's rows.
    assert {s["users"] for s in _get(b2b_site.funnel, range="15m")[1]["stages"]} == {0}
