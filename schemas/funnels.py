"""Funnel definitions: a name, ordered stages (event types, or named and filtered), exclusions.

```yaml
funnels:
  - name: default                       # a list of event types: each is a stage named after it
    stages: [visit, signup, webinar, consultation, purchase]
  - name: b2b
    stages:
      - visit
      - {name: pricing, event: visit, where: {properties.page: /pricing}}
      - {name: mql, event: signup, where: {properties.lead_score: {gte: 50}}, within_days: 14}
    exclude:
      - {event: purchase, where: {properties.refunded: true}}
```

Filters (``where``) are :mod:`schemas.filters`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.events import EVENT_TYPES, EventType
from schemas.exceptions import FunnelConfigError
from schemas.filters import Condition, parse_where

__all__ = ["DEFAULT_FUNNEL", "Exclusion", "FunnelDefinition", "FunnelsConfig", "Stage", "default_config"]

NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]


class _Filtered(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    event: EventType
    #: field -> operator -> operand (:func:`schemas.filters.parse_where`'s normal form).
    where: dict[str, Condition] = Field(default_factory=dict)

    @field_validator("where", mode="before")
    @classmethod
    def _where(cls, value: Any) -> dict[str, Condition]:
        return parse_where(value)

    def __hash__(self) -> int:  # the filter is a dict: hash what identifies the model
        return hash((type(self), self.event, repr(sorted(self.where.items()))))


class Stage(_Filtered):
    """A funnel stage: its events of type ``event`` that match ``where``.

    ``within_days``: entered later than that after the stage before it, the
    stage counts as entered but not as a conversion from that stage.
    """

    name: Name
    within_days: float | None = Field(default=None, gt=0, le=36_500)

    def __hash__(self) -> int:
        return hash((super().__hash__(), self.name, self.within_days))


class Exclusion(_Filtered):
    """Events that take a person out of the funnel's conversion figures (``exclude``)."""


class FunnelDefinition(BaseModel):
    """One funnel: stages in the order people move through them, and exclusions.

    A stage given as an event type is shorthand for a stage of that name and
    event with no filter, so ``stages: [visit, signup]`` keeps working.
    ``stages`` holds :class:`Stage` models; :attr:`names` their names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    stages: tuple[Stage, ...] = Field(min_length=2)
    exclude: tuple[Exclusion, ...] = ()
    conversion_window_days: float = Field(default=14.0, gt=0, le=36_500)  # 100 years at most
    attribution: Literal["first_touch", "last_touch"] = "first_touch"

    @field_validator("stages", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [{"name": v, "event": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _unique_stages(self) -> FunnelDefinition:
        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"stage {stage.name!r} appears twice")
            seen.add(stage.name)
        if self.stages[0].within_days is not None:
            raise ValueError(f"stage {self.stages[0].name!r}: within_days on the first stage "
                             "(it has no stage before it)")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        """The stage names, in order (what rows, metrics and the page carry)."""
        return tuple(stage.name for stage in self.stages)

    @property
    def event_types(self) -> frozenset[str]:
        """The event types this funnel reads: its stages' and its exclusions'."""
        return frozenset(s.event for s in self.stages) | {x.event for x in self.exclude}

    def index(self, stage: str) -> int:
        """Position of the stage named ``stage`` in this funnel, or -1 if the funnel does not have it."""
        for i, candidate in enumerate(self.stages):
            if candidate.name == stage:
                return i
        return -1


DEFAULT_FUNNEL = FunnelDefinition(name="default", stages=EVENT_TYPES)


class FunnelsConfig(BaseModel):
    """All configured funnels, by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    funnels: tuple[FunnelDefinition, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> FunnelsConfig:
        names = [f.name for f in self.funnels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"funnel names must be unique, repeated: {', '.join(dupes)}")
        return self

    @property
    def by_name(self) -> dict[str, FunnelDefinition]:
        return {f.name: f for f in self.funnels}

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> FunnelsConfig:
        """Validate a parsed config; errors name ``source``, the funnel and the problem."""
        if not isinstance(data, Mapping) or "funnels" not in data:
            raise FunnelConfigError(f"{source}: expected a mapping with a 'funnels' list")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise FunnelConfigError(_describe(exc, data, source)) from None


def _describe(exc: ValidationError, data: Mapping[str, Any], source: str) -> str:
    problems = []
    funnels = data.get("funnels")
    for err in exc.errors(include_url=False):
        if _short_only_after_validation(err):
            continue
        loc = list(err.get("loc", ()))
        where = "config"
        if len(loc) >= 2 and loc[0] == "funnels" and isinstance(loc[1], int):
            entry = funnels[loc[1]] if isinstance(funnels, list) and loc[1] < len(funnels) else {}
            name = entry.get("name") if isinstance(entry, Mapping) else None
            where = f"funnel {name!r}" if name else f"funnel #{loc[1] + 1}"
            loc = loc[2:]
            if len(loc) >= 2 and loc[0] in ("stages", "exclude") and isinstance(loc[1], int):
                where += ": " + _item(entry, loc[0], loc[1])
                loc = [part for part in loc[2:] if part not in _TAGS]
        field = ".".join(map(str, loc))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        problems.append(f"{where}{': ' + field if field else ''}: {msg}")
    return f"{source}: " + "; ".join(problems)


#: Location parts that name a type of a union, not a field ("stages.2.function-before[...]").
_TAGS = {"function-before[_shorthand(), tuple[Stage, ...]]"}


def _item(entry: Any, key: str, i: int) -> str:
    """How an error names the ``i``-th stage or exclusion of a funnel's raw ``entry``."""
    items = entry.get(key) if isinstance(entry, Mapping) else None
    item = items[i] if isinstance(items, list) and i < len(items) else None
    if key == "exclude":
        return f"exclude #{i + 1}"
    name = item if isinstance(item, str) else item.get("name") if isinstance(item, Mapping) else None
    return f"stage {name!r}" if isinstance(name, str) else f"stage #{i + 1}"


def _short_only_after_validation(err: Any) -> bool:
    """A length error caused only by invalid items ("at least 1 item after validation,
    not 0" for a list of one bad funnel): the items' own errors say what is wrong."""
    if err.get("type") != "too_short":
        return False
    given, minimum = err.get("input"), err.get("ctx", {}).get("min_length", 0)
    return isinstance(given, list | tuple) and len(given) >= minimum


def default_config() -> FunnelsConfig:
    """The built-in configuration: one funnel named ``default`` with the five stages."""
    return FunnelsConfig(funnels=(DEFAULT_FUNNEL,))
