"""Per-user journey logic: pure functions over a JSON-serializable state.

The Faust journey agent keeps one :data:`UserState` per user id in a table and
calls :func:`apply_event` for each event. Everything here is deterministic:
the same state and event always give the same outputs, which is what makes
at-least-once processing safe (see "Replays" below).

Rules (the README's "Journey rules" says the same):

* A user *enters* a stage the first time an event of that stage is applied.
* *Transitions* follow event time, not arrival order. Walk the stages a user
  reached in event-time order, keeping the furthest stage so far; a stage
  beyond it is a transition from it (so skips show: visit -> purchase), a
  stage behind it is none (a user who bought, then watched the webinar). The
  duration is the difference of the two event times.
* One user's events arrive through five topics, so a signup can be processed
  before its visit. When a late-arriving event changes the walk, the affected
  transitions are *corrected*: each transition carries a per-user version,
  a changed one is emitted again with a higher version, and one that no
  longer exists is emitted as a tombstone (``deleted``). ClickHouse keeps the
  highest version (ReplacingMergeTree(version, is_deleted)).
* The channel is the first-touch channel: the channel of the user's earliest
  event in event time (``direct`` when it carried none), or the latest one
  with a channel when the funnel is configured for last-touch attribution.
  When an earlier event arrives late and changes the attribution, the
  user's entries and transitions are emitted again with the new channel.
* Replays: every applied ``event_id`` is remembered (the last
  :data:`SEEN_LIMIT` per user and funnel). An event seen again is reported as
  a duplicate and not applied, but the user's current entries and transitions
  (tombstones included) are emitted again, so a batch replayed after a crash -
  whose first attempt may or may not have reached the sinks - is written
  exactly once by idempotent sinks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from schemas import EVENT_TYPES, FunnelDefinition, NormalizedEvent

__all__ = [
    "DEFAULT_CHANNEL",
    "SEEN_LIMIT",
    "Dropoff",
    "JourneyResult",
    "StageEntry",
    "Transition",
    "UserState",
    "apply_event",
    "expire_window",
    "furthest",
    "route",
    "routes_for",
    "window_ms",
]

SEEN_LIMIT = 128
DEFAULT_CHANNEL = "direct"

#: Table value: funnel name -> funnel state (see :func:`_new_funnel_state`).
UserState = dict[str, dict[str, Any]]


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


@dataclass(slots=True)
class JourneyResult:
    duplicate: bool = False
    entries: list[StageEntry] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    dropoffs: list[Dropoff] = field(default_factory=list)
    channel: str = DEFAULT_CHANNEL
    #: For purchases: "new" for the user's first purchase, "returning" after.
    customer: str = ""


def _new_funnel_state() -> dict[str, Any]:
    # Compact keys: this is stored once per user and funnel.
    #   st: stage -> [ts_ms, event_id]          stages reached
    #   tr: to_stage -> [from_stage | None, version]   emitted transitions (None: retracted)
    #   ver: last transition version; ch: attributed channel
    #   cht: event time of the touch the channel (and campaign) come from
    #   dims: [campaign (first touch), product, region, manager (latest)]
    #   buys: event ids of the user's purchases, in order (new vs returning)
    #   drops: stage -> [version, dropped_ts, deleted]  drop-offs (closed lost)
    #   seen: recent event ids; last: latest entry time
    return {"st": {}, "tr": {}, "ver": 0, "ch": None, "dims": ["", "", "", ""], "buys": [],
            "drops": {}, "seen": [], "last": 0}


def apply_event(state: UserState, event: NormalizedEvent, funnel: FunnelDefinition) -> JourneyResult:
    """Apply ``event`` to ``state`` in place and return what it caused.

    ``state`` must be the current value for ``event['user_id']``; the caller
    writes it back to the table after this returns.
    """
    fs = state.get(funnel.name)
    if fs is None:
        fs = state[funnel.name] = _new_funnel_state()
    event_id = event["event_id"]
    seen: list[str] = fs["seen"]
    if event_id in seen:
        result = JourneyResult(duplicate=True, channel=fs["ch"] or DEFAULT_CHANNEL)
        result.customer = _customer(fs, event_id)
        _emit_all(result, fs, funnel, event["user_id"])
        return result

    seen.append(event_id)
    if len(seen) > SEEN_LIMIT:
        del seen[: len(seen) - SEEN_LIMIT]
    reattributed = _attribute(fs, event, funnel)
    _update_dims(fs, event)
    result = JourneyResult(channel=fs["ch"])
    stage = event["event_type"]
    if stage == "purchase":
        buys: list[str] = fs["buys"]
        buys.append(event_id)
        del buys[: max(0, len(buys) - SEEN_LIMIT)]
        result.customer = _customer(fs, event_id)
    if funnel.index(stage) < 0 or stage in fs["st"]:
        if reattributed:
            _emit_all(result, fs, funnel, event["user_id"])
        return result

    ts = event["ts"]
    fs["st"][stage] = [ts, event_id]
    fs["last"] = max(fs["last"], ts)
    user = event["user_id"]
    result.entries.append(_entry(fs, funnel, user, stage, result.channel))
    desired = _walk(fs["st"], funnel)
    emitted: dict[str, list[Any]] = fs["tr"]
    for to in sorted(desired.keys() | emitted.keys(), key=funnel.index):
        want = desired.get(to)
        have = emitted.get(to)
        if have is not None and have[0] == want:
            continue
        fs["ver"] += 1
        emitted[to] = [want, fs["ver"]]
        result.transitions.append(
            _transition(fs, funnel, user, to, want, fs["ver"], result.channel, first=have is None)
        )
    _retract_dropoffs(result, fs, funnel, user, funnel.index(stage), ts)
    if reattributed:  # everything else the user has, under the new channel
        changed = {t.to_stage for t in result.transitions}
        _emit_all(result, fs, funnel, user, skip_entry=stage, skip_transitions=changed)
    return result


def furthest(state: UserState, funnel: FunnelDefinition) -> tuple[str, int] | None:
    """The user's furthest stage in ``funnel`` and when they entered it."""
    fs = state.get(funnel.name)
    if not fs or not fs["st"]:
        return None
    stage = max(fs["st"], key=funnel.index)
    return stage, fs["st"][stage][0]


