"""Stage ``memory``: worker RSS after N distinct users were tracked, per table store."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence

from streams.bench.context import Context
from streams.bench.kafka import create_topics, produce
from streams.bench.traffic import visit_traffic
from streams.bench.workers import WorkerProcess, profiled, wait_drained


def stage_memory(ctx: Context, stores: Sequence[str]) -> None:
    """One worker per table store, side by side, each tracking the same distinct users.

    The workers run at the same time (RSS is per process; this halves the
    wall time), each on its own topics, as their internal topics must differ.
    """
    users = ctx.sizes.memory_users
    prefixes = {store: f"bench-{uuid.uuid4().hex[:8]}." for store in stores}
    ctx.progress(f"memory: planning {users} users", force=True)
    messages = visit_traffic(users, ctx.seed + 2)

    async def run() -> None:
        for prefix in prefixes.values():
            await create_topics(ctx.bootstrap, prefix)
            await produce(ctx.bootstrap, prefix, messages, int(time.time() * 1000), ctx.progress)

    asyncio.run(run())
    rows = ctx.event_rows(messages)
    messages.clear()  # the workers need the memory more
    workers = {store: WorkerProcess(ctx.bootstrap, ctx.run_dir, f"memory-{store}", prefix, store,
                                    ctx.worker_env, ctx.worker_module)
               for store, prefix in prefixes.items()}
    try:
        with contextlib.ExitStack() as profiling:
            for worker in workers.values():
                worker.wait_metrics()
                profiling.enter_context(profiled(ctx, worker))
            for store, worker in workers.items():
                wait_drained(worker, users, ctx.progress, f"memory/{store}", timeout=120 + users / 250,
                             event_rows=rows)
                rss = worker.rss()
                ctx.progress.done(f"memory/{store}: {users} users, RSS {rss['VmRSS'] / 2**20:.0f} MiB")
                ctx.report.add(f"rss_{store}_store_{users}_users", rss["VmRSS"] / 2**20, "MiB")
                ctx.report.details[f"memory_{store}"] = {
                    "users": users, "rss_bytes": rss["VmRSS"], "peak_bytes": rss.get("VmHWM"),
                    "entries_in_clickhouse": worker.sql(
                        "SELECT count() FROM funnel.stage_entries WHERE funnel = 'default'")[0][0],
                    # The embedded engine lives in the worker: what it accounts for of the RSS.
                    "chdb_tracked_bytes": _chdb_memory(worker),
                }
    finally:
        for worker in workers.values():
            worker.stop()


def _chdb_memory(worker: WorkerProcess) -> int | None:
    """Memory the worker's chDB engine tracks (its share of the worker's RSS), if it says."""
    try:
        rows = worker.sql("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'")
    except (OSError, RuntimeError):
        return None
    return int(rows[0][0]) if rows else None
