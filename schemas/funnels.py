"""Funnel definitions: a name plus an ordered list of stages (event types)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from schemas.events import EVENT_TYPES, EventType
from schemas.exceptions import FunnelConfigError

__all__ = ["DEFAULT_FUNNEL", "FunnelDefinition", "FunnelsConfig", "default_config"]


class FunnelDefinition(BaseModel):
    """One funnel. Stages are event types, in the order people move through them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
    stages: tuple[EventType, ...] = Field(min_length=2)
    conversion_window_days: float = Field(default=14.0, gt=0, le=36_500)  # 100 years at most
    attribution: Literal["first_touch", "last_touch"] = "first_touch"

    @model_validator(mode="after")
    def _unique_stages(self) -> FunnelDefinition:
        seen: set[str] = set()
        for stage in self.stages:
            if stage in seen:
                raise ValueError(f"stage {stage!r} appears twice")
            seen.add(stage)
        return self

    def index(self, stage: str) -> int:
        """Position of ``stage`` in this funnel, or -1 if the funnel does not have it."""
        try:
            return self.stages.index(stage)
        except ValueError:
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
        field = ".".join(map(str, loc))
        msg = err.get("msg", "invalid")
        problems.append(f"{where}{': ' + field if field else ''}: {msg}")
    return f"{source}: " + "; ".join(problems)


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
