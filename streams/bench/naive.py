"""Stage ``naive``: the baseline, one Faust agent taking one event at a time (in a child process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from streams.bench.context import Context
from streams.bench.kafka import PARTITIONS, SESSION_TIMEOUT, event_topics
from streams.bench.measure import rate
from streams.bench.workers import stop_process


def stage_naive(ctx: Context) -> None:
    target = min(ctx.sizes.naive_events, ctx.sent)
    status = ctx.run_dir / "naive-status.json"
    config = {"bootstrap": ctx.bootstrap, "prefix": ctx.prefix, "target": target,
              "status": str(status), "data_dir": str(ctx.run_dir / "naive"),
              "app_id": f"bench-naive-{uuid.uuid4().hex[:8]}"}
    log_path = ctx.run_dir / "naive.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streams.bench", "--naive-child", json.dumps(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60 + target / 1000
        state: dict[str, Any] = {}
        while not state.get("done"):
            if proc.poll() is not None:
                raise RuntimeError(f"naive agent exited with {proc.returncode} (log: {log_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"naive agent: {state.get('count', 0)}/{target} after the deadline")
            time.sleep(0.2)
            try:
                state = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            seconds = state["last"] - state["first"] if state.get("first") else 0.0
            ctx.progress(f"naive: {state['count']}/{target} events, "
                         f"{rate(state['count'] - 1, seconds):.0f} events/s")
    finally:
        stop_process(proc, signal.SIGTERM, 15)
    seconds = state["last"] - state["first"]
    ctx.progress.done(f"naive: {state['count']} events in {seconds:.2f}s")
    # The clock starts when the first event arrives, so that one is not in the interval.
    ctx.report.add("naive_events_per_s", rate(state["count"] - 1, seconds), "events/s")
    ctx.report.details["naive"] = {"events": state["count"], "seconds": seconds,
                                   "invalid": state.get("invalid", 0)}


def naive_child(config: dict[str, Any]) -> int:
    """The baseline: one Faust agent, one event at a time, decode + journey on a table."""
    import faust

    from schemas import Decoder, InvalidEvent
    from streams.funnel.journey import apply_event
    from streams.funnel.routing import route, routes_for
    from streams.settings import load_funnels

    funnels = load_funnels(None)
    by_name, routes = funnels.by_name, routes_for(funnels.funnels)
    decoder = Decoder(by_name)
    event_type_of = {topic: t for t, topic in event_topics(config["prefix"]).items()}
    app = faust.App(
        config["app_id"], broker=f"kafka://{config['bootstrap']}", store="memory://",
        datadir=config["data_dir"], topic_partitions=PARTITIONS, topic_disable_leader=True,
        web_enabled=False, consumer_auto_offset_reset="earliest", autodiscover=False,
        broker_session_timeout=SESSION_TIMEOUT, broker_heartbeat_interval=2.0,
    )
    raw: faust.Schema = faust.Schema(key_serializer="raw", value_serializer="raw")
    source = app.topic(*event_type_of, schema=raw)
    table = app.Table("journeys", partitions=PARTITIONS,
                      schema=faust.Schema(key_serializer="raw", value_serializer="json"))
    state: dict[str, Any] = {"count": 0, "invalid": 0, "first": None, "last": None, "done": False}
    status = Path(config["status"])

    def write_status() -> None:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(status)

    async def naive(stream: Any) -> None:
        async for value in stream:
            if state["first"] is None:
                state["first"] = time.time()
            msg = stream.current_event.message
            try:
                event = decoder.decode(value, event_type_of[msg.topic], int(time.time() * 1000))
            except InvalidEvent:
                state["invalid"] += 1
            else:
                # No identity resolution: an anonymous id is its own person here.
                person = event["person_id"] = event["person_id"] or event["anonymous_id"]
                key = person.encode()  # type: ignore[union-attr]
                user = table.get(key) or {}
                for funnel in route(event, by_name, routes):
                    apply_event(user, event, funnel)
                table[key] = user
            state["count"] += 1
            state["last"] = time.time()
            if state["count"] >= config["target"] and not state["done"]:
                state["done"] = True
                write_status()

    app.agent(source, name="naive")(naive)

    async def report() -> None:
        if not state["done"]:
            write_status()

    app.timer(0.5)(report)
    worker = faust.Worker(app, loglevel="warning", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
