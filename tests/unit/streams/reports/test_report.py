"""streams.reports.report: the live funnel and SQL results as text."""

from __future__ import annotations

from schemas import DEFAULT_FUNNEL, FunnelDefinition
from streams.reports.report import format_funnel, format_table
from tests.named_stages import B2B

HEADER = ["  stage            users     step  overall"]


def test_worked_example_funnel() -> None:
    counts = {"visit": 1000, "signup": 100, "webinar": 40, "consultation": 20, "purchase": 10}
    assert format_funnel(DEFAULT_FUNNEL, counts).split("\n") == [
        'funnel "default"', *HEADER,
        "  visit             1000        -   100.0%  " + "#" * 30,
        "  signup             100    10.0%    10.0%  ###",
        "  webinar             40    40.0%     4.0%  #",
        "  consultation        20    50.0%     2.0%  #",
        "  purchase            10    50.0%     1.0%  ",
    ]


def test_named_stages_funnel() -> None:
    """b2b's stages are its names (pricing is a visit, lead and mql signups, won a purchase)."""
    counts = {"visit": 1000, "pricing": 300, "lead": 120, "mql": 40, "won": 8, "signup": 999, "purchase": 9}
    assert format_funnel(B2B, counts).split("\n") == [
        'funnel "b2b"', *HEADER,
        "  visit             1000        -   100.0%  " + "#" * 30,
        "  pricing            300    30.0%    30.0%  " + "#" * 9,
        "  lead               120    40.0%    12.0%  ####",
        "  mql                 40    33.3%     4.0%  #",
        "  won                  8    20.0%     0.8%  ",
    ]


def test_a_long_stage_name_widens_the_column() -> None:
    name = "enterprise-demo-booked"
    funnel = FunnelDefinition(name="b2b", stages=("visit", {"name": name, "event": "signup"}))
    assert format_funnel(funnel, {"visit": 10, name: 5}).split("\n") == [
        'funnel "b2b"', "  stage                      users     step  overall",
        "  visit                         10        -   100.0%  " + "#" * 30,
        "  enterprise-demo-booked         5    50.0%    50.0%  " + "#" * 15,
    ]


def test_funnel_without_users_shows_no_ratios() -> None:
    funnel = FunnelDefinition(name="b2b", stages=("visit", "purchase"))
    assert format_funnel(funnel, {"signup": 5}).split("\n") == [
        'funnel "b2b"', *HEADER,
        "  visit                0        -        -  ",
        "  purchase             0        -        -  ",
    ]


def test_table_aligns_numbers_right_and_text_left() -> None:
    rows: list[list[object]] = [["2026-01-31", "ads", 1200, 0.1], ["2026-02-01", None, 5, 0.25]]
    assert format_table(["day", "channel", "users", "rate"], rows) == "\n".join([
        "day         channel  users  rate",
        "----------  -------  -----  ----",
        "2026-01-31  ads       1200   0.1",
        "2026-02-01               5  0.25",
        "(2 rows)",
    ])


def test_table_edge_cases() -> None:
    assert format_table(["a", "b"], []) == "a  b\n-  -\n(0 rows)"
    # Booleans are not numbers: left-aligned.
    assert format_table(["flag"], [[True]]) == "flag\n----\nTrue\n(1 row)"
