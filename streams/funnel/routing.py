"""Which funnels an event feeds: the one it names, else every funnel that has its stage."""

from __future__ import annotations

from collections.abc import Iterable

from schemas import EVENT_TYPES, FunnelDefinition, NormalizedEvent

__all__ = ["route", "routes_for"]


def route(
    event: NormalizedEvent, funnels: dict[str, FunnelDefinition],
    routes: dict[str, list[FunnelDefinition]],
) -> list[FunnelDefinition]:
    """The funnels an event feeds: the one it names, else every funnel with its stage.

    ``routes`` maps each event type to the funnels that have it as a stage.
    """
    if event["funnel"]:
        named = funnels.get(event["funnel"])
        return [named] if named else []  # unknown names are dead-lettered at ingest
    return routes.get(event["event_type"], [])


def routes_for(funnels: Iterable[FunnelDefinition]) -> dict[str, list[FunnelDefinition]]:
    """Event type -> the funnels that have it as a stage, in configuration order."""
    funnels = list(funnels)
    return {t: [f for f in funnels if f.index(t) >= 0] for t in EVENT_TYPES}
