"""``funnel report`` as a file: PNG chart, self-contained HTML, JSON or CSV.

Every writer takes the dict of :func:`streams.reports.report.funnel_report` (the same
one ``/api/funnel`` answers), so a file shows exactly what the page and the
terminal show. The PNG is a funnel chart sized for a slide; the HTML needs
nothing from the network (inline CSS, no scripts).
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from streams.reports.report import ALL_CHANNELS, format_duration, format_percent

__all__ = ["FORMATS", "render", "write_report"]

Report = Mapping[str, Any]

CSV_COLUMNS = (
    "funnel", "range", "channel", "since", "until", "stage", "users", "step_conversion",
    "overall_conversion", "cohort_users", "cohort_conversion",
    "p50_seconds_from_previous", "p90_seconds_from_previous", "avg_seconds_from_previous",
)
_BAR_COLOR, _BAR_EDGE, _INK, _MUTED = "#2563eb", "#1d4ed8", "#1f2430", "#6b7280"


def _title(report: Report) -> str:
    channel = "all channels" if report["channel"] == ALL_CHANNELS else f"channel {report['channel']}"
    return f'Funnel "{report["funnel"]}", {report["range_label"]}, {channel}'


def _period(report: Report) -> str:
    since = report["since"] or "the first event"
    return f"{since} to {report['until']} (UTC)"


def _summary(report: Report) -> str:
    stages = report["stages"]
    first = stages[0]["stage"] if stages else "-"
    return (f"Overall conversion {format_percent(report['overall_conversion'])} (period ratio); "
            f"cohort {format_percent(report['cohort_conversion'])} of the {report['cohort_size']:,} "
            f"who entered {first} in the period")


def _from_previous(report: Report) -> dict[str, Mapping[str, Any]]:
    """Time to convert into each stage from the stage before it (skips are listed apart)."""
    stages = [s["stage"] for s in report["stages"]]
    pairs = set(itertools.pairwise(stages))
    return {t["to_stage"]: t for t in report["time_to_convert"] if (t["from_stage"], t["to_stage"]) in pairs}


def render_json(report: Report) -> bytes:
    return json.dumps(report, indent=2).encode() + b"\n"


def render_csv(report: Report) -> bytes:
    """One row per stage, self-describing (funnel, period, channel on every row)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    times = _from_previous(report)
    for s in report["stages"]:
        t = times.get(s["stage"], {})
        writer.writerow([
            report["funnel"], report["range"], report["channel"], report["since"] or "", report["until"],
            s["stage"], s["users"], _num(s["step_conversion"]), _num(s["overall_conversion"]),
            s["cohort_users"], _num(s["cohort_conversion"]), _num(t.get("p50_seconds")),
            _num(t.get("p90_seconds")), _num(t.get("avg_seconds")),
        ])
    return buf.getvalue().encode()


def _num(value: float | None) -> str:
    return "" if value is None else repr(round(value, 6))


