"""``funnel bench`` on the command line: the options, :func:`run` (the stages in order) and :func:`main`."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from streams.bench.ceiling import stage_ceiling
from streams.bench.context import FULL, QUICK, Context, Sizes, stage_preproduce
from streams.bench.core import stage_core
from streams.bench.freshness import stage_freshness
from streams.bench.memory import stage_memory
from streams.bench.naive import naive_child, stage_naive
from streams.bench.pipeline import stage_pipeline
from streams.bench.report import Progress, Report, machine_info
from streams.bench.sql import stage_sql
from streams.bench.workers import WorkerProcess, wait_drained

STAGES = ("ceiling", "naive", "core", "pipeline", "freshness", "memory", "sql")
STORES = ("memory", "rocksdb")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funnel bench",
        description="Measure the pipeline on the embedded broker and chDB: raw consume ceiling, naive "
        "Faust baseline, the agents' own code without Kafka or Faust (core), the real worker end to "
        "end, freshness at a fixed load, worker memory per tracked user, and funnel SQL times. Prints "
        "`name: value unit` lines and the ratios pipeline/ceiling, pipeline/naive and pipeline/core; "
        "asserts nothing about speed. The default sizes run "
        "in about a minute; --full uses the issue's sizes (ten minutes at the target speeds, longer today: "
        "the 1M-user memory runs dominate).",
    )
    p.add_argument("--full", action="store_true",
                   help="the issue's sizes: 200k events, 50k naive, 10k events/s for 60s, 1M users, "
                   "10M SQL events")
    p.add_argument("--events", type=int,
                   help="distinct events pre-produced (quick 100000: five agent batches, so that the "
                   "pipeline rate can be timed; full 200000)")
    p.add_argument("--naive-events", type=int, help="events the naive agent processes (quick 5000, "
                   "full 50000)")
    p.add_argument("--fresh-rate", type=float, help="freshness offered load, events/s (10000)")
    p.add_argument("--fresh-seconds", type=float, help="freshness duration (quick 10, full 60)")
    p.add_argument("--memory-users", type=int, help="distinct users per store (quick 5000, full 1000000)")
    p.add_argument("--sql-events", type=int, help="synthetic events for the SQL timings (quick 1M, full 10M)")
    p.add_argument("--stores", default=",".join(STORES),
                   help="table stores for the memory run (memory,rocksdb)")
    p.add_argument("--only", default=",".join(STAGES),
                   help=f"comma-separated stages to run (default all: {','.join(STAGES)})")
    p.add_argument("--drain-seconds", type=float,
                   help="freshness: longest wait for the backlog after the load stops (quick 5, full 60)")
    p.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for the workers, e.g. Faust settings such as "
                   "PRODUCER_LINGER=0.01 (repeatable): A/B a tuning against the same traffic")
    p.add_argument("--worker-module", metavar="MODULE",
                   help="run `python -m MODULE` as the worker instead of `streams.tools.cli worker` "
                   "(a prototype launcher)")
    p.add_argument("--seed", type=int, default=1, help="traffic seed (default 1)")
    p.add_argument("--identity", action="store_true",
                   help="traffic as `funnel generate --identity` sends it: anonymous visits, the link at "
                   "the next stage, user ids after (the cost of identity against a run without)")
    p.add_argument("--stage-properties", action="store_true",
                   help="traffic as `funnel generate --stage-properties` sends it: page on visits, "
                   "lead_score on signups, refunded on some purchases (what named stages filter on)")
    p.add_argument("--funnels-file", type=Path, metavar="FILE",
                   help="the workers' FUNNEL_FUNNELS_FILE, e.g. deploy/funnels.b2b.yml: the cost of more "
                   "funnels and filtered stages; it must keep the funnel `default`, which the traffic and "
                   "the checks are about")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="record each worker with py-spy while it drains (DIR/<worker>.txt, collapsed "
                   "stacks per thread; needs `pip install py-spy`)")
    p.add_argument("--workdir", type=Path, help="keep logs and data here (default: a temporary "
                   "directory, removed at the end)")
    p.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    p.add_argument("--naive-child", help=argparse.SUPPRESS)
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = FULL if args.full else QUICK
    overrides = {k: getattr(args, k) for k in asdict(base) if getattr(args, k, None) is not None}
    return Sizes(**{**asdict(base), **overrides})


class _Timer:
    """``with timer(name):`` records the wall seconds of a stage in the report's details."""

    def __init__(self, report: Report) -> None:
        self.seconds: dict[str, float] = report.details.setdefault("stage_seconds", {})

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)


