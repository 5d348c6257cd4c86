"""What applying an event to a journey causes: stage entries, transitions, drop-offs.

Frozen records (the rows of ClickHouse's ``stage_entries``, ``transitions``
and ``dropoffs`` come from them, :mod:`streams.funnel.rows`), and their fast
constructors for the journey code's hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, TypeVar, cast

__all__ = [
    "DEFAULT_CHANNEL",
    "Breakdown",
    "Dropoff",
    "JourneyResult",
    "StageEntry",
    "Transition",
    "breakdown",
    "new_breakdown",
    "new_dropoff",
    "new_entry",
    "new_transition",
]

DEFAULT_CHANNEL = "direct"


@dataclass(frozen=True, slots=True)
class Breakdown:
    """The dimensions an entry is reported by: campaign is first touch, like the
    channel; product, region and manager are the latest the user's events named."""

    campaign: str = ""
    product: str = ""
    region: str = ""
    manager: str = ""


@dataclass(frozen=True, slots=True)
class StageEntry:
    funnel: str
    stage: str
    stage_index: int
    user_id: str
    ts: int
    channel: str
    event_id: str
    dims: Breakdown = Breakdown()
    #: False when re-emitted (replay or re-attribution): metrics count new ones only.
    new: bool = True
    #: 1, or higher once an identity merge moved the entry; ClickHouse keeps the highest.
    version: int = 1
    #: A tombstone: the person was merged into another (identity).
    deleted: bool = False
    #: The person is excluded from the funnel's conversion figures (an ``exclude`` event).
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class Transition:
    """A transition into ``to_stage``; ``deleted`` ones retract an earlier version."""

    funnel: str
    from_stage: str
    to_stage: str
    from_index: int
    to_index: int
    user_id: str
    from_ts: int
    ts: int
    seconds: float
    channel: str
    event_id: str
    version: int
    deleted: bool = False
    campaign: str = ""
    #: True the first time this user gets a transition into to_stage (metrics
    #: count those only: corrections are not new conversions).
    first: bool = False
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class Dropoff:
    """A user whose conversion window ran out at ``stage`` (closed lost), or its retraction."""

    funnel: str
    stage: str
    stage_index: int
    user_id: str
    entered_ts: int
    dropped_ts: int
    channel: str
    version: int
    deleted: bool = False
    first: bool = False
    excluded: bool = False


@dataclass(slots=True)
class JourneyResult:
    duplicate: bool = False
    entries: list[StageEntry] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    dropoffs: list[Dropoff] = field(default_factory=list)
    channel: str = DEFAULT_CHANNEL
    #: For purchases: "new" for the user's first purchase, "returning" after.
    customer: str = ""
    #: +1: the person became excluded from the funnel (every row came again,
    #: marked); -1: no longer excluded; 0: unchanged.
    excluded: int = 0


# -- speed: constructors for the hot path -----------------------------------------------------------

_T = TypeVar("_T")


def _builder(cls: type[_T]) -> Callable[..., _T]:
    """A constructor of ``cls`` (a frozen slots dataclass) taking every field positionally.

    It builds the object as a mutable twin with the same slots (plain attribute
    stores, not object.__setattr__ per field) and then sets its ``__class__``:
    the result is a genuine ``cls`` instance, equal to ``cls(*values)`` and as
    frozen. About three times faster; falls back to ``cls`` where an
    interpreter refuses the class change.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]

    def __post_init__(self: Any) -> None:
        self.__class__ = cls

    twin = make_dataclass(f"_Building{cls.__name__}", names, slots=True, eq=False, repr=False,
                          namespace={"__post_init__": __post_init__})
    try:
        probe = twin(*names)
    except TypeError:  # pragma: no cover - CPython allows it (same slots, same base)
        return cls
    if type(probe) is not cls or probe != cls(*names):  # pragma: no cover
        return cls
    return cast(Callable[..., _T], twin)


new_breakdown = _builder(Breakdown)
new_entry = _builder(StageEntry)
new_transition = _builder(Transition)
new_dropoff = _builder(Dropoff)


def breakdown(dims: list[str]) -> Breakdown:
    return new_breakdown(*dims) if len(dims) == 4 else Breakdown(*dims)
