"""The funnel as numbers and as text.

Two layers. The *queries* turn a validated :class:`Selection` (funnel, period,
channel) into parameterized SQL against the pipeline's ClickHouse tables and
shape the rows into plain dicts; the worker's JSON API (``streams.web.routes``),
``funnel report`` and its file writers (``streams.reports.reportfile``) all show those
same dicts. The *text* helpers print them (and the demo's live funnel).

Conversions come in two kinds, kept apart by name (see the README):

* ``step_conversion`` / ``overall_conversion`` are **period ratios**: users
  who entered a stage in the period over users who entered the previous (or
  first) stage in the same period, what Prometheus can compute too;
* ``cohort_conversion`` is per user: of the people who entered the first stage
  in the period, the share that has reached the stage so far (people still
  inside the conversion window count as not yet converted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from schemas import FunnelDefinition

__all__ = [
    "ALL_CHANNELS",
    "DEFAULT_RANGE",
    "DEFAULT_STALL",
    "FUNNEL_QUERY",
    "OTHER_CHANNEL",
    "RANGES",
    "STALL_AFTER",
    "BadSelection",
    "Rows",
    "Selection",
    "format_duration",
    "format_funnel",
    "format_percent",
    "format_report",
    "format_table",
    "funnel_report",
    "select",
    "stalled_users",
    "trend",
]

#: Persons who entered each stage, per funnel (each once per stage; excluded persons left out).
FUNNEL_QUERY = """
SELECT funnel, stage, count() AS users
FROM {database}.stage_entries FINAL
WHERE excluded = 0
GROUP BY funnel, stage
"""

BAR_WIDTH = 30

#: Selectable periods: key -> (seconds back from now, or None for everything; label).
RANGES: dict[str, tuple[int | None, str]] = {
    "15m": (15 * 60, "last 15 min"),
    "1h": (3600, "last hour"),
    "24h": (86400, "last 24 h"),
    "7d": (7 * 86400, "last 7 days"),
    "all": (None, "all time"),
}
DEFAULT_RANGE = "24h"
#: Trend bucket per period, seconds (about 12 to 30 points per chart).
TREND_BUCKETS: dict[str, int] = {"15m": 60, "1h": 300, "24h": 3600, "7d": 6 * 3600, "all": 86400}
#: Most buckets a trend returns ("all" can span years: the oldest are left off).
MAX_TREND_BUCKETS = 400
#: "Stalled" thresholds: no new stage for longer than this.
STALL_AFTER: dict[str, tuple[int, str]] = {
    "1h": (3600, "1 hour"),
    "1d": (86400, "1 day"),
    "7d": (7 * 86400, "7 days"),
}
DEFAULT_STALL = "7d"
ALL_CHANNELS = "all"
#: Channels outside the FUNNEL_CHANNELS allow-list, as on the Prometheus labels.
OTHER_CHANNEL = "other"

#: Runs one parameterized query and returns its rows (a ClickHouse client's
#: ``query(sql, parameters=...).result_rows``, on whatever thread owns it).
Rows = Callable[[str, Mapping[str, Any]], Sequence[Sequence[Any]]]


class BadSelection(ValueError):
    """A funnel, period, channel or threshold that is not on the allow-list; says which are."""


def _choose(what: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise BadSelection(f"{what} {value!r} is not one of: {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Selection:
    """What to show: a configured funnel, a period ending now, a channel (or all)."""

    funnel: FunnelDefinition
    range: str
    channel: str
    channels: tuple[str, ...]
    now_ms: int
    database: str = "funnel"

    @property
    def since_ms(self) -> int:
        seconds = RANGES[self.range][0]
        return 0 if seconds is None else self.now_ms - seconds * 1000

    def channel_clause(self, column: str = "channel") -> str:
        """A SQL condition on ``column`` (a constant name): one of three fixed shapes."""
        if self.channel == ALL_CHANNELS:
            return "1"
        if self.channel == OTHER_CHANNEL:
            return f"{column} NOT IN {{channels:Array(String)}}"
        return f"{column} = {{channel:String}}"

    @property
    def params(self) -> dict[str, Any]:
        """Every value the queries bind (ClickHouse ignores the ones a query does not use)."""
        return {
            "db": self.database, "funnel": self.funnel.name, "since": self.since_ms,
            "channel": self.channel, "channels": list(self.channels),
            "first": self.funnel.names[0], "last": self.funnel.names[-1],
            "last_index": len(self.funnel.names) - 1,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "funnel": self.funnel.name,
            "stages": list(self.funnel.names),
            "range": self.range,
            "range_label": RANGES[self.range][1],
            "channel": self.channel,
            "since": _iso(self.since_ms) if RANGES[self.range][0] is not None else None,
            "until": _iso(self.now_ms),
        }


def select(
    funnels: Mapping[str, FunnelDefinition],
    channels: Sequence[str],
    *,
    funnel: str | None = None,
    period: str | None = None,
    channel: str | None = None,
    now_ms: int,
    database: str = "funnel",
) -> Selection:
    """Validate a request against the allow-lists; raise :class:`BadSelection` naming them."""
    name = _choose("funnel", funnel or next(iter(funnels)), list(funnels))
    return Selection(
        funnel=funnels[name],
        range=_choose("range", period or DEFAULT_RANGE, list(RANGES)),
        channel=_choose("channel", channel or ALL_CHANNELS, [ALL_CHANNELS, *channels, OTHER_CHANNEL]),
        channels=tuple(channels),
        now_ms=now_ms,
        database=database,
    )


# -- queries ------------------------------------------------------------------------------
_SINCE = "ts >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')"
#: A funnel's entries as its figures count them: the persons its exclude events took out left out.
_ENTRIES = "(SELECT * FROM {db:Identifier}.stage_entries FINAL WHERE excluded = 0)"

_PERIOD_ENTRIES = f"""
SELECT stage, count() FROM {_ENTRIES}
WHERE funnel = {{funnel:String}} AND {_SINCE} AND {{chan}}
GROUP BY stage"""

_COHORT = f"""SELECT user_id FROM {_ENTRIES}
    WHERE funnel = {{funnel:String}} AND stage = {{first:String}} AND {_SINCE} AND {{chan}}"""

_COHORT_REACHED = f"""
SELECT stage, count() FROM {_ENTRIES}
WHERE funnel = {{funnel:String}} AND user_id IN ({_COHORT})
GROUP BY stage"""

_TIME_TO_CONVERT = f"""
SELECT from_stage, to_stage, count(), quantileExact(0.5)(seconds), quantileExact(0.9)(seconds),
       avg(seconds)