def window_ms(funnel: FunnelDefinition) -> int:
    return round(funnel.conversion_window_days * 86_400_000)


def expire_window(state: UserState, funnel: FunnelDefinition, user: str, stage: str,
                  entered: int) -> Dropoff | None:
    """The conversion window after entering ``stage`` at ``entered`` has ended.

    Returns the drop-off if the user is still there (and not already dropped
    there, and ``stage`` is not the last one); updates ``state``.
    """
    if furthest(state, funnel) != (stage, entered) or stage == funnel.stages[-1]:
        return None
    fs = state[funnel.name]
    drops = fs.setdefault("drops", {})
    if stage in drops and not drops[stage][2]:
        return None
    first = stage not in drops
    fs["ver"] += 1
    drops[stage] = [fs["ver"], entered + window_ms(funnel), False]
    return _dropoff(fs, funnel, user, stage, first)


def _retract_dropoffs(result: JourneyResult, fs: dict[str, Any], funnel: FunnelDefinition, user: str,
                      index: int, ts: int) -> None:
    """A stage beyond a drop-off, entered before that window ended: not lost after all."""
    for stage, (_, dropped_ts, deleted) in list(fs.get("drops", {}).items()):
        if not deleted and funnel.index(stage) < index and ts <= dropped_ts:
            fs["ver"] += 1
            fs["drops"][stage] = [fs["ver"], dropped_ts, True]
            result.dropoffs.append(_dropoff(fs, funnel, user, stage))


def _dropoff(fs: dict[str, Any], funnel: FunnelDefinition, user: str, stage: str,
             first: bool = False) -> Dropoff:
    version, dropped_ts, deleted = fs["drops"][stage]
    return Dropoff(funnel.name, stage, funnel.index(stage), user, fs["st"][stage][0], dropped_ts,
                   fs["ch"] or DEFAULT_CHANNEL, version, deleted, first)


