"""The live view of ``funnel demo``: one screen with every funnel, the worker's health and the addresses.

A :class:`Snapshot` is what the view shows at one moment (plain data, JSON
round-trip). :func:`layout` lays it out as lines that fit a terminal of a
given size, dropping the least important parts first when it is small; the
same lines are drawn in place on a terminal (:class:`DemoView`, with rich) and
printed as plain blocks otherwise. The README's capture is a real snapshot
laid out by the same code (``python -m streams.tools.demoview``).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from schemas import FunnelDefinition
from streams.reports.report import format_percent, funnel_report, select
from streams.web.routes import counter_total

__all__ = ["DemoView", "Snapshot", "collect", "layout", "plain"]

#: Default and smallest terminal the view is laid out for.
WIDTH, HEIGHT = 80, 24
#: How many channels the view ranks.
TOP_CHANNELS = 5

_TOP_CHANNELS_SQL = """
SELECT channel, countIf(stage = {first:String}) AS entered, countIf(stage = {last:String}) AS converted
FROM {db:Identifier}.stage_entries FINAL
WHERE funnel = {funnel:String} AND excluded = 0
GROUP BY channel
HAVING entered > 0
ORDER BY converted / entered DESC, entered DESC, channel
LIMIT {top:UInt8}"""

_EARLIER_SQL = """
SELECT count() FROM {db:Identifier}.events FINAL
WHERE received_at < fromUnixTimestamp64Milli({since:Int64}, 'UTC')"""


@dataclass(frozen=True)
class StageLine:
    stage: str
    users: int
    step: float | None
    overall: float | None
    cohort: float | None


@dataclass(frozen=True)
class FunnelView:
    name: str
    stages: tuple[StageLine, ...]


@dataclass(frozen=True)
class ChannelLine:
    channel: str
    entered: int
    converted: int


@dataclass(frozen=True)
class Snapshot:
    """What the view shows at one moment."""

    at: str  # wall-clock time, HH:MM:SS
    events: int  # valid events counted by this worker
    dead_lettered: int
    events_per_second: float | None
    consumer_lag: int | None
    sink_rows: int  # rows waiting in the sinks
    funnels: tuple[FunnelView, ...]
    channels: tuple[ChannelLine, ...]  # top channels by the first funnel's last-stage conversion
    page: str
    metrics: str
    sql: str
    logs: str
    earlier: int = 0  # events in ClickHouse from an earlier run
    error: str = ""  # ClickHouse could not be read this time

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        data = json.loads(text)
        data["funnels"] = tuple(FunnelView(f["name"], tuple(StageLine(**s) for s in f["stages"]))
                                for f in data["funnels"])
        data["channels"] = tuple(ChannelLine(**c) for c in data["channels"])
        return cls(**data)


# -- layout ------------------------------------------------------------------------------------

#: A line of the view: (text, style) pieces; the style is a rich style name or "".
Line = list[tuple[str, str]]


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}".replace(",", " ")


def _fit(line: Line, width: int) -> Line:
    """``line`` cut to ``width`` characters."""
    out: Line = []
    room = width
    for text, style in line:
        if room <= 0:
            break
        out.append((text[:room], style))
        room -= len(text)
    return out


#: The conversion columns of a funnel, with their widths, dropped from the right when narrow.
_COLUMNS = (("step", 8), ("overall", 9), ("cohort", 8))


def _funnel_lines(view: FunnelView, width: int) -> list[Line]:
    """A header and one line per stage: name, users, step, overall and cohort conversion, a bar."""
    name_w = max(5, *(len(s.stage) for s in view.stages)) + 1
    columns = list(_COLUMNS)
    fixed = 2 + name_w + 9 + sum(w for _, w in columns)
    while fixed > width and columns:
        fixed -= columns.pop()[1]
    bar_w = width - fixed - 2
    head: Line = [(f"{view.name:<{2 + name_w}}", "bold"), (f"{'users':>9}", "dim"),
                  *((f"{c:>{w}}", "dim") for c, w in columns)]
    lines = [head]
    first = view.stages[0].users if view.stages else 0
    for row in view.stages:
        values = {"step": row.step, "overall": row.overall, "cohort": row.cohort}
        line: Line = [(f"  {row.stage:<{name_w}}", ""), (f"{_count(row.users):>9}", "bold"),
                      *((f"{format_percent(values[c]):>{w}}", "cyan") for c, w in columns)]
        if bar_w >= 4 and first and len(columns) == len(_COLUMNS):  # the bar goes before any column
            line += [("  ", ""), ("█" * round(bar_w * row.users / first), "green")]
        lines.append(line)
    return lines


def layout(snap: Snapshot, width: int = WIDTH, height: int = HEIGHT) -> list[Line]:
    """The view's lines for a ``width`` x ``height`` terminal.

    Every line fits the width. When the height is short, parts are left out in
    this order: the earlier-run note, the log line, the channels, the SQL
    line, funnels after the first, the metrics address; the status line, the
    first funnel and the page's address always stay (cut if they must).
    """
    rate = "?" if snap.events_per_second is None else f"{snap.events_per_second:,.0f}".replace(",", " ")
    status: list[Line] = [
        [("funnel demo  ", "bold"), (snap.at, "dim"), ("  ", ""), (f"{_count(snap.events)}", "bold"),
         (" events  ", ""), (rate, "bold"), (" events/s", "")],
        [("consumer lag ", "dim"), (_count(snap.consumer_lag), ""), ("   dead-lettered ", "dim"),
         (_count(snap.dead_lettered), ""), ("   rows waiting in sinks ", "dim"),
         (_count(snap.sink_rows), "")],
    ]
    if snap.error:
        status.append([(f"ClickHouse: {snap.error}", "red")])
    funnels = [_funnel_lines(f, width) for f in snap.funnels]
    channels: list[Line] = []
    if snap.channels and snap.funnels and snap.funnels[0].stages:
        stages = snap.funnels[0].stages
        name_w = max(len(c.channel) for c in snap.channels) + 1
        channels.append([(f"top channels by {stages[0].stage} -> {stages[-1].stage}", "bold")])
        for c in snap.channels:
            channels.append([(f"  {c.channel:<{name_w}}", ""),
                             (f"{format_percent(c.converted / c.entered):>7}", "cyan"),
                             (f"  {_count(c.converted)} of {_count(c.entered)}", "dim")])
    page: Line = [("page    ", "dim"), (snap.page, "underline")]
    metrics: Line = [("metrics ", "dim"), (snap.metrics, "underline")]
    sql: Line = [("sql     ", "dim"), (snap.sql, "")]
    logs: Line = [("logs    ", "dim"), (f"{snap.logs}/", ""), ("{worker,broker,generator}.log", ""),
                  ("   Ctrl-C stops", "dim")]
    earlier: list[Line] = []
    if snap.earlier:
        earlier = [[(f"continuing with {_count(snap.earlier)} events from an earlier run; "
                     "`make clean` starts afresh", "yellow")]]
    # (priority, display position, lines): lower priority numbers are kept first.
    parts: list[tuple[int, int, list[Line]]] = [
        (0, 0, status), (1, 2, funnels[0] if funnels else []), (2, 5, [page]), (3, 6, [metrics]),
        *((4, 3, lines) for lines in funnels[1:]), (5, 7, [sql]), (6, 4, channels), (7, 8, [logs]),
        (8, 1, earlier),
    ]
    kept: list[tuple[int, int, list[Line]]] = []
    used = 0
    for priority, position, lines in sorted(parts, key=lambda p: p[0]):
        gap = 1 if lines and position in (2, 3, 4, 5) else 0  # a blank line before each block
        if used + len(lines) + gap > height and priority >= 3:
            break  # this part and every less important one are left out
        kept.append((priority, position, lines))
        used += len(lines) + gap
    out: list[Line] = []
    for _, position, lines in sorted(kept, key=lambda p: p[1]):
        if position in (2, 3, 4, 5) and out and out[-1]:
            out.append([])
        out.extend(lines)
    return [_fit(line, width) for line in out[:max(height, 3)]]


def plain(lines: Iterable[Line]) -> str:
    """The lines as plain text (no escape codes)."""
    return "\n".join("".join(text for text, _ in line).rstrip() for line in lines)


def styled(lines: Iterable[Line]) -> Text:
    text = Text()
    for i, line in enumerate(lines):
        if i:
            text.append("\n")
        for piece, style in line:
            text.append(piece, style=style or None)
    return text


# -- collecting ---------------------------------------------------------------------------------


def collect(
    rows: Any, funnels: Mapping[str, FunnelDefinition], channels: Sequence[str], database: str, *,
    now_ms: int, earlier_than_ms: int | None = None,
) -> tuple[tuple[FunnelView, ...], tuple[ChannelLine, ...], int]:
    """Read the funnels (all time), the top channels and the earlier run's events from ClickHouse.

    ``rows(sql, params)`` runs a parameterized query (on the sink's thread).
    ``earlier_than_ms``: count the events received before it (the demo's start).
    """
    views = []
    for name in funnels:
        report = funnel_report(rows, select(funnels, channels, funnel=name, period="all", now_ms=now_ms,
                                            database=database))
        views.append(FunnelView(name, tuple(
            StageLine(s["stage"], s["users"], s["step_conversion"], s["overall_conversion"],
                      s["cohort_conversion"]) for s in report["stages"])))
    top: tuple[ChannelLine, ...] = ()
    if funnels:
        funnel = next(iter(funnels.values()))
        top = tuple(ChannelLine(str(c), int(e), int(v)) for c, e, v in rows(_TOP_CHANNELS_SQL, {
            "db": database, "funnel": funnel.name, "first": funnel.names[0], "last": funnel.names[-1],
            "top": TOP_CHANNELS}))
    earlier = 0
    if earlier_than_ms is not None:
        earlier = int(rows(_EARLIER_SQL, {"db": database, "since": earlier_than_ms})[0][0])
    return tuple(views), top, earlier


@dataclass
class DemoView:
    """Redraws the demo's view on ``out`` every refresh: in place on a terminal, as blocks otherwise.

    ``worker`` is the demo's pipeline (streams.web.endpoints.Worker).
    """

    worker: Any
    out: IO[str]
    addresses: Mapping[str, str]  # page, metrics, sql
    logs: Path
    started_ms: int
    tty: bool
    snapshot_file: Path | None = None  # also write each snapshot here (the README's capture)
    _console: Console | None = field(default=None, init=False)
    _live: Live | None = field(default=None, init=False)
    _earlier: int | None = field(default=None, init=False)  # events from an earlier run, read once
    _samples: list[tuple[float, int]] = field(default_factory=list, init=False)

    async def refresh(self) -> None:
        self.show(await self.snapshot())

    async def snapshot(self) -> Snapshot:
        w = self.worker
        events = int(counter_total(w.metrics.events))
        now = time.monotonic()
        self._samples = [*self._samples[-4:], (now, events)]
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        rate = (n1 - n0) / (t1 - t0) if t1 > t0 else None
        views: tuple[FunnelView, ...] = ()
        top: tuple[ChannelLine, ...] = ()
        error = ""
        if w.reader is not None:
            def rows(sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
                return w.reader.query(sql, parameters=dict(params)).result_rows

            try:
                views, top, earlier = await w.run_blocking(functools.partial(
                    collect, rows, w.funnels, w.settings.channel_list, w.database,
                    now_ms=int(time.time() * 1000),
                    earlier_than_ms=self.started_ms if self._earlier is None else None))
            except Exception as exc:  # shown on the status line; the next refresh tries again
                error = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            else:
                if self._earlier is None:
                    self._earlier = earlier
        if not views:
            views = tuple(FunnelView(f.name, tuple(StageLine(s, 0, None, None, None) for s in f.names))
                          for f in w.funnels.values())
        return Snapshot(
            at=time.strftime("%H:%M:%S"), events=events,
            dead_lettered=int(counter_total(w.metrics.invalid_events)),
            events_per_second=rate, consumer_lag=w.consumer_lag(), sink_rows=w.pending_rows,
            funnels=views, channels=top, page=self.addresses["page"], metrics=self.addresses["metrics"],
            sql=self.addresses["sql"], logs=str(self.logs), earlier=self._earlier or 0, error=error,
        )

    def show(self, snap: Snapshot) -> None:
        if self.snapshot_file is not None:
            self.snapshot_file.write_text(snap.to_json())
        if not self.tty:
            self.out.write(plain(layout(snap, WIDTH, 10**6)) + "\n\n")
            self.out.flush()
            return
        if self._console is None:
            self._console = Console(file=self.out, force_terminal=True)
            self._live = Live(console=self._console, auto_refresh=False, redirect_stdout=False,
                              redirect_stderr=False, transient=False)
            self._live.start()
        try:  # the terminal itself: rich asks the standard streams, which the demo sends to a log
            width, height = os.get_terminal_size(self.out.fileno())
        except (OSError, ValueError, io.UnsupportedOperation):
            width, height = self._console.size
        assert self._live is not None
        self._live.update(styled(layout(snap, width, height)), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()


# -- the README's capture ----------------------------------------------------------------------

README_START = "<!-- demo-view: python -m streams.tools.demoview docs/demo-view.json --readme README.md -->"
README_END = "<!-- /demo-view -->"


def readme_block(snap: Snapshot) -> str:
    return f"{README_START}\n```\n{plain(layout(snap, WIDTH, HEIGHT))}\n```\n{README_END}"


def replace_readme_block(readme: str, snap: Snapshot) -> str:
    pattern = re.compile(re.escape(README_START) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(readme):
        raise ValueError(f"the README has no block between {README_START!r} and {README_END!r}")
    return pattern.sub(lambda _: readme_block(snap), readme, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m streams.tools.demoview",
        description="Lay out a snapshot the demo wrote (funnel demo --snapshot FILE) as the view shows it.")
    parser.add_argument("snapshot", type=Path, help="the snapshot JSON")
    parser.add_argument("--width", type=int, default=WIDTH)
    parser.add_argument("--height", type=int, default=HEIGHT)
    parser.add_argument("--readme", type=Path, help="write the view into this README's demo-view block")
    args = parser.parse_args(argv)
    snap = Snapshot.from_json(args.snapshot.read_text())
    if args.readme:
        args.readme.write_text(replace_readme_block(args.readme.read_text(), snap))
        print(f"{args.readme}: the demo view from {args.snapshot}")
    else:
        print(plain(layout(snap, args.width, args.height)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
