"""Stage ``freshness``: a fixed offered load, production -> counter on /metrics and -> row in ClickHouse."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from streams.bench.context import Context
from streams.bench.kafka import event_topics
from streams.bench.measure import metric_sum, percentile, rate, visibility_latencies
from streams.bench.traffic import Message, realistic_traffic
from streams.bench.workers import WorkerProcess


class _Poller(threading.Thread):
    """Samples ``probe()`` (a count) every ``every`` seconds; keeps (time, count) pairs."""

    def __init__(self, probe: Callable[[], float], every: float) -> None:
        super().__init__(daemon=True)
        self.probe, self.every = probe, every
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                value = self.probe()
            except (OSError, RuntimeError, ValueError):
                self.errors += 1
            else:
                self.samples.append((time.time(), value))
            self.halt.wait(self.every)

    @property
    def last(self) -> float:
        return self.samples[-1][1] if self.samples else 0.0


def stage_freshness(ctx: Context, worker: WorkerProcess) -> None:
    sizes = ctx.sizes
    n = round(sizes.fresh_rate * sizes.fresh_seconds)
    label = f"{sizes.fresh_rate:.0f}eps_{sizes.fresh_seconds:.0f}s"
    ctx.progress(f"freshness: planning {n} events", force=True)
    # Fresh users, no duplicates: every message is one events row and the
    # counters map one to one onto production order.
    messages, _ = realistic_traffic(n, seed=ctx.seed + 1, rate=sizes.fresh_rate, duplicate_rate=0.0,
                                    identity=ctx.identity, stage_properties=ctx.stage_properties)
    worker.wait_ready()
    def entries() -> float:  # the default funnel's, which the traffic's entry marks are about
        return metric_sum(worker.metrics(), "funnel_stage_entries_total", funnel="default")

    base_entries = entries()
    # Rows the worker received from now on: the backlog before (drained) has
    # 1 % duplicates, whose extra rows background merges remove at any time,
    # so a count of every row can fall below its starting point.
    fresh_rows = ("SELECT count() FROM funnel.events WHERE funnel = 'default' "
                  f"AND received_at >= fromUnixTimestamp64Milli({int(time.time() * 1000)})")
    pollers = {
        "metrics": _Poller(lambda: entries() - base_entries, 0.2),
        "clickhouse": _Poller(lambda: float(worker.sql(fresh_rows)[0][0]), 0.2),
    }
    for poller in pollers.values():
        poller.start()
    produced = asyncio.run(_offer(ctx, messages, sizes.fresh_rate, pollers))
    entries_total = sum(m.entry for m in messages)
    deadline = time.monotonic() + sizes.drain_seconds
    while time.monotonic() < deadline and (pollers["metrics"].last < entries_total
                                           or pollers["clickhouse"].last < n):
        worker.check_alive()
        ctx.progress(f"freshness: draining, {pollers['metrics'].last:.0f}/{entries_total} entries "
                     f"on /metrics, {pollers['clickhouse'].last:.0f}/{n} rows in ClickHouse")
        time.sleep(0.2)
    for poller in pollers.values():
        poller.halt.set()
        poller.join()
    until = time.time()
    details: dict[str, Any] = {"offered_events": n, "rate": sizes.fresh_rate,
                               "seconds": sizes.fresh_seconds,
                               "achieved_rate": rate(n, produced[-1] - produced[0]) if produced else 0}
    for name, born in (("metrics", [t for t, m in zip(produced, messages, strict=True) if m.entry]),
                       ("clickhouse", produced)):
        latencies, unseen = visibility_latencies(born, pollers[name].samples, until)
        for q in (50, 99):
            ctx.report.add(f"freshness_{name}_p{q}_{label}", percentile(latencies, q), "s")
        ctx.report.add(f"freshness_{name}_unseen_{label}", unseen, "events")
        details[name] = {"items": len(born), "unseen": unseen, "samples": len(pollers[name].samples),
                         "probe_errors": pollers[name].errors,
                         "max_s": max(latencies) if latencies else None}
        if unseen:
            print(f"bench: freshness: {unseen} of {len(born)} not visible on {name} "
                  f"{sizes.drain_seconds:.0f}s after the load stopped: the pipeline does not keep up "
                  "(their latency counts until then: the percentiles are lower bounds)",
                  file=sys.stderr)
    ctx.progress.done(f"freshness: {n} events offered at {details['achieved_rate']:.0f}/s")
    ctx.report.details["freshness"] = details


async def _offer(ctx: Context, messages: Sequence[Message], per_second: float,
                 pollers: dict[str, _Poller]) -> list[float]:
    """Send ``messages`` at ``per_second``, stamping each with its send time; returns those times."""
    from aiokafka import AIOKafkaProducer

    topics = event_topics(ctx.prefix)
    producer = AIOKafkaProducer(bootstrap_servers=ctx.bootstrap, linger_ms=5)
    await producer.start()
    produced: list[float] = []
    pending: list[asyncio.Future[Any]] = []
    started = time.time()
    try:
        for i, m in enumerate(messages):
            ahead = started + i / per_second - time.time()
            if ahead > 0.002:
                await asyncio.sleep(ahead)
                ctx.progress(f"freshness: {i}/{len(messages)} offered, "
                             f"{pollers['metrics'].last:.0f} entries on /metrics, "
                             f"{pollers['clickhouse'].last:.0f} rows in ClickHouse")
            now = time.time()
            pending.append(await producer.send(topics[m.event_type], m.value(int(now * 1000)), key=m.key))
            produced.append(now)
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return produced