def _attribute(fs: dict[str, Any], event: NormalizedEvent, funnel: FunnelDefinition) -> bool:
    """Update the attributed channel and campaign; True if an earlier one changed."""
    ts, channel = event["ts"], event["channel"]
    if fs["ch"] is None:
        fs["ch"], fs["cht"] = channel or DEFAULT_CHANNEL, ts
        fs["dims"][0] = event["campaign"] or ""
        return False
    if funnel.attribution == "last_touch":
        # Each entry keeps the channel that was last when it happened: nothing re-emitted.
        if channel and ts >= fs.get("cht", 0):
            fs["ch"], fs["cht"] = channel, ts
        return False
    if ts >= fs.get("cht", ts):  # first touch: only an earlier event replaces it
        return False
    before = (fs["ch"], fs["dims"][0])  # first touch moved earlier
    fs["ch"], fs["cht"] = channel or DEFAULT_CHANNEL, ts
    fs["dims"][0] = event["campaign"] or ""
    return (fs["ch"], fs["dims"][0]) != before


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


def _update_dims(fs: dict[str, Any], event: NormalizedEvent) -> None:
    """Product, region and manager: the latest values the user's events named."""
    dims = fs["dims"]
    for i, key in ((1, "product"), (2, "region"), (3, "manager")):
        if event[key]:  # type: ignore[literal-required]
            dims[i] = event[key]  # type: ignore[literal-required]


def _customer(fs: dict[str, Any], event_id: str) -> str:
    buys = fs.get("buys", [])
    if event_id not in buys:
        return ""
    return "new" if buys.index(event_id) == 0 else "returning"


def _walk(reached: dict[str, list[Any]], funnel: FunnelDefinition) -> dict[str, str]:
    """to_stage -> from_stage for the stages ``reached``, walked in event-time order."""
    order = sorted(reached, key=lambda s: (reached[s][0], funnel.index(s)))
    transitions: dict[str, str] = {}
    furthest = order[0]
    for stage in order[1:]:
        if funnel.index(stage) > funnel.index(furthest):
            transitions[stage] = furthest
            furthest = stage
    return transitions


def _entry(
    fs: dict[str, Any], funnel: FunnelDefinition, user: str, stage: str, channel: str, new: bool = True
) -> StageEntry:
    ts, event_id = fs["st"][stage]
    return StageEntry(funnel.name, stage, funnel.index(stage), user, ts, channel, event_id,
                      Breakdown(*fs["dims"]), new)


def _transition(
    fs: dict[str, Any], funnel: FunnelDefinition, user: str, to: str, from_stage: str | None,
    version: int, channel: str, first: bool = False,
) -> Transition:
    ts, event_id = fs["st"][to]
    if from_stage is None:  # retracted: a tombstone for (funnel, to, user)
        return Transition(funnel.name, "", to, 0, funnel.index(to), user, ts, ts, 0.0, channel,
                          event_id, version, deleted=True, campaign=fs["dims"][0])
    from_ts = fs["st"][from_stage][0]
    return Transition(
        funnel=funnel.name, from_stage=from_stage, to_stage=to,
        from_index=funnel.index(from_stage), to_index=funnel.index(to), user_id=user,
        from_ts=from_ts, ts=ts, seconds=max(0.0, (ts - from_ts) / 1000.0), channel=channel,
        event_id=event_id, version=version, first=first, campaign=fs["dims"][0],
    )


def _emit_all(
    result: JourneyResult, fs: dict[str, Any], funnel: FunnelDefinition, user: str,
    skip_entry: str = "", skip_transitions: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Everything the user's state stands for, as it stands (replays, re-attribution)."""
    for stage in sorted(fs["st"], key=funnel.index):
        if stage != skip_entry:
            result.entries.append(_entry(fs, funnel, user, stage, result.channel, new=False))
    for to in sorted(fs["tr"], key=funnel.index):
        if to in skip_transitions:
            continue
        from_stage, version = fs["tr"][to]
        result.transitions.append(_transition(fs, funnel, user, to, from_stage, version, result.channel))
    for stage in fs.get("drops", {}):
        result.dropoffs.append(_dropoff(fs, funnel, user, stage))
