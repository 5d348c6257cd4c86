"""streams.tools.worker: the process settings a worker runs with."""

from __future__ import annotations

import gc

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
