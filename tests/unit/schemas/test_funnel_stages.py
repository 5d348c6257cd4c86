"""The stage grammar of the funnel configuration: named stages, where filters, within_days, exclude."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import EVENT_TYPES, FunnelDefinition, FunnelsConfig
from schemas.exceptions import FunnelConfigError
from schemas.filters import compile_where, parse_where

ROOT = Path(__file__).resolve().parents[3]
#: The README's example, as shipped in deploy/ (FUNNEL_FUNNELS_FILE=deploy/funnels.b2b.yml).
B2B = (ROOT / "deploy" / "funnels.b2b.yml").read_text()


def load(text: str) -> FunnelsConfig:
    return FunnelsConfig.from_mapping(yaml.safe_load(text), "funnels.yml")


def test_the_b2b_example_and_the_old_form_load() -> None:
    config = load(B2B)
    default, b2b = config.funnels
    assert default.names == EVENT_TYPES
    assert [(s.name, s.event, s.where) for s in default.stages] == [(t, t, {}) for t in EVENT_TYPES]
    assert b2b.names == ("visit", "pricing", "lead", "mql", "won")
    assert [s.event for s in b2b.stages] == ["visit", "visit", "signup", "signup", "purchase"]
    assert b2b.stages[3].within_days == 14 and b2b.stages[3].where == {"properties.lead_score": {"gte": 50}}
    assert b2b.stages[4].where == {"amount": {"gt": 0}, "currency": {"in": ("EUR", "USD")}}
    assert b2b.exclude[0].event == "purchase"
    assert b2b.exclude[0].where == {"properties.refunded": {"eq": True}}
    assert b2b.event_types == {"visit", "signup", "purchase"}
    assert (b2b.index("mql"), b2b.index("signup")) == (3, -1)
    assert FunnelDefinition(name="x", stages=("visit", "purchase")).names == ("visit", "purchase")
    assert hash(b2b) == hash(load(B2B).funnels[1])  # frozen and hashable, filters included


def test_the_readme_shows_the_shipped_b2b_example_and_its_funnel_blocks_load() -> None:
    blocks = re.findall(r"^```yaml\n(funnels:\n.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    assert B2B[B2B.index("funnels:"):] in blocks, "README's b2b example differs from deploy/funnels.b2b.yml"
    for block in blocks:
        assert load(block).funnels


EVENT: dict[str, Any] = {
    "event_type": "purchase", "channel": "ads", "campaign": "spring-sale", "product": "pro",
    "region": "eu", "manager": None, "amount": "49.90", "currency": "EUR", "funnel": None,
    "properties": {"page": "/pricing", "lead_score": 72, "refunded": False, "ratio": 0.5, "code": "5"},
}


@pytest.mark.parametrize(("where", "matches"), [
    ({"channel": "ads"}, True), ({"channel": "seo"}, False),
    ({"currency": "eur"}, True),  # currencies are upper-cased, as the decoder does
    ({"channel": {"in": ["seo", "ads"]}}, True), ({"channel": {"in": ["seo"]}}, False),
    ({"channel": {"not_in": ["seo"]}}, True), ({"channel": {"not_in": ["ads"]}}, False),
    ({"manager": {"not_in": ["bob"]}}, True),  # absent: not in any list
    ({"amount": {"gt": 49}}, True), ({"amount": {"gt": 49.9}}, False),
    ({"amount": {"gte": 49.9}}, True), ({"amount": {"lt": 50}}, True), ({"amount": {"lte": 49}}, False),
    ({"amount": {"gt": 10, "lt": 20}}, False),  # several operators: all must hold
    ({"amount": 49.9}, True),
    ({"properties.lead_score": {"gte": 50}}, True), ({"properties.lead_score": {"gte": 80}}, False),
    ({"properties.ratio": {"lt": 1}}, True),
    ({"properties.code": {"gt": 1}}, False),  # "5" is text: no order with numbers
    ({"properties.code": 5}, False), ({"properties.code": "5"}, True),  # typed equality
    ({"properties.refunded": False}, True), ({"properties.refunded": 0}, False),  # a bool is no number
    ({"properties.page": {"exists": True}}, True), ({"properties.nope": {"exists": False}}, True),
    ({"properties.nope": {"exists": True}}, False), ({"manager": {"exists": False}}, True),
    ({"properties.nope": "x"}, False),  # absent: equal to nothing
    ({"campaign": {"prefix": "spring"}}, True), ({"campaign": {"prefix": "fall"}}, False),
    ({"properties.page": {"prefix": "/pri"}}, True), ({"properties.lead_score": {"prefix": "7"}}, False),
    ({"channel": "ads", "region": "eu", "product": {"in": ["pro", "team"]}}, True),
    ({"channel": "ads", "region": "na"}, False),  # AND
    ({"funnel": {"exists": False}}, True),
])
def test_every_operator(where: dict[str, Any], matches: bool) -> None:
    assert compile_where(parse_where(where))(EVENT) is matches


def test_a_purchase_without_amount_matches_no_comparison() -> None:
    event = {**EVENT, "amount": None}
    assert compile_where(parse_where({"amount": {"gt": 0}}))(event) is False
    assert compile_where(parse_where({"amount": {"exists": False}}))(event) is True
    assert Decimal(EVENT["amount"]) == Decimal("49.90")


PROBLEMS = [
    ("{name: p, event: visit, where: {properties.page: {like: x}}}",
     "stage 'p': where: properties.page: unknown operator 'like' (operators: in, not_in, gt, gte, lt, lte, "
     "exists, prefix)"),
    ("{name: p, event: visit, where: {page: x}}",
     "stage 'p': where: unknown field 'page' (fields: channel, campaign, product, region, manager, currency, "
     "funnel, amount, properties.<key>)"),
    ("{name: p, event: visit, where: {channel: {gt: 5}}}", "stage 'p': where: channel: 'gt' needs a number "
     "field; channel is text"),
    ("{name: p, event: visit, where: {amount: {gt: abc}}}",
     "stage 'p': where: amount: 'gt' needs a number, not 'abc'"),
    ("{name: p, event: visit, where: {amount: {prefix: '1'}}}",
     "stage 'p': where: amount: 'prefix' needs a text field; amount is a number"),
    ("{name: p, event: visit, where: {properties.x: {prefix: 1}}}",
     "stage 'p': where: properties.x: 'prefix' needs a string, not 1"),
    ("{name: p, event: visit, where: {channel: {in: seo}}}",
     "stage 'p': where: channel: 'in' needs a non-empty list, not 'seo'"),
    ("{name: p, event: visit, where: {channel: {not_in: []}}}",
     "stage 'p': where: channel: 'not_in' needs a non-empty list, not []"),
    ("{name: p, event: visit, where: {properties.x: {exists: yes please}}}",
     "stage 'p': where: properties.x: 'exists' needs true or false, not 'yes please'"),
    ("{name: p, event: visit, where: {channel: 5}}",
     "stage 'p': where: channel is text: compare it with a string, not 5"),
    ("{name: p, event: visit, where: {amount: 'x'}}",
     "stage 'p': where: amount is a number: compare it with a number, not 'x'"),
    ("{name: p, event: visit, where: {channel: {}}}",
     "stage 'p': where: channel: no operator (operators: in, not_in, gt, gte, lt, lte, exists, prefix)"),
    ("{name: p, event: visit, where: [channel]}",
     "stage 'p': where: where must be a mapping of fields to conditions, not ['channel']"),
    ("{name: p, event: visit, where: {properties.x: null}}",
     "stage 'p': where: properties.x: an equality must be a single value, not None"),
    ("{name: p, event: click}", "stage 'p': event: Input should be 'visit', 'signup', 'webinar', "
     "'consultation' or 'purchase'"),
    ("{name: p}", "stage 'p': event: Field required"),
    ("{name: Pricing Page, event: visit}",
     "stage 'Pricing Page': name: String should match pattern '^[a-z0-9][a-z0-9_\\-]{0,63}$'"),
    ("{name: p, event: visit, within_days: 0}", "stage 'p': within_days: Input should be greater than 0"),
    ("{name: p, event: visit, colour: red}", "stage 'p': colour: Extra inputs are not permitted"),
    ("visit", "stage 'visit' appears twice"),
]


@pytest.mark.parametrize(("stage", "problem"), PROBLEMS)
def test_every_error_names_the_file_the_funnel_the_stage_and_the_problem(stage: str, problem: str) -> None:
    with pytest.raises(FunnelConfigError) as caught:
        load(f"funnels:\n  - name: b2b\n    stages: [visit, {stage}]\n")
    assert str(caught.value) == f"funnels.yml: funnel 'b2b': {problem}"


def test_funnel_level_errors() -> None:
    with pytest.raises(FunnelConfigError, match=r"^funnels.yml: funnel 'b2b': stage 'v': within_days on the "
                       r"first stage \(it has no stage before it\)$"):
        load("funnels:\n  - name: b2b\n    stages: [{name: v, event: visit, within_days: 3}, signup]\n")
    with pytest.raises(FunnelConfigError,
                       match=r"^funnels.yml: funnel 'b2b': exclude #1: where: unknown field 'x' "
                             r"\(fields: .*\)$"):
        load("funnels:\n  - name: b2b\n    stages: [visit, signup]\n    exclude: [{event: purchase, "
             "where: {x: 1}}]\n")
    with pytest.raises(FunnelConfigError,
                       match=r"^funnels.yml: funnel 'b2b': exclude #1: event: Field required"):
        load("funnels:\n  - name: b2b\n    stages: [visit, signup]\n    exclude: [{where: {channel: x}}]\n")