_HTML_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1f2430;
margin:24px;max-width:960px}h1{font-size:20px;margin:0}.muted{color:#6b7280}
table{border-collapse:collapse;margin-top:12px}td,th{padding:4px 10px 4px 0;text-align:left}
th{color:#6b7280;font-weight:normal;border-bottom:1px solid #e5e7eb}.n{text-align:right;
font-variant-numeric:tabular-nums}.track{width:420px}.bar{height:22px;background:#2563eb;
border-radius:3px;margin:0 auto;min-width:2px}.bar.zero{background:#e5e7eb}
"""


def render_html(report: Report) -> bytes:
    """A standalone page: the funnel with bars, the conversions and time to convert."""
    e = html.escape
    stages = report["stages"]
    widest = max([s["users"] for s in stages] + [1])
    rows = "".join(
        f'<tr data-stage="{e(s["stage"])}"><td>{e(s["stage"])}</td><td class="n">{s["users"]:,}</td>'
        f'<td class="track"><div class="bar{"" if s["users"] else " zero"}" '
        f'style="width:{100 * s["users"] / widest:.2f}%"></div></td>'
        f'<td class="n">{format_percent(s["step_conversion"])}</td>'
        f'<td class="n">{format_percent(s["overall_conversion"])}</td>'
        f'<td class="n">{format_percent(s["cohort_conversion"])}</td></tr>'
        for s in stages
    )
    times = "".join(
        f'<tr><td>{e(t["from_stage"])} → {e(t["to_stage"])}</td><td class="n">{t["transitions"]:,}</td>'
        f'<td class="n">{format_duration(t["p50_seconds"])}</td>'
        f'<td class="n">{format_duration(t["p90_seconds"])}</td>'
        f'<td class="n">{format_duration(t["avg_seconds"])}</td></tr>'
        for t in report["time_to_convert"]
    ) or '<tr><td colspan="5" class="muted">no transitions in the period</td></tr>'
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(_title(report))}</title>
<style>{_HTML_STYLE}</style></head><body>
<h1>{e(_title(report))}</h1><p class="muted">{e(_period(report))}</p>
<table><thead><tr><th>stage</th><th class="n">users</th><th></th><th class="n">step</th>
<th class="n">overall</th><th class="n">cohort</th></tr></thead><tbody>{rows}</tbody></table>
<p>{e(_summary(report))}</p>
<h2 style="font-size:15px">Time to convert</h2>
<table><thead><tr><th>from → to</th><th class="n">users</th><th class="n">median</th><th class="n">p90</th>
<th class="n">average</th></tr></thead><tbody>{times}</tbody></table>
</body></html>
"""
    return page.encode()


#: Stage names (configured, up to 64 characters) beside the PNG's bars: full size up to this many
#: characters, smaller up to twice as many, cut with an ellipsis beyond.
_PNG_LABEL_CHARS = 16


def _png_label(stage: str) -> tuple[str, float]:
    """A stage name as the PNG writes it beside its bar, and its font size (12 pt when it fits)."""
    if len(stage) <= _PNG_LABEL_CHARS:
        return stage, 12.0
    shown = stage if len(stage) <= 2 * _PNG_LABEL_CHARS else stage[:2 * _PNG_LABEL_CHARS - 1] + "…"
    return shown, 12.0 * _PNG_LABEL_CHARS / len(shown)


def render_png(report: Report) -> bytes:
    """A funnel chart for a slide: centred bars, users, step and overall conversion, time to convert."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    from matplotlib import pyplot as plt

    stages = report["stages"]
    ttc = report["time_to_convert"]
    n = len(stages)
    height = 1.6 + 0.72 * n + (0.5 + 0.28 * len(ttc) if ttc else 0.4)
    fig = plt.figure(figsize=(10, height), dpi=150)
    try:
        chart_share = (0.72 * n) / height
        ax = fig.add_axes((0.2, 1 - (1.15 / height) - chart_share, 0.6, chart_share))
        widest = max([s["users"] for s in stages] + [1])
        for i, s in enumerate(stages):
            w = s["users"] / widest
            shown = max(w, 0.004)  # an empty stage still shows where its bar would be
            ax.barh(i, shown, left=(1 - shown) / 2, height=0.62, alpha=1 - 0.1 * i / max(n - 1, 1),
                    color=_BAR_COLOR if s["users"] else "#e5e7eb",
                    edgecolor=_BAR_EDGE if s["users"] else "none")
            label, size = _png_label(s["stage"])
            ax.text(-0.03, i, label, ha="right", va="center", fontsize=size, color=_INK, weight="bold")
            inside = w > 0.18
            ax.text(0.5, i, f"{s['users']:,}", ha="center", va="center", fontsize=11,
                    color="white" if inside else _INK, weight="bold",
                    **({} if inside else {"bbox": {"facecolor": "white", "edgecolor": "none", "pad": 1}}))
            ax.text(1.03, i, format_percent(s["overall_conversion"]), ha="left", va="center", fontsize=11,
                    color=_INK)
            if i:
                ax.text(0.5, i - 0.5, f"↓ {format_percent(s['step_conversion'])}", ha="center", va="center",
                        fontsize=9, color=_MUTED)
        ax.text(1.03, -0.75, "overall", ha="left", va="center", fontsize=9, color=_MUTED)
        ax.set_xlim(0, 1)
        ax.set_ylim(n - 0.5, -0.9)
        ax.axis("off")
        fig.text(0.04, 1 - 0.42 / height, _title(report), fontsize=15, weight="bold", color=_INK)
        fig.text(0.04, 1 - 0.72 / height, _period(report), fontsize=9, color=_MUTED)
        y = 1 - (1.35 / height) - chart_share
        fig.text(0.04, y, _summary(report), fontsize=10, color=_INK)
        y -= 0.4 / height
        if ttc:
            fig.text(0.04, y, "Time to convert", fontsize=10, weight="bold", color=_INK)
            pairs = [t["from_stage"] + " -> " + t["to_stage"] for t in ttc]
            width = max([28, *(len(pair) + 2 for pair in pairs)])  # stage names of any length
            header = f"{'from -> to':<{width}}{'users':>8}{'median':>10}{'p90':>10}{'average':>10}"
            lines = [header] + [
                f"{pair:<{width}}{t['transitions']:>8,}"
                f"{format_duration(t['p50_seconds']):>10}{format_duration(t['p90_seconds']):>10}"
                f"{format_duration(t['avg_seconds']):>10}" for pair, t in zip(pairs, ttc, strict=True)
            ]
            # 8.5 pt fits a line of 110 characters across the slide; longer lines get smaller.
            fig.text(0.04, y - 0.12 / height, "\n".join(lines), fontsize=min(8.5, 8.5 * 110 / len(header)),
                     family="monospace", color=_INK, va="top", linespacing=1.5)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", facecolor="white")
        return buf.getvalue()
    finally:
        plt.close(fig)


FORMATS: dict[str, Callable[[Report], bytes]] = {
    "png": render_png, "html": render_html, "json": render_json, "csv": render_csv,
}


def render(report: Report, fmt: str) -> bytes:
    try:
        return FORMATS[fmt](report)
    except KeyError:
        raise ValueError(f"unknown report format {fmt!r}: one of {', '.join(FORMATS)}") from None


def write_report(report: Report, fmt: str, out: Path) -> None:
    """Write ``report`` as ``fmt`` to ``out`` ('-' is standard output, for the text formats)."""
    data = render(report, fmt)
    if str(out) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
