"""Per-user journey logic: pure functions over a JSON-serializable state.

The Faust journey agent keeps one :data:`UserState` per user id in a table and
calls :func:`apply_event` for each event. Everything here is deterministic:
the same state and event always give the same outputs, which is what makes
at-least-once processing safe (see "Replays" below).

Rules (the README's "Journey rules" says the same):

* A user *enters* a stage at its earliest matching event, in event time
  (:mod:`streams.funnel.stages` says which stages an event matches). One that
  arrives after a later one moves the entry to it (a higher version).
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

from collections.abc import Collection
from dataclasses import replace
from typing import Any

from schemas import FunnelDefinition, NormalizedEvent
from streams.funnel.outputs import (
    DEFAULT_CHANNEL,
    Breakdown,
    Dropoff,
    JourneyResult,
    Transition,
    breakdown,
    new_breakdown,
    new_dropoff,
    new_entry,
    new_transition,
)
from streams.funnel.stages import CompiledFunnel, compiled

__all__ = [
    "SEEN_LIMIT",
    "UserState",
    "apply_event",
    "expire_window",
    "furthest",
    "latest_entry",
    "window_ms",
]

SEEN_LIMIT = 128

#: Table value: funnel name -> funnel state (see :func:`_new_funnel_state`); and the
#: identity keys of :mod:`streams.funnel.identity` (``@link``, ``@merged``), which no funnel name matches.
UserState = dict[str, Any]


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


# -- speed ---------------------------------------------------------------------------------
# apply_event runs once per event and funnel on the worker's hot path: what it
# looks up about a funnel is computed once (streams.funnel.stages), and its
# records are built by the fast constructors of streams.funnel.outputs.

_Funnel = CompiledFunnel
_funnel = compiled


# -- the journey -----------------------------------------------------------------------------


def apply_event(state: UserState, event: NormalizedEvent, funnel: FunnelDefinition) -> JourneyResult:
    """Apply ``event`` to ``state`` in place and return what it caused.

    ``state`` must be the current value for ``event['person_id']``, the
    person the event counts for (set by then: see :mod:`streams.funnel.identity`);
    the caller writes it back to the table after this returns.
    """
    info = _funnel(funnel)
    name = info.name
    fs = state.get(name)
    matched = info.matches(event)
    excluding = bool(info.excludes) and info.excludes_person(event)
    if fs is None:
        if len(matched) < 2 and not excluding:
            return _first_event(state, info, event, matched)
        fs = state[name] = _new_funnel_state()
    event_id = event["event_id"]
    seen: list[str] = fs["seen"]
    if event_id in seen:
        return _replayed(fs, info, event_id, event["person_id"])  # type: ignore[arg-type]

    seen.append(event_id)
    if len(seen) > SEEN_LIMIT:
        del seen[: len(seen) - SEEN_LIMIT]
    ts = event["ts"]
    # Attribution: the channel and campaign; reattributed if an earlier one changed.
    reattributed = False
    channel = fs["ch"]
    if channel is None:
        channel = fs["ch"] = event["channel"] or DEFAULT_CHANNEL
        fs["cht"] = ts
        fs["dims"][0] = event["campaign"] or ""
    elif info.last_touch:
        # Each entry keeps the channel that was last when it happened: nothing re-emitted.
        touch = event["channel"]
        if touch and ts >= fs.get("cht", 0):
            channel = fs["ch"] = touch
            fs["cht"] = ts
    elif ts < fs.get("cht", ts):  # first touch: only an earlier event replaces it
        before = (channel, fs["dims"][0])
        channel = fs["ch"] = event["channel"] or DEFAULT_CHANNEL
        fs["cht"] = ts
        fs["dims"][0] = event["campaign"] or ""
        reattributed = (channel, fs["dims"][0]) != before
    # Product, region and manager: the latest values the user's events named.
    dims: list[str] = fs["dims"]
    named = event["product"]
    if named:
        dims[1] = named
    named = event["region"]
    if named:
        dims[2] = named
    named = event["manager"]
    if named:
        dims[3] = named

    customer = ""
    if event["event_type"] == "purchase":
        buys: list[str] = fs["buys"]
        buys.append(event_id)
        del buys[: max(0, len(buys) - SEEN_LIMIT)]
        customer = _customer(fs, event_id)
    result = JourneyResult(False, [], [], [], channel, customer)
    user: str = event["person_id"]  # type: ignore[assignment]  # set by then
    reached: dict[str, list[Any]] = fs["st"]
    if excluding:
        times: list[int] = fs.setdefault("xt", [])
        times.append(ts)
        del times[: max(0, len(times) - SEEN_LIMIT)]
    entered = []  # stages this event enters, or enters earlier than the event that did
    for stage, stage_index in matched:
        at = reached.get(stage)
        if at is None or ts < at[0]:
            entered.append((stage, stage_index))
    if not entered:
        if excluding and _reexclude(result, fs, info, user):
            return result  # every row again, under the new mark and channel
        if reattributed:
            _emit_all(result, fs, info, user)
        return result

    excluded = fs.get("ex", False)
    dims_now = breakdown(dims)
    moved = []  # stages whose entry moves earlier: their transitions move with them
    for stage, stage_index in entered:
        if stage in reached:  # an earlier event of the stage, arrived late: the entry moves to it
            moved.append(stage)
            version = fs["ver"] = fs["ver"] + 1
            reached[stage] = [ts, event_id, version]
            result.entries.append(new_entry(name, stage, stage_index, user, ts, channel, event_id,
                                            dims_now, False, version, False, excluded))
            continue
        reached[stage] = [ts, event_id]
        result.entries.append(new_entry(name, stage, stage_index, user, ts, channel, event_id, dims_now,
                                        True, 1, False, excluded))
    if moved:  # the latest entry may be earlier now (stalled leads measure from it)
        fs["last"] = latest_entry(reached)
    elif ts > fs["last"]:  # fs["last"] = max(fs["last"], ts)
        fs["last"] = ts
    # The transitions the walk wants that differ from the emitted ones (new,
    # moved or retracted) get the next versions, in funnel order.
    _retransition(result, fs, info, user, channel, moved=moved)
    if fs.get("drops"):
        if moved:
            _remeasure_dropoffs(result, fs, info, user, moved)
        _retract_dropoffs(result, fs, info, user, entered[-1][1], ts)
    if "xt" in fs and _reexclude(result, fs, info, user, [e.stage for e in result.entries if e.new]):
        return result
    if reattributed:  # everything else the user has, under the new channel
        changed = {t.to_stage for t in result.transitions}
        _emit_all(result, fs, info, user, skip_entries={stage for stage, _ in entered},
                  skip_transitions=changed)
    return result


def _reexclude(result: JourneyResult, fs: dict[str, Any], info: _Funnel, user: str,
               fresh: Collection[str] = ()) -> bool:
    """Mark or unmark the person as excluded if that changed; whether it did.

    Excluded: an exclusion event between the person's first entry and their
    entry of the last stage (any time after the first entry while they have
    not entered it). A change re-emits every row under a higher version, with
    ``result.excluded`` +1 (now excluded) or -1 (no longer). The entries of
    ``fresh`` stages (entered by the event at hand, never counted) stay ``new``,
    and the transitions ``result`` had as ``first`` stay ``first``.
    """
    reached: dict[str, list[Any]] = fs["st"]
    now = False
    if reached and fs.get("xt"):
        first = min(at[0] for at in reached.values())
        last = reached.get(info.last)
        end = last[0] if last is not None else None
        now = any(first <= t and (end is None or t <= end) for t in fs["xt"])
    if now == fs.get("ex", False):
        return False
    fs["ex"] = now
    version = fs["ver"] = fs["ver"] + 1
    for stage, at in reached.items():
        reached[stage] = [at[0], at[1], version]
    emitted: dict[str, list[Any]] = fs["tr"]
    for to, (from_stage, _) in emitted.items():
        emitted[to] = [from_stage, version]
    for stage, (_, dropped_ts, deleted) in fs.get("drops", {}).items():
        fs["drops"][stage] = [version, dropped_ts, deleted]
    firsts = {t.to_stage for t in result.transitions if t.first}
    result.entries.clear()
    result.transitions.clear()
    result.dropoffs.clear()
    result.excluded = 1 if now else -1
    _emit_all(result, fs, info, user)
    if fresh:
        result.entries[:] = [replace(e, new=True) if e.stage in fresh else e for e in result.entries]
    if firsts:
        result.transitions[:] = [replace(t, first=True) if t.to_stage in firsts else t
                                 for t in result.transitions]
    return True


def _retransition(result: JourneyResult, fs: dict[str, Any], info: _Funnel, user: str, channel: str,
                  counted: dict[str, Any] | None = None, moved: Collection[str] = ()) -> None:
    """The transitions the walk over ``fs``'s stages wants that differ from the emitted ones.

    New, moved or retracted ones get the next versions, in funnel order; one
    is ``first`` (a new conversion, counted) when neither ``fs`` nor
    ``counted`` (the emitted transitions of a journey merged into it) has one
    into its stage. A transition from or to a stage of ``moved`` (whose entry
    moved to an earlier time) is emitted again even with the same stages: its
    times and duration changed.
    """
    desired = _walk(fs["st"], info.index, info.limits)
    emitted: dict[str, list[Any]] = fs["tr"]
    changes: list[tuple[str, str | None, list[Any] | None]] = []
    kept = 0  # emitted ones the walk still wants
    for to, want in desired.items():
        have = emitted.get(to)
        if have is None:
            changes.append((to, want, None))
        else:
            kept += 1
            if have[0] != want or (moved and (to in moved or want in moved)):
                changes.append((to, want, have))
    if kept != len(emitted):  # some emitted ones are no longer wanted: retract them
        for to, have in emitted.items():
            if to not in desired and (have is None or have[0] is not None):
                changes.append((to, None, have))
    if changes:
        if len(changes) > 1:  # in funnel order; stages it no longer has in set order, as ever
            order = {to: n for n, to in enumerate(sorted(desired.keys() | emitted.keys(), key=info.key))}
            changes.sort(key=lambda change: order[change[0]])
        transitions = result.transitions
        for to, from_stage, had in changes:
            version = fs["ver"] = fs["ver"] + 1
            emitted[to] = [from_stage, version]
            first = had is None and (counted is None or to not in counted)
            transitions.append(_transition(fs, info, user, to, from_stage, version, channel, first))


def _first_event(state: UserState, info: _Funnel, event: NormalizedEvent,
                 matched: tuple[tuple[str, int], ...]) -> JourneyResult:
    """:func:`apply_event` for the user's first event in the funnel (most of realistic traffic).

    Builds the state :func:`apply_event` would leave on :func:`_new_funnel_state`
    in one go, keys in the same order: attributed to this event, one stage at
    most (``matched``), so no transition yet.
    """
    event_id, ts = event["event_id"], event["ts"]
    channel = event["channel"] or DEFAULT_CHANNEL
    dims = [event["campaign"] or "", event["product"] or "", event["region"] or "", event["manager"] or ""]
    purchase = event["event_type"] == "purchase"
    entered = bool(matched)
    stage, stage_index = matched[0] if entered else ("", -1)
    state[info.name] = {
        "st": {stage: [ts, event_id]} if entered else {}, "tr": {}, "ver": 0, "ch": channel,
        "dims": dims, "buys": [event_id] if purchase else [], "drops": {}, "seen": [event_id],
        "last": ts if entered and ts > 0 else 0, "cht": ts,
    }
    result = JourneyResult(False, [], [], [], channel, "new" if purchase else "")
    if entered:
        result.entries.append(new_entry(info.name, stage, stage_index, event["person_id"], ts, channel,
                                        event_id, new_breakdown(*dims), True, 1, False, False))
    return result


def latest_entry(reached: dict[str, list[Any]]) -> int:
    """A funnel state's ``last``: its latest stage entry time (0 for none, or none after 1970)."""
    return max(0, max((at[0] for at in reached.values()), default=0))


