"""Per-user journey logic: pure functions over a JSON-serializable state.

The Faust journey agent keeps one :data:`UserState` per user id in a table and
calls :func:`apply_event` for each event. Everything here is deterministic:
the same state and event always give the same outputs, which is what makes
at-least-once processing safe (see "Replays" below).

Rules (documented in the README):

* A user *enters* a stage the first time an event of that stage is applied.
* A *transition* is emitted when the entered stage lies beyond the furthest
  stage reached so far; it goes from that furthest stage, so skips show
  (visit -> purchase). Its duration is the difference of the two event times,
  never negative.
* An earlier stage seen after a later one (a purchase before its visit, out of
  order) is still an entry, but not a transition: the user never moved
  forward to it.
* The channel is the first-touch channel: the channel of the first event
  applied for the user in that funnel (``direct`` when it carried none), or the
  latest one when the funnel is configured for last-touch attribution.
* Replays: every applied ``event_id`` is remembered (the last
  :data:`SEEN_LIMIT` per user and funnel). An event seen again is reported as
  a duplicate and is not applied again, but the entry and transition it caused
  are emitted again, identical to the first time. Downstream sinks are
  idempotent on those outputs, so a batch replayed after a crash - whose first
  attempt may or may not have reached the sinks - is written exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas import FunnelDefinition, NormalizedEvent

__all__ = [
    "DEFAULT_CHANNEL",
    "SEEN_LIMIT",
    "JourneyResult",
    "StageEntry",
    "Transition",
    "UserState",
    "apply_event",
]

SEEN_LIMIT = 128
DEFAULT_CHANNEL = "direct"

#: Table value: funnel name -> funnel state (see :func:`_new_funnel_state`).
UserState = dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StageEntry:
    funnel: str
    stage: str
    stage_index: int
    user_id: str
    ts: int
    channel: str
    event_id: str


@dataclass(frozen=True, slots=True)
class Transition:
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


@dataclass(slots=True)
class JourneyResult:
    duplicate: bool = False
    entries: list[StageEntry] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    channel: str = DEFAULT_CHANNEL


def _new_funnel_state() -> dict[str, Any]:
    # Compact keys: this is stored once per user and funnel.
    #   st: stage -> [ts_ms, event_id, from_stage | None, from_ts_ms | None]
    #   far: index of the furthest stage reached (-1: none yet)
    #   ch: attributed channel; seen: recent event ids; last: ts of last entry
    return {"st": {}, "far": -1, "ch": None, "seen": [], "last": 0}


def apply_event(state: UserState, event: NormalizedEvent, funnel: FunnelDefinition) -> JourneyResult:
    """Apply ``event`` to ``state`` in place and return what it caused.

    ``state`` must be the current value for ``event['user_id']``; the caller
    writes it back to the table after this returns.
    """
    fs = state.get(funnel.name)
    if fs is None:
        fs = state[funnel.name] = _new_funnel_state()
    event_id = event["event_id"]
    stage = event["event_type"]
    index = funnel.index(stage)

    if event_id in fs["seen"]:
        return _replay(fs, event, funnel, index)

    seen: list[str] = fs["seen"]
    seen.append(event_id)
    if len(seen) > SEEN_LIMIT:
        del seen[: len(seen) - SEEN_LIMIT]
    if fs["ch"] is None or (funnel.attribution == "last_touch" and event["channel"]):
        fs["ch"] = event["channel"] or fs["ch"] or DEFAULT_CHANNEL
    result = JourneyResult(channel=fs["ch"])
    if index < 0 or stage in fs["st"]:
        return result

    ts = event["ts"]
    far = fs["far"]
    from_stage: str | None = None
    from_ts: int | None = None
    if index > far >= 0:
        from_stage = funnel.stages[far]
        from_ts = fs["st"][from_stage][0]
    fs["st"][stage] = [ts, event_id, from_stage, from_ts]
    fs["far"] = max(far, index)
    fs["last"] = max(fs["last"], ts)
    _emit(result, fs, funnel, event["user_id"], stage)
    return result


def _replay(
    fs: dict[str, Any], event: NormalizedEvent, funnel: FunnelDefinition, index: int
) -> JourneyResult:
    result = JourneyResult(duplicate=True, channel=fs["ch"] or DEFAULT_CHANNEL)
    stage = event["event_type"]
    recorded = fs["st"].get(stage) if index >= 0 else None
    if recorded is not None and recorded[1] == event["event_id"]:
        _emit(result, fs, funnel, event["user_id"], stage)
    return result


def _emit(
    result: JourneyResult, fs: dict[str, Any], funnel: FunnelDefinition, user_id: str, stage: str
) -> None:
    ts, event_id, from_stage, from_ts = fs["st"][stage]
    index = funnel.index(stage)
    result.entries.append(
        StageEntry(funnel.name, stage, index, user_id, ts, result.channel, event_id)
    )
    if from_stage is not None:
        # Out-of-order event times can put the later stage first: clamp at 0.
        seconds = max(0.0, (ts - from_ts) / 1000.0)
        result.transitions.append(
            Transition(
                funnel=funnel.name,
                from_stage=from_stage,
                to_stage=stage,
                from_index=funnel.index(from_stage),
                to_index=index,
                user_id=user_id,
                from_ts=from_ts,
                ts=ts,
                seconds=seconds,
                channel=result.channel,
                event_id=event_id,
            )
        )