FROM {{db:Identifier}}.transitions FINAL
WHERE funnel = {{funnel:String}} AND is_deleted = 0 AND excluded = 0 AND {_SINCE} AND {{chan}}
GROUP BY from_stage, to_stage"""

_TREND_ENTRIES = f"""
SELECT intDiv(toUnixTimestamp(ts), {{bucket:UInt32}}) * {{bucket:UInt32}} AS b, stage, count()
FROM {_ENTRIES}
WHERE funnel = {{funnel:String}} AND {_SINCE} AND {{chan}}
GROUP BY b, stage"""

_TREND_COHORT = f"""
SELECT intDiv(toUnixTimestamp(ts), {{bucket:UInt32}}) * {{bucket:UInt32}} AS b, count(),
       countIf(user_id IN (SELECT user_id FROM {_ENTRIES}
                           WHERE funnel = {{funnel:String}} AND stage = {{last:String}}))
FROM {_ENTRIES}
WHERE funnel = {{funnel:String}} AND stage = {{first:String}} AND {_SINCE} AND {{chan}}
GROUP BY b"""

# A user's furthest stage and latest entry; stalled = not at the last stage and
# nothing new for longer than the threshold. The channel is the one on the
# furthest entry (first-touch unless the funnel attributes last-touch).
_STALLED = f"""
SELECT furthest, count() FROM (
    SELECT user_id, max(stage_index) AS furthest, max(ts) AS last_ts,
           argMax(channel, stage_index) AS furthest_channel
    FROM {_ENTRIES} WHERE funnel = {{funnel:String}} GROUP BY user_id)
