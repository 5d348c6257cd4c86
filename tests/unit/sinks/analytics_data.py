"""Load events into a migrated chDB database the way the journey agent does.

The unit tests of the ClickHouse views and the SQL cookbook share this: events
go through the real journey logic (:func:`streams.funnel.journey.apply_event`) and
row layouts, and are written with explicit columns like the sink does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from clickhouse_connect.driver.client import Client

from schemas import FunnelsConfig, NormalizedEvent
from sinks import COLUMNS, write_funnel_config
from streams.funnel.journey import UserState, apply_event
from streams.funnel.routing import route, routes_for
from streams.funnel.rows import entry_row, event_row, transition_row
from streams.funnel.windows import TRANSITION, WindowAggregator


def load_events(
    client: Client, database: str, events: Iterable[NormalizedEvent], funnels: FunnelsConfig,
    window_seconds: int = 60, *, arrival_order: bool = False,
) -> dict[str, UserState]:
    """Apply ``events`` in event-time order (or as given), write every table; return the user states."""
    by_name, routes = funnels.by_name, routes_for(funnels.funnels)
    states: dict[str, UserState] = {}
    rows: dict[str, list[Any]] = {t: [] for t in ("events", "stage_entries", "transitions")}
    windows = WindowAggregator(window_seconds)
    for e in (events if arrival_order else sorted(events, key=lambda x: x["ts"])):
        state = states.setdefault(e["user_id"], {})
        for funnel in route(e, by_name, routes):
            result = apply_event(state, e, funnel)
            rows["events"].append(event_row(e, funnel.name, result.channel, result.customer))
            rows["stage_entries"].extend(entry_row(x) for x in result.entries)
            rows["transitions"].extend(transition_row(x) for x in result.transitions)
            for x in result.entries:
                windows.add_entry(x)
            for t in result.transitions:
                windows.add(t.ts, t.funnel, TRANSITION, t.from_stage, t.to_stage, t.channel,
                            t.user_id, t.version, t.deleted)
    rows["stage_counts"] = list(windows.rows())
    for table, table_rows in rows.items():
        if table_rows:
            client.insert(f"{database}.{table}", table_rows, column_names=COLUMNS[table])
    write_funnel_config(client, database, funnels)
    return states


def query(client: Client, database: str, sql: str) -> list[tuple[Any, ...]]:
    """Run ``sql`` with ``funnel.`` meaning the test's database."""
    return list(client.query(sql.replace("funnel.", f"{database}.")).result_rows)
