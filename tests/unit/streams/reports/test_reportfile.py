"""streams.reports.reportfile and the text of `funnel report`: one report dict, every format."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from schemas import DEFAULT_FUNNEL, FunnelDefinition
from streams.reports.report import format_duration, format_report, funnel_report, select
from streams.reports.reportfile import render, write_report
from tests.named_stages import B2B

NOW_MS = 1_769_860_800_000  # 2026-01-31T12:00:00Z
PERIOD = [("visit", 1000), ("signup", 100), ("webinar", 40), ("consultation", 20), ("purchase", 10)]
COHORT = [("visit", 900), ("signup", 95), ("webinar", 38), ("consultation", 19), ("purchase", 9)]
TIMES = [("visit", "signup", 100, 60.0, 600.0, 125.5), ("signup", "webinar", 40, 3600.0, 7200.0, 4000.0),
         ("visit", "purchase", 2, 86400.0, 90000.0, 88200.0)]


def _rows(sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    """Stands in for ClickHouse: answers each of funnel_report's three queries."""
    if "quantileExact" in sql:
        return TIMES
    return COHORT if "user_id IN" in sql else PERIOD


@pytest.fixture
def report() -> dict[str, Any]:
    sel = select({"default": DEFAULT_FUNNEL}, ["seo", "ads"], period="7d", channel="ads", now_ms=NOW_MS)
    return funnel_report(_rows, sel)


def test_text_report(report: dict[str, Any]) -> None:
    assert format_report(report).splitlines() == [
        'funnel "default", last 7 days, channel ads',
        "  stage            users     step  overall   cohort",
        "  visit             1000        -   100.0%   100.0%  " + "#" * 30,
        "  signup             100    10.0%    10.0%    10.6%  ###",
        "  webinar             40    40.0%     4.0%     4.2%  #",
        "  consultation        20    50.0%     2.0%     2.1%  #",
        "  purchase            10    50.0%     1.0%     1.0%  ",
        "overall conversion 1.0% (period ratio); cohort 1.0% of the 900 who entered visit in the period",
        "",
        "time to convert",
        "  from    to        users  median  p90    average",
        "  ------  --------  -----  ------  -----  -------",
        "  visit   signup      100  1m      10m    2m 6s",
        "  visit   purchase      2  1d      1d 1h  1d",
        "  signup  webinar      40  1h      2h     1h 6m",
    ]


def test_json_is_the_report(report: dict[str, Any]) -> None:
    data = json.loads(render(report, "json"))
    assert data == report
    assert (data["since"], data["until"]) == ("2026-01-24T12:00:00Z", "2026-01-31T12:00:00Z")


def test_csv_has_a_row_per_stage(report: dict[str, Any]) -> None:
    rows = list(csv.DictReader(io.StringIO(render(report, "csv").decode())))
    assert [(r["stage"], r["users"], r["step_conversion"], r["overall_conversion"]) for r in rows] == [
        ("visit", "1000", "", "1.0"), ("signup", "100", "0.1", "0.1"), ("webinar", "40", "0.4", "0.04"),
        ("consultation", "20", "0.5", "0.02"), ("purchase", "10", "0.5", "0.01")]
    assert {(r["funnel"], r["range"], r["channel"]) for r in rows} == {("default", "7d", "ads")}
    # Time from the previous stage only; the visit -> purchase skip is not "from previous".
    assert [r["p50_seconds_from_previous"] for r in rows] == ["", "60.0", "3600.0", "", ""]
    assert rows[1]["cohort_conversion"] == str(round(95 / 900, 6))


