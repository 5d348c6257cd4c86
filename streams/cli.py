"""The ``funnel`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas import FunnelConfigError, write_json_schemas
from sinks import SinkConfigError, connect, parse_clickhouse_url
from streams.report import format_table
from streams.settings import Settings, load_funnels
from streams.sqlguard import UnsafeQuery, check_read_only

__all__ = ["main"]

log = logging.getLogger("funnel")

ENV_HELP = "Configuration comes from FUNNEL_* environment variables; see the README table."


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="funnel",
        description="Streaming funnel metrics: Kafka -> Faust -> ClickHouse + Prometheus.",
        epilog=ENV_HELP,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("worker", help="run a pipeline worker (needs FUNNEL_KAFKA_URL, FUNNEL_CLICKHOUSE_URL)",
                   description="Run a worker: consume the five event topics, keep journeys and "
                   "windows, write ClickHouse, serve /metrics. " + ENV_HELP)

    g = sub.add_parser("generate", help="produce realistic funnel traffic",
                       description="Produce realistic funnel traffic to the event topics "
                       "(needs FUNNEL_KAFKA_URL). Prints a progress line.")
    g.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    g.add_argument("--users", type=int, default=0, help="stop after this many users (0: no limit)")
    g.add_argument("--duration", type=float, default=0.0, help="stop after seconds (0: no limit)")
    g.add_argument("--seed", type=int, default=None, help="random seed, for reproducible traffic")
    g.add_argument("--funnel", default="default", help="funnel name put on the events")
    g.add_argument("--channel-mix", default=None, metavar="C=W,...",
                   help="channel weights, e.g. seo=30,ads=25,social=20 (default: a realistic mix)")
    g.add_argument("--conversion", default="0.10,0.40,0.50,0.50", metavar="P,P,P,P",
                   help="stage-to-stage conversion probabilities (default 0.10,0.40,0.50,0.50)")
    g.add_argument("--skip-rate", type=float, default=0.05, help="share of moves that skip a stage")
    g.add_argument("--repeat-purchase", type=float, default=0.2, help="share of buyers who buy again")
    g.add_argument("--duplicate-rate", type=float, default=0.01, help="share of events sent twice")
    g.add_argument("--invalid-rate", type=float, default=0.0, help="share of malformed messages added")
    g.add_argument("--stage-delay", type=float, default=2.0, help="mean seconds between stages")
    g.add_argument("--truth", type=Path, default=None, help="write the ground truth JSON here")

    sub.add_parser("migrate", help="apply the ClickHouse DDL (idempotent)",
                   description="Create or update the ClickHouse database, tables and views "
                   "at FUNNEL_CLICKHOUSE_URL. Safe to repeat.")

    s = sub.add_parser("schema", help="write the JSON Schema of every event type",
                       description="Write <event_type>.schema.json for producers.")
    s.add_argument("--out", type=Path, required=True, help="output directory")

    q = sub.add_parser("sql", help="run a read-only SQL query and print a table",
                       description="Run read-only SQL against FUNNEL_CLICKHOUSE_URL. With the "
                       "embedded engine, a running `funnel demo` or worker answers the query.")
    q.add_argument("query", help='e.g. "SELECT * FROM funnel.time_to_convert"')
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    d = sub.add_parser("demo", help="run everything locally: broker, chDB, generator, worker",
                       description="Start the embedded broker (unless FUNNEL_KAFKA_URL is set) and "
                       "chDB under FUNNEL_DATA_DIR (unless FUNNEL_CLICKHOUSE_URL is set), generate "
                       "traffic, run the worker and print the live funnel. Ctrl-C stops.")
    d.add_argument("--rate", type=float, default=200.0, help="generated events per second")
    d.add_argument("--refresh", type=float, default=5.0, help="seconds between funnel prints")
    return p


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"funnel: bad configuration: {exc}") from None


def _spec(args: argparse.Namespace) -> Any:
    from streams.generator import DEFAULT_CHANNEL_MIX, TrafficSpec

    mix = dict(DEFAULT_CHANNEL_MIX)
    if args.channel_mix:
        try:
            mix = {k.strip(): float(v) for k, v in (p.split("=") for p in args.channel_mix.split(","))}
        except ValueError:
            raise SystemExit("funnel generate: --channel-mix must look like seo=30,ads=25") from None
    try:
        conversion = tuple(float(x) for x in args.conversion.split(","))
    except ValueError:
        raise SystemExit("funnel generate: --conversion must be numbers, e.g. 0.1,0.4,0.5,0.5") from None
    if len(conversion) != 4 or not all(0 <= c <= 1 for c in conversion):
        raise SystemExit("funnel generate: --conversion needs four probabilities between 0 and 1")
    return TrafficSpec(
        rate=args.rate, users=args.users, duration=args.duration, seed=args.seed,
        funnel=args.funnel, channel_mix=mix, conversion=conversion, skip_rate=args.skip_rate,
        repeat_purchase=args.repeat_purchase, duplicate_rate=args.duplicate_rate,
        invalid_rate=args.invalid_rate, stage_delay=args.stage_delay,
    )


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.generator import print_progress, run_generator

    spec = _spec(args)
    if not spec.users and not spec.duration:
        print("generate: no --users or --duration: runs until Ctrl-C", file=sys.stderr)
    try:
        truth = asyncio.run(run_generator(settings, spec, progress=print_progress))
    except KeyboardInterrupt:
        return 130
    if args.truth:
        args.truth.write_text(json.dumps(truth.as_dict(), indent=2))
    return 0


def _cmd_migrate(settings: Settings) -> int:
    from streams.worker import clickhouse_target, open_clickhouse

    target = clickhouse_target(settings)
    open_clickhouse(target)
    print(f"migrate: ClickHouse schema applied to {target}")
    return 0


def _sql_via_owner(settings: Settings, query: str) -> dict[str, Any] | None:
    """Ask the process that owns the embedded engine (demo/worker), if one runs."""
    state = settings.data_dir / "worker.json"
    if not state.exists():
        return None
    web = json.loads(state.read_text())["web"]
    url = f"{web}/sql?" + urllib.parse.urlencode({"q": query})
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))
    except urllib.error.URLError:
        return None  # stale state file: nobody answers


def _cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    try:
        args.query = check_read_only(args.query)
    except UnsafeQuery as exc:
        print(f"sql: {exc}", file=sys.stderr)
        return 2
    url = settings.clickhouse_url.get_secret_value() if settings.clickhouse_url else None
    answer = None
    if url is None or url.startswith("chdb:"):
        answer = _sql_via_owner(settings, args.query)
    if answer is None:
        if url is None:
            url = f"chdb://{(settings.data_dir / 'chdb').resolve()}"
        target = parse_clickhouse_url(url, settings.clickhouse_database)
        try:
            result = connect(target, readonly=True).query(args.query)
        except Exception as exc:
            print(f"sql: {exc}", file=sys.stderr)
            return 1
        answer = {"columns": list(result.column_names), "rows": result.result_rows}
    if "error" in answer:
        print(f"sql: {answer['error']}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, default=str))
    else:
        print(format_table(answer["columns"], answer["rows"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = _settings()
    logging.basicConfig(
        level=getattr(logging, {"crit": "CRITICAL", "warn": "WARNING"}.get(
            settings.log_level, settings.log_level.upper())),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "schema":
            for path in write_json_schemas(args.out):
                print(path)
            return 0
        if args.command == "generate":
            return _cmd_generate(args, settings)
        if args.command == "migrate":
            return _cmd_migrate(settings)
        if args.command == "sql":
            return _cmd_sql(args, settings)
        load_funnels(settings.funnels_file)  # fail fast, before any process starts
        if args.command == "worker":
            from streams.worker import run_worker

            return run_worker(settings)
        if args.command == "demo":
            from streams.demo import run_demo

            return run_demo(settings, rate=args.rate, refresh=args.refresh)
    except (FunnelConfigError, SinkConfigError, ValueError) as exc:
        print(f"funnel {args.command}: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
