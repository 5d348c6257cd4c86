"""The live funnel as text: entries per stage, step and overall conversion."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas import FunnelDefinition

__all__ = ["FUNNEL_QUERY", "format_funnel", "format_table"]

#: Users who entered each stage, per funnel (each user once per stage).
FUNNEL_QUERY = """
SELECT funnel, stage, count() AS users
FROM {database}.stage_entries FINAL
GROUP BY funnel, stage
"""

BAR_WIDTH = 30


def format_funnel(funnel: FunnelDefinition, counts: dict[str, int]) -> str:
    """A table with a proportional bar per stage and the conversions between them."""
    lines = [f'funnel "{funnel.name}"',
             f"  {'stage':<13}{'users':>9}  {'step':>7}  {'overall':>7}"]
    first = counts.get(funnel.stages[0], 0)
    previous = None
    for stage in funnel.stages:
        n = counts.get(stage, 0)
        step = f"{n / previous:.1%}" if previous else "-"
        overall = f"{n / first:.1%}" if first else "-"
        bar = "#" * (round(BAR_WIDTH * n / first) if first else 0)
        lines.append(f"  {stage:<13}{n:>9}  {step:>7}  {overall:>7}  {bar}")
        previous = n
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