def test_html_stands_alone(report: dict[str, Any]) -> None:
    page = render(report, "html").decode()
    assert page.startswith("<!doctype html>")
    assert '<tr data-stage="signup"><td>signup</td><td class="n">100</td>' in page
    assert 'style="width:10.00%"' in page  # bars proportional to the widest stage
    assert "<td>visit → purchase</td><td class=\"n\">2</td><td class=\"n\">1d</td>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_png_is_a_slide_sized_chart(report: dict[str, Any], tmp_path: Any) -> None:
    from PIL import Image

    out = tmp_path / "sub" / "funnel.png"
    write_report(report, "png", out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width == 1500 and 700 < image.height < 1400
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text and bars, not a blank page


def test_empty_report_renders_everywhere() -> None:
    sel = select({"default": DEFAULT_FUNNEL}, [], now_ms=NOW_MS)
    empty = funnel_report(lambda sql, params: [], sel)
    for fmt in ("png", "html", "json", "csv"):
        assert render(empty, fmt)
    assert "time to convert: no transitions in the period" in format_report(empty)
    assert "no transitions in the period" in render(empty, "html").decode()


def test_write_to_stdout_and_unknown_format(report: dict[str, Any], capsysbinary: Any) -> None:
    write_report(report, "json", "-")  # type: ignore[arg-type]
    assert json.loads(capsysbinary.readouterr().out)["funnel"] == "default"
    with pytest.raises(ValueError, match="unknown report format 'pdf'"):
        render(report, "pdf")


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0.25, "0.2s"), (3.0, "3s"), (42.4, "42s"), (60, "1m"), (90, "1m 30s"), (3599.6, "1h"),
    (7500, "2h 5m"), (86400, "1d"), (277200, "3d 5h"), (float("nan"), "-"),
])
def test_durations_for_people(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


# -- a funnel whose stage names are not event types (tests/named_stages.py) -------------------
B2B_PERIOD = [("visit", 1000), ("pricing", 300), ("lead", 120), ("mql", 40), ("won", 8)]
B2B_COHORT = [("visit", 1000), ("pricing", 310), ("lead", 125), ("mql", 41), ("won", 9)]
B2B_TIMES = [("visit", "pricing", 300, 30.0, 120.0, 50.0), ("visit", "lead", 20, 600.0, 900.0, 700.0),
             ("pricing", "lead", 100, 3600.0, 7200.0, 4000.0),
             ("lead", "mql", 40, 86400.0, 172800.0, 90000.0),
             ("mql", "won", 8, 7 * 86400.0, 14 * 86400.0, 8 * 86400.0)]


def _b2b_rows(sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    assert params["funnel"] == "b2b" and (params["first"], params["last"]) == ("visit", "won")
    if "quantileExact" in sql:
        return B2B_TIMES
    return B2B_COHORT if "user_id IN" in sql else B2B_PERIOD


@pytest.fixture
def b2b_report() -> dict[str, Any]:
    sel = select({"default": DEFAULT_FUNNEL, "b2b": B2B}, ["seo", "ads"], funnel="b2b", period="7d",
                 now_ms=NOW_MS)
    return funnel_report(_b2b_rows, sel)


def test_named_stages_in_every_format(b2b_report: dict[str, Any], tmp_path: Any) -> None:
    """The b2b funnel's own stage names (pricing is a visit, lead and mql signups, won a purchase),
    in its order, in the terminal, CSV, JSON, HTML and PNG."""
    assert format_report(b2b_report).splitlines()[:8] == [
        'funnel "b2b", last 7 days, all channels',
        "  stage            users     step  overall   cohort",
        "  visit             1000        -   100.0%   100.0%  " + "#" * 30,
        "  pricing            300    30.0%    30.0%    31.0%  " + "#" * 9,
        "  lead               120    40.0%    12.0%    12.5%  ####",
        "  mql                 40    33.3%     4.0%     4.1%  #",
        "  won                  8    20.0%     0.8%     0.9%  ",
        "overall conversion 0.8% (period ratio); cohort 0.9% of the 1000 who entered visit in the period",
    ]
    rows = list(csv.DictReader(io.StringIO(render(b2b_report, "csv").decode())))
    assert [(r["funnel"], r["stage"], r["users"]) for r in rows] == [
        ("b2b", "visit", "1000"), ("b2b", "pricing", "300"), ("b2b", "lead", "120"), ("b2b", "mql", "40"),
        ("b2b", "won", "8")]
    # From the previous stage of b2b: lead from pricing, not the visit -> lead skip.
    assert [r["p50_seconds_from_previous"] for r in rows] == ["", "30.0", "3600.0", "86400.0", "604800.0"]
    assert json.loads(render(b2b_report, "json"))["stages"][1]["stage"] == "pricing"
    page = render(b2b_report, "html").decode()
    assert '<tr data-stage="mql"><td>mql</td><td class="n">40</td>' in page
    assert "<td>visit → lead</td>" in page
    write_report(b2b_report, "png", tmp_path / "b2b.png")
    assert (tmp_path / "b2b.png").read_bytes()[:4] == b"\x89PNG"


def test_long_stage_names_keep_the_columns_aligned(tmp_path: Any) -> None:
    """Stage names are configured, up to 64 characters (event types are at most 12)."""
    long = "qualified-" + "x" * 54
    funnel = FunnelDefinition(name="b2b", stages=(
        {"name": "visit", "event": "visit"}, {"name": "enterprise-demo-booked", "event": "signup"},
        {"name": long, "event": "purchase"}))
    period = [("visit", 500), ("enterprise-demo-booked", 50), (long, 5)]

    def rows(sql: str, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        if "quantileExact" in sql:
            return [("visit", "enterprise-demo-booked", 50, 60.0, 90.0, 70.0),
                    ("enterprise-demo-booked", long, 5, 3600.0, 7200.0, 4000.0)]
        return period

    report = funnel_report(rows, select({"b2b": funnel}, [], period="7d", now_ms=NOW_MS))
    lines = format_report(report).splitlines()
    table = lines[1:5]
    assert [line.split()[0] for line in table] == ["stage", "visit", "enterprise-demo-booked", long]
    # The users column ends in the same place on every line, after the longest name.
    last_words = ["users", "500", "50", "5"]
    ends = {line.index(word) + len(word) for line, word in zip(table, last_words, strict=True)}
    assert len(ends) == 1 and ends.pop() > len(long) + 2
    write_report(report, "png", tmp_path / "long.png")
    from PIL import Image

    with Image.open(tmp_path / "long.png") as image:
        assert image.width == 1500
