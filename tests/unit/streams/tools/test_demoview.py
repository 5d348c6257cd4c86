"""streams.tools.demoview: the demo's view for a terminal's size, plain and styled; the README's capture."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sinks import FunnelMetrics
from streams.tools.demoview import (
    ChannelLine,
    DemoView,
    FunnelView,
    Snapshot,
    StageLine,
    layout,
    plain,
    readme_block,
    replace_readme_block,
)

ROOT = Path(__file__).resolve().parents[4]
STAGES = [("visit", 4512), ("signup", 2001), ("webinar", 900), ("consultation", 402), ("purchase", 120)]


def _funnel(name: str = "default") -> FunnelView:
    first = STAGES[0][1]
    return FunnelView(name, tuple(
        StageLine(stage, n, None if i == 0 else n / STAGES[i - 1][1], n / first, n / first)
        for i, (stage, n) in enumerate(STAGES)))


def _snapshot(**changes: Any) -> Snapshot:
    base: dict[str, Any] = dict(
        at="19:20:31", events=12_345, dead_lettered=3, events_per_second=201.4, consumer_lag=12,
        sink_rows=450, funnels=(_funnel(),),
        channels=(ChannelLine("ads", 900, 40), ChannelLine("seo", 1200, 30)),
        page="http://127.0.0.1:6066/", metrics="http://127.0.0.1:6066/metrics",
        sql='funnel sql "SELECT * FROM funnel.time_to_convert"', logs=".funnel-data/logs", earlier=5000)
    base.update(changes)
    return Snapshot(**base)


def test_the_whole_view_fits_80_by_24() -> None:
    lines = layout(_snapshot())
    text = plain(lines)
    assert len(lines) <= 24 and all(len(line) <= 80 for line in text.splitlines())
    for needle in ("12 345 events", "201 events/s", "consumer lag 12", "dead-lettered 3",
                   "rows waiting in sinks 450", "continuing with 5 000 events from an earlier run",
                   "top channels by visit -> purchase", "ads", "4.4%", "40 of 900",
                   "page    http://127.0.0.1:6066/", "metrics http://127.0.0.1:6066/metrics",
                   "sql     funnel sql", ".funnel-data/logs/{worker,broker,generator}.log"):
        assert needle in text, needle
    visit = next(line for line in text.splitlines() if line.lstrip().startswith("visit"))
    assert re.search(r"visit\s+4 512\s+-\s+100\.0%\s+100\.0%\s+█{20,}", visit), visit
    assert "\x1b" not in text


@pytest.mark.parametrize(("width", "height"), [(80, 24), (80, 14), (60, 20), (40, 12), (30, 8), (20, 4)])
def test_a_small_terminal_gets_what_fits_most_important_first(width: int, height: int) -> None:
    snap = _snapshot(funnels=(_funnel(), _funnel("b2b")))
    text = plain(layout(snap, width, height))
    lines = text.splitlines()
    assert len(lines) <= max(height, 3) and all(len(line) <= width for line in lines)
    assert lines[0].startswith("funnel demo"[:width])
    if height >= 14:
        assert "visit" in text and "page" in text  # the first funnel and the page stay
    if width >= 60 and height >= 14:
        assert "http://127.0.0.1:6066/" in text


def test_parts_are_dropped_in_order() -> None:
    snap = _snapshot(funnels=(_funnel(), _funnel("b2b")))
    full = plain(layout(snap, 80, 100))
    assert all(part in full for part in ("continuing", "logs", "top channels", "sql", "b2b", "metrics"))
    short = plain(layout(snap, 80, 15))
    assert "continuing" not in short and "logs" not in short and "top channels" not in short
    assert "page    http" in short and "visit" in short


def test_narrow_drops_the_bar_then_the_conversions_from_the_right() -> None:
    def visit_line(width: int) -> str:
        return next(line for line in plain(layout(_snapshot(), width, 24)).splitlines()
                    if line.lstrip().startswith("visit"))

    assert "█" in visit_line(80)
    assert "█" not in visit_line(52) and visit_line(52).endswith("100.0%")
    assert visit_line(41).split() == ["visit", "4", "512", "-", "100.0%"]
    assert visit_line(40).split() == ["visit", "4", "512", "-"]


def test_a_snapshot_goes_through_json_unchanged() -> None:
    snap = _snapshot()
    assert Snapshot.from_json(snap.to_json()) == snap


def test_the_readme_shows_the_captured_snapshot_laid_out_by_this_code() -> None:
    """README's "What you see" is docs/demo-view.json (written by `funnel demo --snapshot`), laid out."""
    snap = Snapshot.from_json((ROOT / "docs" / "demo-view.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert readme_block(snap) in readme
    assert replace_readme_block(readme, snap) == readme
    assert sum(stage.users for stage in snap.funnels[0].stages) > 0  # a real run, with traffic
    with pytest.raises(ValueError, match="no block"):
        replace_readme_block("# no view here", snap)


class _Worker:
    """A stand-in for the demo's pipeline, with ClickHouse rows from a dict of queries."""

    def __init__(self, rows: dict[str, list[tuple[Any, ...]]] | None = None, reader: bool = True) -> None:
        self.metrics = FunnelMetrics(CollectorRegistry(), ["ads"])
        self.settings = SimpleNamespace(channel_list=["ads"])
        from schemas import DEFAULT_FUNNEL
        self.funnels = {"default": DEFAULT_FUNNEL}
        self.database = "funnel"
        self.pending_rows = 7
        self._rows = rows or {}
        self.reader = SimpleNamespace(query=self._query) if reader else None

    def _query(self, sql: str, parameters: Any = None) -> Any:
        for needle, found in self._rows.items():
            if needle in sql:
                return SimpleNamespace(result_rows=found)
        raise RuntimeError("Code: 210. Connection refused")

    def consumer_lag(self) -> int:
        return 3

    async def run_blocking(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


def _view(worker: Any, tty: bool) -> tuple[DemoView, io.StringIO]:
    out = io.StringIO()
    return DemoView(worker, out, {"page": "p", "metrics": "m", "sql": "s"}, Path("logs"), 0, tty), out


def test_without_a_terminal_each_refresh_prints_a_plain_block() -> None:
    worker = _Worker()
    worker.metrics.events.labels("default", "visit").inc(5)
    view, out = _view(worker, tty=False)
    asyncio.run(view.refresh())
    asyncio.run(view.refresh())
    text = out.getvalue()
    assert text.count("funnel demo") == 2 and "\x1b" not in text
    assert "5 events" in text and "consumer lag 3" in text and "rows waiting in sinks 7" in text
    # ClickHouse did not answer: said on the view, stages shown at zero.
    assert "ClickHouse: Code: 210. Connection refused" in text
    assert re.search(r"^\s+purchase\s+0\s", text, re.M)


def test_on_a_terminal_the_view_is_drawn_with_styles(tmp_path: Path) -> None:
    rows = {"countIf(stage": [("ads", 10, 1)], "received_at <": [(42,)], "transitions FINAL": [],
            "user_id IN": [("visit", 10), ("signup", 4)], "GROUP BY stage": [("visit", 10), ("signup", 4)]}
    view, out = _view(_Worker(rows), tty=True)
    view.snapshot_file = tmp_path / "view.json"
    asyncio.run(view.refresh())
    view.stop()
    assert "\x1b[" in out.getvalue()  # escape codes: colours, redraws
    snap = Snapshot.from_json(view.snapshot_file.read_text())
    assert [(s.stage, s.users) for s in snap.funnels[0].stages][:2] == [("visit", 10), ("signup", 4)]
    assert snap.channels == (ChannelLine("ads", 10, 1),) and snap.earlier == 42 and not snap.error


def test_named_stages_are_shown_by_their_names() -> None:
    """b2b's stages (tests/named_stages.py) are names, not event types: with ClickHouse rows and
    without, the view lists them in the funnel's order; top channels go from its first to its last."""
    from tests.named_stages import B2B, B2B_STAGES

    entries = [("visit", 10), ("pricing", 6), ("lead", 4), ("mql", 2), ("won", 1), ("signup", 99)]
    rows = {"countIf(stage": [("ads", 10, 1)], "received_at <": [(0,)], "transitions FINAL": [],
            "user_id IN": entries, "GROUP BY stage": entries}
    worker = _Worker(rows)
    worker.funnels = {"b2b": B2B}
    view, _ = _view(worker, tty=False)
    snap = asyncio.run(view.snapshot())
    assert [(s.stage, s.users) for s in snap.funnels[0].stages] == [
        ("visit", 10), ("pricing", 6), ("lead", 4), ("mql", 2), ("won", 1)]
    text = plain(layout(snap))
    assert "top channels by visit -> won" in text and re.search(r"^\s+mql\s+2\s+50\.0%", text, re.M)
    offline = _Worker(reader=False)
    offline.funnels = {"b2b": B2B}
    snap = asyncio.run(_view(offline, tty=False)[0].snapshot())
    assert [s.stage for s in snap.funnels[0].stages] == list(B2B_STAGES)
