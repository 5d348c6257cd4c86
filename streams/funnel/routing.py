"""Which funnels an event feeds: the one it names, else every funnel that reads its event type."""

from __future__ import annotations

from collections.abc import Iterable

from schemas import EVENT_TYPES, FunnelDefinition, NormalizedEvent

__all__ = ["route", "routes_for"]


def route(
    event: NormalizedEvent, funnels: dict[str, FunnelDefinition],
    routes: dict[str, list[FunnelDefinition]],
) -> list[FunnelDefinition]:
    """The funnels an event feeds: the one it names, else every funnel that reads its event type.

    ``routes`` maps each event type to the funnels with a stage or an
    exclusion of that type (whether the event enters a stage is decided by
    the stages' filters, :mod:`streams.funnel.stages`).
    """
    if event["funnel"]:
        named = funnels.get(event["funnel"])
        return [named] if named else []  # unknown names are dead-lettered at ingest
    return routes.get(event["event_type"], [])


def routes_for(funnels: Iterable[FunnelDefinition]) -> dict[str, list[FunnelDefinition]]:
    """Event type -> the funnels with a stage or an exclusion of that type, in configuration order."""
    funnels = list(funnels)
    return {t: [f for f in funnels if t in f.event_types] for t in EVENT_TYPES}
