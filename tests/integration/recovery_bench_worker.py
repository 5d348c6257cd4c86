"""Launcher of recovery_bench.py: `funnel worker` that writes its journeys table to a file once recovered.

FUNNEL_BENCH_DUMP=PATH: after each recovery, the table as JSON lines
(key hex, value) sorted by key. FUNNEL_BENCH_OPTIONS: comma-separated
knobs to try (recovery_buffer_size=N, max_poll_records=N, faust_recovery=1 to
undo streams.faust_adapt.recovery if present).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import orjson

from streams.pipeline import Pipeline
from streams.settings import Settings
from streams.tools.worker import run_worker


def customize(pipeline: Pipeline) -> None:
    table: Any = pipeline.journeys
    options = dict(o.split("=", 1) for o in os.environ.get("FUNNEL_BENCH_OPTIONS", "").split(",") if o)
    if "recovery_buffer_size" in options:
        table.recovery_buffer_size = table.standby_buffer_size = int(options["recovery_buffer_size"])
    if "max_poll_records" in options:
        pipeline.app.conf.broker_max_poll_records = int(options["max_poll_records"])
    if options.get("faust_recovery") == "1":
        from faust.tables.recovery import Recovery
        pipeline.app.tables._recovery = Recovery(pipeline.app, pipeline.app.tables,
                                                 beacon=pipeline.app.tables.beacon,
                                                 loop=pipeline.app.tables.loop)
    dump = os.environ.get("FUNNEL_BENCH_DUMP")
    if dump:
        @table.on_recover
        async def write() -> None:
            rows = sorted((k.hex(), v) for k, v in table.data.data.items())
            with open(dump, "wb") as out:
                for row in rows:
                    out.write(orjson.dumps(row) + b"\n")


if __name__ == "__main__":
    sys.exit(run_worker(Settings(), customize=customize))