def furthest(state: UserState, funnel: FunnelDefinition) -> tuple[str, int] | None:
    """The user's furthest stage in ``funnel`` and when they entered it."""
    fs = state.get(funnel.name)
    if not fs or not fs["st"]:
        return None
    reached: dict[str, list[Any]] = fs["st"]
    if len(reached) == 1:  # most users: one stage so far
        for stage, at in reached.items():
            return stage, at[0]
    index = _funnel(funnel).index
    stage, best = "", -2
    for candidate in reached:  # the first of the furthest, as max() gives
        position = index.get(candidate, -1)
        if position > best:
            stage, best = candidate, position
    return stage, reached[stage][0]


def window_ms(funnel: FunnelDefinition) -> int:
    return round(funnel.conversion_window_days * 86_400_000)


def expire_window(state: UserState, funnel: FunnelDefinition, user: str, stage: str,
                  entered: int) -> Dropoff | None:
    """The conversion window after entering ``stage`` at ``entered`` has ended.

    Returns the drop-off if the user is still there (and not already dropped
    there, and ``stage`` is not the last one); updates ``state``.
    """
    if furthest(state, funnel) != (stage, entered) or stage == _funnel(funnel).last:
        return None
    fs = state[funnel.name]
    drops = fs.setdefault("drops", {})
    if stage in drops and not drops[stage][2]:
        return None
    first = stage not in drops
    fs["ver"] += 1
    drops[stage] = [fs["ver"], entered + window_ms(funnel), False]
    return _dropoff(fs, _funnel(funnel), user, stage, first)


