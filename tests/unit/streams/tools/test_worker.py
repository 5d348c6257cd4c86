"""streams.tools.worker: the process settings a worker runs with."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from streams.tools.worker import GC_THRESHOLDS, tune_gc


def test_the_worker_collects_garbage_less_often_than_python_s_default() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700 and gc.isenabled()  # less often, not never
    finally:
        gc.set_threshold(*before)


def test_the_first_interrupt_stops_cleanly_the_second_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import faust

    from streams.tools import worker as worker_module

    calls: list[object] = []
    monkeypatch.setattr(faust.Worker, "_on_sigint", lambda self: calls.append("clean shutdown"))
    monkeypatch.setattr(worker_module.os, "_exit", calls.append)
    worker = object.__new__(worker_module._Worker)  # the handler needs no started worker
    worker._on_sigint()
    assert calls == ["clean shutdown"]
    worker._on_sigint()
    assert calls == ["clean shutdown", 130]


def test_readers_use_the_read_only_user_when_there_is_one(tmp_path: Path) -> None:
    from streams.settings import Settings
    from streams.tools.worker import clickhouse_target

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    writer = "https://writer:w@ch.internal:8443/funnel"
    s = Settings(clickhouse_url=writer, clickhouse_ca_file=ca)
    assert clickhouse_target(s).username == clickhouse_target(s, reader=True).username == "writer"
    s = Settings(clickhouse_url=writer, clickhouse_reader_url="https://reader:r@ch.internal:8443/funnel",
                 clickhouse_ca_file=ca)
    reader = clickhouse_target(s, reader=True)
    assert (clickhouse_target(s).username, reader.username, reader.ca_file) == ("writer", "reader", str(ca))
    assert "r@" not in str(s) and "https://***@ch.internal:8443/funnel" in str(s)
