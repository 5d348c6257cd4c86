"""A funnel definition compiled for the journey code: which stages an event enters, stage limits, exclusions.

:func:`compiled` returns the :class:`CompiledFunnel` of a
:class:`~schemas.FunnelDefinition`, made once per definition. The journey
code runs :meth:`CompiledFunnel.matches` once per event and funnel, so a stage
without a filter costs one dict lookup; only the stages of the event's type
that have a ``where`` run their predicate (:func:`schemas.filters.compile_where`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from schemas import FunnelDefinition
from schemas.filters import compile_where

__all__ = ["CompiledFunnel", "compiled"]

Predicate = Callable[[Mapping[str, Any]], bool]


class CompiledFunnel:
    """What the journey code looks up about one FunnelDefinition, computed once.

    ``index``: stage name -> position; ``key``: the same as a sort key;
    ``limits``: stage name -> its ``within_days`` in milliseconds (stages with
    one only); ``last``: the last stage's name; ``excludes``: event type ->
    the predicates of the funnel's exclusions of that type.
    """

    __slots__ = ("definition", "excludes", "filtered", "index", "key", "last", "last_touch", "limits",
                 "name", "plain")

    def __init__(self, definition: FunnelDefinition) -> None:
        self.definition = definition  # also keeps id(definition) from being reused
        self.name = definition.name
        index = {stage.name: i for i, stage in enumerate(definition.stages)}
        self.index = index
        self.key: Callable[[str], int] = lambda stage: index.get(stage, -1)  # sort key
        self.last_touch = definition.attribution == "last_touch"
        self.last = definition.stages[-1].name
        #: event type -> its stages without a filter, as (name, position), in funnel order
        self.plain: dict[str, tuple[tuple[str, int], ...]] = {}
        #: event type -> its stages with a filter, as (name, position, predicate)
        self.filtered: dict[str, list[tuple[str, int, Predicate]]] = {}
        for i, stage in enumerate(definition.stages):
            if stage.where:
                self.filtered.setdefault(stage.event, []).append((stage.name, i, compile_where(stage.where)))
            else:
                self.plain[stage.event] = (*self.plain.get(stage.event, ()), (stage.name, i))
        self.limits = {stage.name: round(stage.within_days * 86_400_000)
                       for stage in definition.stages if stage.within_days is not None}
        self.excludes: dict[str, list[Predicate]] = {}
        for rule in definition.exclude:
            self.excludes.setdefault(rule.event, []).append(compile_where(rule.where))

    def matches(self, event: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
        """The stages ``event`` enters (if not entered yet), as (name, position), in funnel order."""
        event_type = event["event_type"]
        found = self.plain.get(event_type, ())
        more = self.filtered.get(event_type)
        if more:
            extra = tuple((name, i) for name, i, matches in more if matches(event))
            if extra:
                found = tuple(sorted(found + extra, key=lambda stage: stage[1]))
        return found

    def excludes_person(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event`` is one of the funnel's exclusions."""
        rules = self.excludes.get(event["event_type"])
        return bool(rules) and any(rule(event) for rule in rules)  # type: ignore[union-attr]


_COMPILED: dict[int, CompiledFunnel] = {}  # id(definition) -> its lookups (frozen models: never stale)
_COMPILED_MAX = 1024  # a worker has a handful; tests build many


def compiled(definition: FunnelDefinition) -> CompiledFunnel:
    info = _COMPILED.get(id(definition))
    if info is None or info.definition is not definition:
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        info = _COMPILED[id(definition)] = CompiledFunnel(definition)
    return info