def _retract_dropoffs(result: JourneyResult, fs: dict[str, Any], info: _Funnel, user: str,
                      index: int, ts: int) -> None:
    """A stage beyond a drop-off, entered before that window ended: not lost after all."""
    for stage, (_, dropped_ts, deleted) in list(fs.get("drops", {}).items()):
        if not deleted and info.index.get(stage, -1) < index and ts <= dropped_ts:
            fs["ver"] += 1
            fs["drops"][stage] = [fs["ver"], dropped_ts, True]
            result.dropoffs.append(_dropoff(fs, info, user, stage))


def _remeasure_dropoffs(result: JourneyResult, fs: dict[str, Any], info: _Funnel, user: str,
                        moved: Collection[str]) -> None:
    """Drop-offs at stages whose entry moved earlier: their window ends that much earlier.

    ``dropped_at`` is ``entered_at`` + the window; a live drop-off is written
    again with the new times, a retracted one only keeps them.
    """
    drops: dict[str, list[Any]] = fs["drops"]
    window = window_ms(info.definition)
    for stage in moved:
        drop = drops.get(stage)
        if drop is None:
            continue
        version, _, deleted = drop
        if not deleted:
            version = fs["ver"] = fs["ver"] + 1
        drops[stage] = [version, fs["st"][stage][0] + window, deleted]
        if not deleted:
            result.dropoffs.append(_dropoff(fs, info, user, stage))


