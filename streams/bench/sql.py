"""Stage ``sql``: the funnel queries over N synthetic events in chDB (best of 3)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from streams.bench.context import Context

# The funnel-by-channel query (cookbook 1) and the windowFunnel cross-check (cookbook 11).
SQL_QUERIES = {
    "funnel_by_channel": """
        SELECT channel, stage,
               countIf(ts >= toStartOfWeek(now()) ) AS this_week,
               countIf(ts >= toStartOfWeek(now()) - INTERVAL 1 WEEK
                       AND ts < toStartOfWeek(now())) AS last_week
        FROM funnel.stage_entries FINAL
        WHERE funnel = 'default' AND ts >= toStartOfWeek(now()) - INTERVAL 1 WEEK
        GROUP BY channel, stage, stage_index
        ORDER BY channel, stage_index""",
    "window_funnel": """
        SELECT level, count() AS users
        FROM (SELECT user_id,
                     windowFunnel(14 * 86400)(toDateTime(ts), event_type = 'visit', event_type = 'signup',
                                              event_type = 'webinar', event_type = 'consultation',
                                              event_type = 'purchase') AS level
              FROM funnel.events FINAL WHERE funnel = 'default' GROUP BY user_id)
        GROUP BY level
        ORDER BY level""",
}

#: Share of users reaching each stage (the generator's 10 %, 40 %, 50 %, 50 % steps).
STAGE_SHARES = (1.0, 0.10, 0.04, 0.02, 0.01)


def sql_query(name: str, database: str = "funnel") -> str:
    """One of :data:`SQL_QUERIES`, against ``database``."""
    return SQL_QUERIES[name].replace("funnel.", f"{database}.")


def synthetic_sql(stage: str, index: int, users: int, database: str = "funnel") -> list[str]:
    """INSERT ... SELECT statements: the first ``users`` users' events and entries of one stage.

    User n visits at a time spread over the last 13 days; each later stage
    follows within an hour. Channels follow the generator's mix roughly.
    """
    channel = ("['seo','seo','seo','ads','ads','social','social','email','partner','direct']"
               "[1 + cityHash64(number, 1) % 10]")
    ts = (f"now64(3) - toIntervalMillisecond(86400000 + cityHash64(number) % 1123200000) "
          f"+ toIntervalMillisecond({index} * (cityHash64(number, 2) % 3600000))")
    amount = "toDecimal64(149, 4)" if stage == "purchase" else "toDecimal64(0, 4)"
    source = f"""
        SELECT generateUUIDv4(number) AS event_id, concat('u-', toString(number)) AS user_id,
               {ts} AS ts, {channel} AS channel
        FROM numbers({users})"""
    return [
        f"""INSERT INTO {database}.events (event_id, event_type, funnel, user_id, ts, received_at,
                channel, attributed_channel, campaign, product, region, manager, amount, currency,
                order_id, source, customer)
            SELECT event_id, '{stage}', 'default', user_id, ts, ts, channel, channel, '', 'pro', 'eu',
                   '', {amount}, {"'EUR'" if stage == "purchase" else "''"}, '', 'bench', ''
            FROM ({source})""",
        f"""INSERT INTO {database}.stage_entries (funnel, stage, stage_index, user_id, ts, channel,
                event_id, campaign, product, region, manager)
            SELECT 'default', '{stage}', {index}, user_id, ts, channel, event_id, '', 'pro', 'eu', ''
            FROM ({source})""",
    ]


def insert_synthetic(client: Any, events: int, database: str = "funnel",
                     progress: Callable[[str], None] = lambda line: None) -> int:
    """About ``events`` events (and their stage entries) in ``database``; returns the users."""
    from schemas import EVENT_TYPES

    users = math.ceil(events / sum(STAGE_SHARES))
    for index, stage in enumerate(EVENT_TYPES):
        for statement in synthetic_sql(stage, index, round(users * STAGE_SHARES[index]), database):
            progress(f"sql: inserting {stage} rows")
            client.command(statement)
    return users


def stage_sql(ctx: Context) -> None:
    from sinks import migrate

    client, db = ctx.chdb(), "funnel"
    migrate(client, db)
    started = time.monotonic()
    users = insert_synthetic(client, ctx.sizes.sql_events, db, lambda line: ctx.progress(line, force=True))
    # Time the queries on settled tables, not against the merges the inserts started.
    settle_until = time.monotonic() + 120
    while time.monotonic() < settle_until and client.query(
            f"SELECT count() FROM system.merges WHERE database = '{db}'").result_rows[0][0]:
        ctx.progress("sql: waiting for background merges", force=True)
        time.sleep(0.5)
    rows = client.query(f"SELECT count() FROM {db}.events").result_rows[0][0]
    parts = client.query(f"SELECT table, count() FROM system.parts WHERE database = '{db}' AND active "
                         "AND table IN ('events', 'stage_entries') GROUP BY table").result_rows
    details: dict[str, Any] = {"events": rows, "users": users, "insert_seconds": time.monotonic() - started,
                               "active_parts": {t: n for t, n in parts}, "runs": {}}
    for name in SQL_QUERIES:
        runs = []
        for attempt in range(3):
            ctx.progress(f"sql: {name}, run {attempt + 1} of 3", force=True)
            began = time.perf_counter()
            result = client.query(sql_query(name, db))
            runs.append(time.perf_counter() - began)
        details["runs"][name] = runs
        details.setdefault("answers", {})[name] = [list(map(str, row)) for row in result.result_rows[:12]]
        ctx.report.add(f"sql_{name}_{rows}_events", min(runs), "s")
    ctx.progress.done(f"sql: {rows} events")
    ctx.report.details["sql"] = details