WHERE furthest < {{last_index:UInt8}} AND last_ts < fromUnixTimestamp64Milli({{before:Int64}}, 'UTC')
      AND {{chan}}
GROUP BY furthest"""


def _run(rows: Rows, sel: Selection, sql: str, column: str = "channel", **extra: Any) -> Sequence[Any]:
    return rows(sql.replace("{chan}", sel.channel_clause(column)), {**sel.params, **extra})


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def funnel_report(rows: Rows, sel: Selection) -> dict[str, Any]:
    """Entries per stage in the period, step/overall/cohort conversion, time to convert."""
    period = {stage: int(n) for stage, n in _run(rows, sel, _PERIOD_ENTRIES)}
    reached = {stage: int(n) for stage, n in _run(rows, sel, _COHORT_REACHED)}
    stages = sel.funnel.names
    first, cohort = period.get(stages[0], 0), reached.get(stages[0], 0)
    out: list[dict[str, Any]] = []
    previous: int | None = None
    for stage in stages:
        users = period.get(stage, 0)
        out.append({
            "stage": stage,
            "users": users,
            "step_conversion": None if previous is None else _ratio(users, previous),
            "overall_conversion": _ratio(users, first),
            "cohort_users": reached.get(stage, 0),
            "cohort_conversion": _ratio(reached.get(stage, 0), cohort),
        })
        previous = users
    order = {stage: i for i, stage in enumerate(stages)}
    ttc = sorted(
        ({"from_stage": a, "to_stage": b, "transitions": int(n), "p50_seconds": float(p50),
          "p90_seconds": float(p90), "avg_seconds": float(avg)}
         for a, b, n, p50, p90, avg in _run(rows, sel, _TIME_TO_CONVERT)),
        key=lambda t: (order.get(t["from_stage"], 99), order.get(t["to_stage"], 99)),
    )
    return {
        **sel.describe(),
        "stages": out,
        "overall_conversion": _ratio(period.get(stages[-1], 0), first),
        "cohort_size": cohort,
        "cohort_conversion": _ratio(reached.get(stages[-1], 0), cohort),
        "time_to_convert": ttc,
    }


def trend(rows: Rows, sel: Selection) -> dict[str, Any]:
    """Per time bucket: entries per stage, period and cohort conversion first -> last stage."""
    size = TREND_BUCKETS[sel.range]
    entries: dict[int, dict[str, int]] = {}
    for bucket, stage, n in _run(rows, sel, _TREND_ENTRIES, bucket=size):
        entries.setdefault(int(bucket), {})[stage] = int(n)
    cohorts = {int(b): (int(n), int(c)) for b, n, c in _run(rows, sel, _TREND_COHORT, bucket=size)}
    last = sel.now_ms // 1000 // size * size
    if RANGES[sel.range][0] is None:
        known = [*entries, *cohorts]
        first = min(known) if known else last
    else:
        first = sel.since_ms // 1000 // size * size
    first = max(first, last - (MAX_TREND_BUCKETS - 1) * size)
    stages = sel.funnel.names
    buckets = []
    for start in range(first, last + 1, size):
        counts = entries.get(start, {})
        size_, converted = cohorts.get(start, (0, 0))
        buckets.append({
            "start": _iso(start * 1000),
            "entries": {stage: counts.get(stage, 0) for stage in stages},
            "period_conversion": _ratio(counts.get(stages[-1], 0), counts.get(stages[0], 0)),
            "cohort_size": size_,
            "cohort_converted": converted,
            "cohort_conversion": _ratio(converted, size_),
        })
    return {**sel.describe(), "bucket_seconds": size, "buckets": buckets}


def stalled_users(rows: Rows, sel: Selection, after: str) -> dict[str, Any]:
    """Users whose furthest stage is S and who entered nothing for longer than ``after``."""
    seconds = STALL_AFTER[_choose("stalled threshold", after, list(STALL_AFTER))][0]
    found = {int(i): int(n) for i, n in _run(
        rows, sel, _STALLED, "furthest_channel", before=sel.now_ms - seconds * 1000)}
    stages = sel.funnel.names[:-1]  # people at the last stage have finished
    now_only = {k: v for k, v in sel.describe().items() if k not in ("range", "range_label", "since")}
    return {
        **now_only,
        "after": after,
        "after_seconds": seconds,
        "stages": [{"stage": s, "users": found.get(i, 0)} for i, s in enumerate(stages)],
        "total": sum(found.values()),
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- text -----------------------------------------------------------------------------------
def format_percent(value: float | None) -> str:
    """0.1 -> '10.0%'; None (nothing to divide by) -> '-'."""
    return "-" if value is None else f"{value:.1%}"


def format_duration(seconds: float | None) -> str:
    """Seconds for people: '42s', '1m 30s', '2h 5m', '3d 4h'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s".replace(".0s", "s")
    s = round(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            major, rest = divmod(s, size)
            minor = rest // sub_size
            return f"{major}{unit} {minor}{sub}" if minor else f"{major}{unit}"
    return f"{s}s"


def _bar(n: int, first: int) -> str:
    return "#" * (round(BAR_WIDTH * n / first) if first else 0)


#: Width of the stage column: the longest default stage name and a space, more for longer names.
STAGE_WIDTH = 13


def _stage_width(stages: Sequence[str]) -> int:
    """The stage column's width: stage names are configured (up to 64 characters), not event types."""
    return max([STAGE_WIDTH, *(len(stage) + 1 for stage in stages)])


def format_funnel(funnel: FunnelDefinition, counts: dict[str, int]) -> str:
    """A table with a proportional bar per stage and the conversions between them."""
    width = _stage_width(funnel.names)
    lines = [f'funnel "{funnel.name}"',
             f"  {'stage':<{width}}{'users':>9}  {'step':>7}  {'overall':>7}"]
    first = counts.get(funnel.names[0], 0)
    previous = None
    for stage in funnel.names:
        n = counts.get(stage, 0)
        step = f"{n / previous:.1%}" if previous else "-"
        overall = f"{n / first:.1%}" if first else "-"
        lines.append(f"  {stage:<{width}}{n:>9}  {step:>7}  {overall:>7}  {_bar(n, first)}")
        previous = n
    return "\n".join(lines)


def format_report(report: Mapping[str, Any]) -> str:
    """A :func:`funnel_report` for the terminal: bars, conversions, cohort, time to convert."""
    channel = "all channels" if report["channel"] == ALL_CHANNELS else f"channel {report['channel']}"
    stages = report["stages"]
    first = stages[0]["users"] if stages else 0
    width = _stage_width([row["stage"] for row in stages])
    lines = [
        f'funnel "{report["funnel"]}", {report["range_label"]}, {channel}',
        f"  {'stage':<{width}}{'users':>9}  {'step':>7}  {'overall':>7}  {'cohort':>7}",
    ]
    for row in stages:
        lines.append(
            f"  {row['stage']:<{width}}{row['users']:>9}  {format_percent(row['step_conversion']):>7}  "
            f"{format_percent(row['overall_conversion']):>7}  "
            f"{format_percent(row['cohort_conversion']):>7}  {_bar(row['users'], first)}"
        )
    lines.append(
        f"overall conversion {format_percent(report['overall_conversion'])} (period ratio); "
        f"cohort {format_percent(report['cohort_conversion'])} of the {report['cohort_size']} "
        f"who entered {stages[0]['stage'] if stages else '-'} in the period"
    )
    ttc = report["time_to_convert"]
    if ttc:
        lines += ["", "time to convert"]
        lines += ["  " + line for line in format_table(
            ["from", "to", "users", "median", "p90", "average"],
            [[t["from_stage"], t["to_stage"], t["transitions"], format_duration(t["p50_seconds"]),
              format_duration(t["p90_seconds"]), format_duration(t["avg_seconds"])] for t in ttc],
        ).splitlines()[:-1]]
    else:
        lines += ["", "time to convert: no transitions in the period"]
    return "\n".join(lines)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as an aligned plain-text table, numbers right-aligned."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=False)]
    numeric = [all(_is_number(r[i]) for r in rows) if rows else False for i in range(len(columns))]

    def fmt(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=False)).rstrip()

    out = [fmt(list(columns)), "  ".join("-" * w for w in widths)]
    out.extend(fmt(row) for row in cells)
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