def parse_env(items: Sequence[str]) -> dict[str, str]:
    """``["NAME=VALUE", ...]`` -> dict; ValueError for an item without ``=``."""
    env = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--worker-env {item!r}: expected NAME=VALUE")
        env[name] = value
    return env


def run(args: argparse.Namespace) -> Report:
    """Run the selected stages; return the report (printed by :func:`main`)."""
    from streams.tools.broker import EmbeddedBroker

    stages = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGES)}")
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if set(stores) - set(STORES):
        raise ValueError(f"--stores: choose from {', '.join(STORES)}")
    sizes = sizes_from(args)
    worker_env = parse_env(args.worker_env)
    funnels_file = args.funnels_file.resolve() if args.funnels_file else None
    if funnels_file is not None:
        from streams.settings import load_funnels

        if "default" not in load_funnels(funnels_file).by_name:  # FunnelConfigError is a ValueError
            raise ValueError(f"--funnels-file {args.funnels_file}: no funnel `default`; the bench's "
                             "traffic and checks are the default funnel's")
        worker_env = {**worker_env, "FUNNEL_FUNNELS_FILE": str(funnels_file)}
    report = Report(machine=machine_info(), sizes={**asdict(sizes), "mode": "full" if args.full else "quick",
                                                   "worker_env": worker_env,
                                                   "worker_module": args.worker_module,
                                                   "identity": args.identity,
                                                   "stage_properties": args.stage_properties,
                                                   "funnels_file": str(funnels_file or "")})
    run_dir = Path(args.workdir or tempfile.mkdtemp(prefix="funnel-bench-")).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(enabled=not args.quiet)
    needs_broker = bool(set(stages) - {"sql"})
    broker = EmbeddedBroker(log_file=run_dir / "broker.log") if needs_broker else None
    started = time.monotonic()
    ctx: Context | None = None
    try:
        if broker is not None:
            broker.start()
        ctx = Context(broker.url.removeprefix("kafka://") if broker else "", run_dir, sizes, args.seed,
                      report, progress, args.profile.resolve() if args.profile else None,
                      worker_env, args.worker_module,
                      # For the CPU split in the details; the broker keeps its process private.
                      broker_pid=getattr(getattr(broker, "_proc", None), "pid", None),
                      identity=args.identity, stage_properties=args.stage_properties,
                      funnels_file=funnels_file)
        timed = _Timer(report)
        if {"ceiling", "naive", "core", "pipeline", "freshness"} & set(stages):
            with timed("produce"):
                stage_preproduce(ctx)
        if "ceiling" in stages:
            with timed("ceiling"):
                stage_ceiling(ctx)
        if "naive" in stages:
            with timed("naive"):
                stage_naive(ctx)
        if "core" in stages:
            with timed("core"):
                stage_core(ctx)
        if {"pipeline", "freshness"} & set(stages):
            worker = WorkerProcess(ctx.bootstrap, run_dir, "pipeline", ctx.prefix, "memory",
                                   ctx.worker_env, ctx.worker_module)
            try:
                with timed("pipeline"):
                    if "pipeline" in stages:
                        stage_pipeline(ctx, worker)
                    else:  # freshness alone: the pre-produced backlog first
                        wait_drained(worker, ctx.truth["events"] + ctx.truth["duplicates"], progress,
                                     "backlog", timeout=600, event_rows=ctx.event_rows(ctx.messages))
                if "freshness" in stages:
                    with timed("freshness"):
                        stage_freshness(ctx, worker)
            finally:
                with timed("stop"):
                    worker.stop()
        if "memory" in stages:
            with timed("memory"):
                stage_memory(ctx, stores)
        if "sql" in stages:
            with timed("sql"):
                stage_sql(ctx)
    finally:
        if broker is not None:
            broker.stop()
        if ctx is not None and ctx._chdb is not None:
            ctx._chdb.close()
        report.details["wall_seconds"] = round(time.monotonic() - started, 1)
        if args.workdir is None:
            shutil.rmtree(run_dir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.naive_child:
        return naive_child(json.loads(args.naive_child))
    try:
        report = run(args)
    except (ValueError, RuntimeError, OSError) as exc:  # TimeoutError and URLError are OSErrors
        print(f"funnel bench: {exc}", file=sys.stderr)
        return 1
    m = report.machine
    print(f"# funnel bench ({report.sizes['mode']}): {m.get('cpu', '?')}, {m.get('cores')} cores, "
          f"{m.get('memory_gib', '?')} GiB, load {', '.join(f'{x:.2f}' for x in m.get('load_average', ()))}, "
          f"commit {m.get('commit')}, {report.details.get('wall_seconds')}s")
    for line in report.lines():
        print(line)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2, default=str) + "\n")
    return 0
