"""A funnel whose stage names are not event types: the README's b2b example.

The tests of the page, ``funnel report``, the Grafana dashboards and the alert
rules run on it, so that a stage name taken for an event type (``pricing`` is
a visit, ``lead`` and ``mql`` are signups, ``won`` is a purchase) shows up as
a failure.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from schemas import FunnelDefinition, FunnelsConfig

__all__ = ["B2B", "B2B_STAGES", "FUNNELS_YAML"]

#: The README's configuration: the default funnel and b2b (deploy/funnels.b2b.yml).
FUNNELS_YAML = (Path(__file__).resolve().parents[1] / "deploy" / "funnels.b2b.yml").read_text()

B2B: FunnelDefinition = FunnelsConfig.from_mapping(
    yaml.safe_load(FUNNELS_YAML), "tests/named_stages.py").by_name["b2b"]
B2B_STAGES: tuple[str, ...] = B2B.names
assert B2B_STAGES == ("visit", "pricing", "lead", "mql", "won")