def _dropoff(fs: dict[str, Any], info: _Funnel, user: str, stage: str, first: bool = False) -> Dropoff:
    version, dropped_ts, deleted = fs["drops"][stage]
    return new_dropoff(info.name, stage, info.index.get(stage, -1), user, fs["st"][stage][0],
                       dropped_ts, fs["ch"] or DEFAULT_CHANNEL, version, deleted, first, fs.get("ex", False))


def _customer(fs: dict[str, Any], event_id: str) -> str:
    buys = fs.get("buys", [])
    if event_id not in buys:
        return ""
    return "new" if buys.index(event_id) == 0 else "returning"


def _walk(reached: dict[str, list[Any]], index: dict[str, int], limits: dict[str, int]) -> dict[str, str]:
    """to_stage -> from_stage for the stages ``reached``, walked in event-time order.

    Stages are ordered by (entry time, funnel position). ``reached`` keeps
    arrival order, which is that order unless events arrived out of event
    time: checked on the way, and only then sorted (:func:`_walk_sorted`).
    A stage with a limit (``within_days``, in ``limits``) entered later than
    that after the stage it comes from is reached, but is no transition.
    """
    stages = iter(reached.items())
    first = next(stages, None)
    if first is None:  # a merge of journeys the funnel read events of, none of which entered a stage
        return {}
    furthest, entered = first
    last_ts = entered[0]
    last_index = furthest_index = index.get(furthest, -1)
    transitions: dict[str, str] = {}
    for stage, entered in stages:
        ts = entered[0]
        position = index.get(stage, -1)
        if ts < last_ts or (ts == last_ts and position < last_index):
            return _walk_sorted(reached, index, limits)
        if position > furthest_index:
            if not limits or _within(reached, limits, furthest, stage):
                transitions[stage] = furthest
            furthest, furthest_index = stage, position
        last_ts, last_index = ts, position
    return transitions


