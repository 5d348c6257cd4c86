"""The ``funnel`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from pydantic import ValidationError

from schemas import EVENT_TYPES, FunnelConfigError, write_json_schemas
from sinks import SinkConfigError, connect, parse_clickhouse_url
from streams.reports.report import ALL_CHANNELS, DEFAULT_RANGE, RANGES, BadSelection, format_table
from streams.reports.reportfile import FORMATS as REPORT_FORMATS
from streams.settings import Settings, load_funnels
from streams.web.sqlguard import UnsafeQuery, check_read_only

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
    g.add_argument("--funnel", default=None,
                   help="funnel name put on the events (default: none, so every funnel with the stage)")
    g.add_argument("--channel-mix", default=None, metavar="C=W,...",
                   help="channel weights, e.g. seo=30,ads=25,social=20 (default: a realistic mix)")
    g.add_argument("--conversion", default="0.10,0.40,0.50,0.50", metavar="P,P,P,P",
                   help="stage-to-stage conversion probabilities (default 0.10,0.40,0.50,0.50)")
    g.add_argument("--skip-rate", type=float, default=0.05, help="share of moves that skip a stage")
    g.add_argument("--repeat-purchase", type=float, default=0.2, help="share of buyers who buy again")
    g.add_argument("--duplicate-rate", type=float, default=0.01, help="share of events sent twice")
    g.add_argument("--invalid-rate", type=float, default=0.0, help="share of malformed messages added")
    g.add_argument("--stage-delay", type=float, default=2.0, help="mean seconds between stages")
    g.add_argument("--identity", action="store_true",
                   help="visits carry only an anonymous id, the next stage both ids (the link), "
                   "later events only the user id")
    g.add_argument("--stage-properties", action="store_true",
                   help="properties that named stages filter on: page on visits (/pricing for about 30%%, "
                   "and a second pricing visit for a quarter of users), lead_score 0-100 on signups (and a "
                   "later second signup for 30%%), refunded=true on 5%% of purchases")
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

    r = sub.add_parser("report", help="the funnel as a table, or as a PNG/HTML/JSON/CSV file",
                       description="The funnel of one funnel, period and channel: users per stage with "
                       "proportional bars, conversion per step and overall (period ratio and cohort), "
                       "and time to convert. Reads FUNNEL_CLICKHOUSE_URL read-only; with the embedded "
                       "engine a running `funnel demo` or worker answers.")
    r.add_argument("--funnel", default=None, help="funnel name (default: the first configured)")
    r.add_argument("--range", choices=list(RANGES), default=DEFAULT_RANGE,
                   help=f"period ending now (default {DEFAULT_RANGE}; all = everything)")
    r.add_argument("--channel", default=ALL_CHANNELS,
                   help="attributed channel from FUNNEL_CHANNELS, 'other' (the rest) or 'all' (default)")
    r.add_argument("--format", choices=["text", *REPORT_FORMATS], default="text",
                   help="text prints to the terminal (default); the others write a file")
    r.add_argument("--out", type=Path, default=None,
                   help="file to write (default funnel-<funnel>-<range>.<format>; '-' for standard "
                   "output, except png)")

    e = sub.add_parser("emit", help="send one event to its topic, validated like the pipeline does",
                       description="Send one event to its topic (needs FUNNEL_KAFKA_URL), e.g. "
                       "`funnel emit purchase --user u1 --amount 49.90 --currency EUR`, "
                       "`funnel emit '{\"event_type\": \"visit\", \"user_id\": \"u1\"}'` or JSON "
                       "on standard input. event_id (a new UUID) and ts (now) are filled in when absent. "
                       "An invalid event is not sent: the error says why (exit status 2).")
    e.add_argument("event", nargs="*", metavar="TYPE|JSON",
                   help=f"the event type ({', '.join(EVENT_TYPES)}) and/or the event as a JSON "
                   "object; '-' reads the JSON from standard input")
    e.add_argument("--user", dest="user_id", help="user id")
    e.add_argument("--anonymous-id", help="anonymous (cookie, device) id; with --user it links the two")
    for flag, what in (("funnel", "funnel name (default: every funnel with this stage)"),
                       ("channel", "traffic channel, e.g. ads"), ("campaign", "campaign"),
                       ("product", "product"), ("region", "region"), ("manager", "sales manager"),
                       ("amount", "purchase amount, e.g. 49.90"), ("currency", "ISO 4217 code, e.g. EUR"),
                       ("order-id", "purchase order id"), ("email", "signup e-mail (hashed or dropped)"),
                       ("ts", "event time: ISO 8601 with zone or epoch ms (default: now)"),
                       ("event-id", "UUID (default: a new one); reuse it when retrying a send")):
        e.add_argument(f"--{flag}", help=what)
    e.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                   help="a property (repeatable); numbers and true/false are typed")
    e.add_argument("--dry-run", action="store_true", help="validate and print the event, do not send")

    b = sub.add_parser("bench", help="benchmark the pipeline against the raw consumer ceiling",
                       description="Run the benchmark (streams.bench): prints figures, asserts "
                       "nothing about speed. All arguments go to it; see `funnel bench -- --help`.")
    b.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")

    d = sub.add_parser("demo", help="run everything locally: broker, chDB, generator, worker",
                       description="Start the embedded broker (unless FUNNEL_KAFKA_URL is set) and "
                       "chDB under FUNNEL_DATA_DIR (unless FUNNEL_CLICKHOUSE_URL is set), generate "
                       "traffic, run the worker and show the live funnel: redrawn in place on a "
                       "terminal, as plain blocks otherwise. Logs go to FUNNEL_DATA_DIR/logs. "
                       "Ctrl-C stops cleanly; a second Ctrl-C stops at once.")
    d.add_argument("--rate", type=float, default=200.0, help="generated events per second")
    d.add_argument("--refresh", type=float, default=2.0,
                   help="seconds between redraws (without a terminal: between blocks, at least 5)")
    d.add_argument("--snapshot", type=Path, default=None,
                   help="also write what the view shows to this JSON file at each refresh "
                   "(python -m streams.tools.demoview lays it out again)")
    return p


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(f"funnel: bad configuration: {exc}") from None


def _spec(args: argparse.Namespace) -> Any:
    from streams.tools.generator import DEFAULT_CHANNEL_MIX, TrafficSpec

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
        invalid_rate=args.invalid_rate, stage_delay=args.stage_delay, identity=args.identity,
        stage_properties=args.stage_properties,
    )


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from streams.tools.generator import print_progress, run_generator

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
    from streams.tools.worker import clickhouse_target, open_clickhouse

    target = clickhouse_target(settings)
    open_clickhouse(target, load_funnels(settings.funnels_file))
    where = f"{target}" + (f" on cluster {target.cluster}" if target.cluster else "")
    print(f"migrate: ClickHouse schema and funnel configuration applied to {where}")
    return 0


def _ask_owner(settings: Settings, path: str) -> dict[str, Any] | None:
    """Ask the process that owns the embedded engine (demo/worker), if one runs."""
    state = settings.data_dir / "worker.json"
    if not state.exists():
        return None
    url = json.loads(state.read_text())["web"] + path
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read()
        try:
            return dict(json.loads(body))
        except ValueError:  # not our API (an older worker): say what answered
            return {"error": f"{url.split('?')[0]} answered HTTP {exc.code}"}
    except urllib.error.URLError:
        return None  # stale state file: nobody answers


def _read(
    settings: Settings, owner_path: str, direct: Callable[[Client, str], dict[str, Any]]
) -> dict[str, Any]:
    """Read ClickHouse: through the running owner of the embedded engine at ``owner_path``,
    else with a read-only client, ``direct(client, database)``. Failures come back as
    ``{"error": ...}``, as the owner answers them."""
    url = settings.clickhouse_url.get_secret_value() if settings.clickhouse_url else None
    if url is None or url.startswith("chdb:"):
        answer = _ask_owner(settings, owner_path)
        if answer is not None:
            return answer
        if url is None:
            url = f"chdb://{(settings.data_dir / 'chdb').resolve()}"
        target = parse_clickhouse_url(url, settings.clickhouse_database)
    else:  # a server: the read-only user if there is one
        from streams.tools.worker import clickhouse_target

        target = clickhouse_target(settings, reader=True)
    try:
        return direct(connect(target, readonly=True), target.database)
    except Exception as exc:
        return {"error": str(exc)}


def _cmd_sql(args: argparse.Namespace, settings: Settings) -> int:
    try:
        args.query = check_read_only(args.query)
    except UnsafeQuery as exc:
        print(f"sql: {exc}", file=sys.stderr)
        return 2

    def direct(client: Client, database: str) -> dict[str, Any]:
        result = client.query(args.query)
        return {"columns": list(result.column_names), "rows": result.result_rows}

    answer = _read(settings, "/sql?" + urllib.parse.urlencode({"q": args.query}), direct)
    if "error" in answer:
        print(f"sql: {answer['error']}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer, default=str))
    else:
        print(format_table(answer["columns"], answer["rows"]))
    return 0


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from dataclasses import replace

    from streams.reports.report import format_report, funnel_report, select
    from streams.reports.reportfile import write_report

    funnels = load_funnels(settings.funnels_file).by_name
    try:
        sel = select(funnels, settings.channel_list, funnel=args.funnel, period=args.range,
                     channel=args.channel, now_ms=int(time.time() * 1000))
    except BadSelection as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 2
    if args.format == "png" and str(args.out) == "-":
        print("report: a PNG goes to a file: pass --out FILE.png", file=sys.stderr)
        return 2

    def direct(client: Client, database: str) -> dict[str, Any]:
        return funnel_report(lambda sql, p: client.query(sql, parameters=dict(p)).result_rows,
                             replace(sel, database=database))

    query = urllib.parse.urlencode({"funnel": sel.funnel.name, "range": sel.range, "channel": sel.channel})
    report = _read(settings, f"/api/funnel?{query}", direct)
    if "error" in report:
        print(f"report: {report['error']}", file=sys.stderr)
        return 1
    if args.format == "text":
        print(format_report(report))
        return 0
    out = args.out or Path(f"funnel-{sel.funnel.name}-{sel.range}.{args.format}")
    write_report(report, args.format, out)
    if str(out) != "-":
        print(f"report: wrote {out}", file=sys.stderr)
    return 0


def _emit_inputs(items: list[str], has_user: bool) -> tuple[str | None, str | None, str]:
    """Positional arguments -> (event type, JSON text, where the JSON came from)."""
    from streams.tools.emit import EmitError

    event_type = text = None
    where = "the JSON argument"
    for item in items:
        if item == "-" or item.lstrip().startswith("{"):
            if text is not None:
                raise EmitError("give one JSON object, not several")
            text = item
        elif event_type is None and text is None:
            event_type = item
        else:
            raise EmitError(f"unexpected argument {item!r}: give an event type and/or one JSON object")
    if text == "-" or (text is None and not has_user and not sys.stdin.isatty()):
        where = "standard input"
        text = sys.stdin.read()
        if not text.strip() and not items:
            text = None  # nothing piped in: flags only
    return event_type, text, where


def _cmd_emit(args: argparse.Namespace, settings: Settings) -> int:
    from schemas import Decoder
    from streams.tools.emit import EmitError, SendError, build_event, parse_json, send, validate

    now_ms = int(time.time() * 1000)
    fields = {k: getattr(args, k) for k in (
        "user_id", "anonymous_id", "funnel", "channel", "campaign", "product", "region", "manager", "amount",
        "currency", "order_id", "email", "ts", "event_id")}
    decoder = Decoder(load_funnels(settings.funnels_file).by_name,
                      max_bytes=settings.max_message_bytes, max_future_seconds=settings.max_future_seconds)
    try:
        event_type, text, where = _emit_inputs(args.event, args.user_id is not None
                                               or args.anonymous_id is not None)
        body = parse_json(text, where) if text is not None else None
        event_type, payload = build_event(event_type, body, fields, args.property, now_ms)
        raw = validate(decoder, event_type, payload, now_ms)
        if args.dry_run:
            print(raw.decode())
            print(f"emit: valid {event_type} event, not sent (--dry-run)", file=sys.stderr)
            return 0
        topic = settings.topic(event_type)
        who = str(payload.get("anonymous_id") or payload.get("user_id"))
        partition, offset = asyncio.run(send(settings, topic, who.encode(), raw))
    except SendError as exc:
        print(f"emit: {exc}", file=sys.stderr)
        return 1
    except EmitError as exc:
        print(f"emit: {exc}", file=sys.stderr)
        return 2
    print(f"emit: sent {event_type} {payload['event_id']} for {who} "
          f"to {topic} (partition {partition}, offset {offset})")
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
        if args.command == "bench":
            from streams.bench import main as bench_main

            rest = [a for a in args.bench_args if a != "--"]
            return bench_main(rest)
        if args.command == "migrate":
            return _cmd_migrate(settings)
        if args.command == "sql":
            return _cmd_sql(args, settings)
        if args.command == "report":
            return _cmd_report(args, settings)
        if args.command == "emit":
            return _cmd_emit(args, settings)
        load_funnels(settings.funnels_file)  # fail fast, before any process starts
        if args.command == "worker":
            from streams.tools.worker import run_worker

            return run_worker(settings)
        if args.command == "demo":
            from streams.tools.demo import run_demo

            return run_demo(settings, rate=args.rate, refresh=args.refresh, snapshot=args.snapshot)
    except (FunnelConfigError, SinkConfigError, ValueError) as exc:
        print(f"funnel {args.command}: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
