"""streams.tools.worker: the process settings a worker runs with."""

from __future__ import annotations

import gc

from streams.tools.worker import GC_THRESHOLDS, tune_gc


def test_the_worker_collects_garbage_less_often_than_python_s_default() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > 700 and gc.isenabled()  # less often, not never
    finally:
        gc.set_threshold(*before)
