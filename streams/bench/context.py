"""What every stage shares: the sizes, the run's context, and the traffic pre-produced for the stages."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import FunnelsConfig
from streams.bench.kafka import create_topics, produce
from streams.bench.report import Progress, Report
from streams.bench.traffic import Message, realistic_traffic


@dataclass(frozen=True)
class Sizes:
    """How much each stage does: ``QUICK`` (the default, about a minute) or ``FULL`` (the issue's sizes)."""

    events: int  # distinct realistic events pre-produced for ceiling, naive and pipeline
    naive_events: int  # messages the naive agent processes (it is slow)
    fresh_rate: float  # offered load of the freshness run, events/s
    fresh_seconds: float  # how long it is offered
    memory_users: int  # distinct users per store in the memory run
    sql_events: int  # synthetic events in chDB for the SQL timings
    drain_seconds: float  # freshness: longest wait for the backlog after the load stops


QUICK = Sizes(events=100_000, naive_events=5_000, fresh_rate=10_000, fresh_seconds=5,
              memory_users=5_000, sql_events=1_000_000, drain_seconds=5)
FULL = Sizes(events=200_000, naive_events=50_000, fresh_rate=10_000, fresh_seconds=60,
             memory_users=1_000_000, sql_events=10_000_000, drain_seconds=60)


@dataclass
class Context:
    bootstrap: str
    run_dir: Path
    sizes: Sizes
    seed: int
    report: Report
    progress: Progress
    profile: Path | None = None
    worker_env: dict[str, str] = field(default_factory=dict)
    worker_module: str | None = None
    broker_pid: int | None = None
    prefix: str = ""
    identity: bool = False  # the traffic links anonymous visitors at signup (generate --identity)
    stage_properties: bool = False  # page, lead_score, refunded as generate --stage-properties sends them
    funnels_file: Path | None = None  # the workers' FUNNEL_FUNNELS_FILE (None: the built-in default)
    messages: list[Message] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    _chdb: Any = None

    def funnels(self) -> FunnelsConfig:
        """The funnels the workers run (``--funnels-file``, else the built-in default)."""
        from streams.settings import load_funnels

        return load_funnels(self.funnels_file)

    def event_rows(self, messages: list[Message]) -> int:
        """Rows ``messages`` make in ``events``: one per message per funnel that routes its type.

        The traffic is the default funnel's; a funnels file adds a row for each
        other funnel with a stage or an exclusion of that event type.
        """
        from streams.funnel.routing import routes_for

        routes = {t: len(fs) for t, fs in routes_for(self.funnels().funnels).items()}
        return sum(m.copies * routes[m.event_type] for m in messages)

    def chdb(self) -> Any:
        """The bench process's one embedded ClickHouse engine (chDB allows one per process)."""
        if self._chdb is None:
            from sinks import connect, parse_clickhouse_url

            self._chdb = connect(parse_clickhouse_url(f"chdb://{self.run_dir / 'chdb'}"))
        return self._chdb


def stage_preproduce(ctx: Context) -> None:
    ctx.prefix = f"bench-{uuid.uuid4().hex[:8]}."
    ctx.progress(f"traffic: planning {ctx.sizes.events} events", force=True)
    ctx.messages, ctx.truth = realistic_traffic(ctx.sizes.events, seed=ctx.seed, identity=ctx.identity,
                                               stage_properties=ctx.stage_properties)
    started = time.monotonic()

    async def run() -> int:
        await create_topics(ctx.bootstrap, ctx.prefix)
        return await produce(ctx.bootstrap, ctx.prefix, ctx.messages, int(time.time() * 1000),
                             ctx.progress)

    ctx.sent = asyncio.run(run())
    seconds = time.monotonic() - started
    ctx.progress.done(f"produce: {ctx.sent} messages in {seconds:.1f}s")
    ctx.report.details["traffic"] = {"prefix": ctx.prefix, "messages": ctx.sent,
                                     "produce_seconds": round(seconds, 2), "truth": ctx.truth}