def _walk_sorted(reached: dict[str, list[Any]], index: dict[str, int],
                 limits: dict[str, int]) -> dict[str, str]:
    """:func:`_walk` for stages that arrived out of event-time order."""
    order = sorted(reached, key=lambda s: (reached[s][0], index.get(s, -1)))
    transitions: dict[str, str] = {}
    furthest = order[0]
    for stage in order[1:]:
        if index.get(stage, -1) > index.get(furthest, -1):
            if not limits or _within(reached, limits, furthest, stage):
                transitions[stage] = furthest
            furthest = stage
    return transitions


def _within(reached: dict[str, list[Any]], limits: dict[str, int], from_stage: str, to: str) -> bool:
    """Whether ``to`` was entered within its limit after ``from_stage`` (no limit: yes)."""
    limit = limits.get(to)
    return limit is None or reached[to][0] - reached[from_stage][0] <= limit


def _transition(
    fs: dict[str, Any], info: _Funnel, user: str, to: str, from_stage: str | None,
    version: int, channel: str, first: bool = False,
) -> Transition:
    reached = fs["st"]
    at = reached[to]  # [ts, event_id], and a version once moved
    ts, event_id = at[0], at[1]
    index = info.index
    excluded = fs.get("ex", False)
    if from_stage is None:  # retracted: a tombstone for (funnel, to, user)
        return new_transition(info.name, "", to, 0, index.get(to, -1), user, ts, ts, 0.0, channel,
                              event_id, version, True, fs["dims"][0], False, excluded)
    from_ts = reached[from_stage][0]
    seconds = (ts - from_ts) / 1000.0
    return new_transition(
        info.name, from_stage, to, index.get(from_stage, -1), index.get(to, -1), user, from_ts, ts,
        seconds if seconds > 0.0 else 0.0, channel, event_id, version, False, fs["dims"][0], first,
        excluded,
    )


def _replayed(fs: dict[str, Any], info: _Funnel, event_id: str, user: str) -> JourneyResult:
    """A duplicate: not applied; the user's current rows again (see "Replays")."""
    result = JourneyResult(True, [], [], [], fs["ch"] or DEFAULT_CHANNEL, _customer(fs, event_id))
    _emit_all(result, fs, info, user)
    return result


def _emit_all(
    result: JourneyResult, fs: dict[str, Any], info: _Funnel, user: str,
    skip_entries: Collection[str] = (), skip_transitions: Collection[str] = (),
) -> None:
    """Everything the user's state stands for, as it stands (replays, re-attribution)."""
    name, key, channel = info.name, info.key, result.channel
    reached: dict[str, list[Any]] = fs["st"]
    dims: Breakdown | None = None  # one for all: they are frozen
    excluded = fs.get("ex", False)
    for stage in sorted(reached, key=key):
        if stage not in skip_entries:
            at = reached[stage]  # [ts, event_id], and the version once a merge moved it
            if dims is None:
                dims = breakdown(fs["dims"])
            result.entries.append(new_entry(name, stage, key(stage), user, at[0], channel, at[1], dims,
                                            False, at[2] if len(at) > 2 else 1, False, excluded))
    emitted: dict[str, list[Any]] = fs["tr"]
    for to in sorted(emitted, key=key):
        if to in skip_transitions:
            continue
        from_stage, version = emitted[to]
        result.transitions.append(_transition(fs, info, user, to, from_stage, version, channel))
    for stage in fs.get("drops", {}):
        result.dropoffs.append(_dropoff(fs, info, user, stage))
