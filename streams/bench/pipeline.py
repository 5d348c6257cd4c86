"""Stage ``pipeline``: the real worker through the pre-produced backlog, first message to last row."""

from __future__ import annotations

import sys

from streams.bench.context import Context
from streams.bench.measure import rate
from streams.bench.workers import WorkerProcess, profiled, wait_drained


def stage_pipeline(ctx: Context, worker: WorkerProcess) -> None:
    expected = ctx.truth["events"] + ctx.truth["duplicates"]  # one events row per valid message
    worker.wait_metrics()
    with profiled(ctx, worker):
        drained = wait_drained(worker, expected, ctx.progress, "pipeline", timeout=120 + expected / 500,
                               others={"broker": ctx.broker_pid}, event_rows=ctx.event_rows(ctx.messages))
    seconds = drained.last_row_at - drained.first_at
    ctx.progress.done(f"pipeline: {expected} events, first consumed to last row {seconds:.2f}s; "
                      "checking the counts")
    # The default funnel's, which the traffic's truth is about (a funnels file may add others).
    exact = worker.sql("SELECT count() FROM funnel.events FINAL WHERE funnel = 'default'")[0][0]
    entries = worker.sql("SELECT count() FROM funnel.stage_entries FINAL WHERE funnel = 'default'")[0][0]
    if exact != ctx.truth["events"] or entries != sum(ctx.truth["entries"].values()):
        print(f"bench: WARNING: pipeline wrote {exact} events / {entries} entries, the traffic "
              f"had {ctx.truth['events']} / {sum(ctx.truth['entries'].values())}", file=sys.stderr)
    ctx.report.add("pipeline_events_per_s", rate(expected - drained.first_count, seconds), "events/s")
    ctx.report.details["pipeline"] = {
        "events": expected, "seconds": seconds, "first_sample_events": drained.first_count,
        "rows_written": drained.rows, "distinct_events_in_clickhouse": exact,
        "stage_entries_in_clickhouse": entries, "rss_bytes": worker.rss(),
        "startup_seconds": drained.first_at - worker.started,
        "cpu_seconds": drained.cpu, "worker_env": ctx.worker_env, "worker_module": ctx.worker_module,
    }
