"""Identity: anonymous ids linked to user ids, and their journeys merged into the person's. Pure.

An event carries a ``user_id``, an ``anonymous_id`` (a cookie or device id)
or both. The person it counts for (``person_id``) is the user id once one is
linked, otherwise the anonymous id (README, "Identity").

Where the decisions are taken (the journey agent, ``streams.agents.journeys``):

* An event with an anonymous id is routed by it, so every event of one
  anonymous id - and the first event that carries it together with a user id,
  the *link* - meets in one partition of the journeys table, in order. The
  table's value for the anonymous id holds the link (:data:`LINK`) next to
  the anonymous journey, so :func:`identify` decides each event there, once,
  in partition order: links in any order relative to the events they explain
  need no coordination between partitions or workers.
* A user id is a person by itself: an event with only a user id goes
  straight to that person's partition.
* At the link, the anonymous journey's rows are retracted (:func:`retract`:
  tombstones with a higher version) and the journey is sent, as a *merge
  record* on ``normalized`` keyed by the user id, to the person's partition,
  which merges it (:func:`merge`). Later events of the anonymous id are
  forwarded there as events with their ``person_id`` set.
* Replays: the link is kept with the event id that made it, and the
  anonymous journey stays in the table next to it. Replaying that event
  (a crash before its batch was acknowledged) retracts and sends the
  journey again - the same one, or one with more stages when the replay
  applied more of the anonymous id's events before the link than the first
  attempt did (they come from five topics). Merging is idempotent (earliest
  entries, united sets), so a merge record seen again is merged again and the
  person's rows are written again; the person remembers the anonymous ids it
  merged (:data:`MERGED`) so that its counts are not counted twice.

Merging (:func:`merge`): one entry per stage, at the earliest time of the
two; transitions recomputed over the merged stages (a transition either
journey had already counted is not counted again); first touch the earliest
of the two (last touch the latest); the seen event ids and purchases united.
A stage both journeys had entered was counted twice in
``funnel_stage_entries_total``: :func:`merge` names those stages, and the
journey agent counts them in ``funnel_stage_entries_merged_total``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from schemas import FunnelDefinition, NormalizedEvent
from streams.funnel.journey import (
    SEEN_LIMIT,
    UserState,
    _dropoff,
    _emit_all,
    _new_funnel_state,
    _reexclude,
    _remeasure_dropoffs,
    _retract_dropoffs,
    _retransition,
    _transition,
    latest_entry,
)
from streams.funnel.outputs import DEFAULT_CHANNEL, JourneyResult, breakdown, new_entry
from streams.funnel.stages import compiled

__all__ = [
    "ANONYMOUS",
    "CONFLICT",
    "FORWARD",
    "LINK",
    "LINKED",
    "LINK_AGAIN",
    "MERGED",
    "Decision",
    "identify",
    "journey_of",
    "link",
    "merge",
    "merged_before",
    "note_conflict",
    "replay_rows",
    "retract",
]

#: In an anonymous id's state: ``[user_id, event_id, ts]`` of the link that counts.
LINK = "@link"
#: In a person's state: the anonymous ids merged into it (replays of a merge are not merged again).
MERGED = "@merged"
#: In an anonymous id's state: event ids of conflicting links already counted.
CONFLICTS = "@conflicts"
#: A person keeps this many merged anonymous ids (devices), the latest ones.
MERGED_LIMIT = 1024

# What identify() decides for an event with an anonymous id.
ANONYMOUS = "anonymous"  # not linked, no user id: the anonymous id is the person
LINKED = "linked"  # the first event carrying both: link, retract, merge, forward
LINK_AGAIN = "link-again"  # that event again (a replay): retract and merge again, forward
FORWARD = "forward"  # linked before: the event counts for the linked user id
CONFLICT = "conflict"  # linked to another user id than the event's: not applied, counted


class Decision(NamedTuple):
    kind: str
    person: str


def identify(state: UserState | None, event: NormalizedEvent) -> Decision:
    """What an event with an anonymous id does, given the anonymous id's state."""
    anonymous = event["anonymous_id"]
    assert anonymous is not None
    user = event["user_id"]
    linked = state.get(LINK) if state else None
    if linked is None:
        if user is None or user == anonymous:
            return Decision(ANONYMOUS, anonymous)
        return Decision(LINKED, user)
    if user is not None and user != linked[0]:
        return Decision(CONFLICT, user)
    return Decision(LINK_AGAIN if event["event_id"] == linked[1] else FORWARD, linked[0])


def link(state: UserState, event: NormalizedEvent, user: str) -> None:
    """Record in the anonymous id's ``state`` that ``event`` linked it to ``user``."""
    state[LINK] = [user, event["event_id"], event["ts"]]


def note_conflict(state: UserState, event_id: str) -> bool:
    """Remember a conflicting link's event; False if it was seen before (a replay: not counted again)."""
    seen: list[str] = state.setdefault(CONFLICTS, [])
    if event_id in seen:
        return False
    seen.append(event_id)
    del seen[: max(0, len(seen) - SEEN_LIMIT)]
    return True


def journey_of(state: UserState, funnels: dict[str, FunnelDefinition]) -> dict[str, dict[str, Any]]:
    """The funnel states of ``state`` (what a merge record carries)."""
    return {name: fs for name, fs in state.items() if name in funnels}


def retract(state: UserState, funnels: dict[str, FunnelDefinition],
            person: str) -> list[tuple[str, JourneyResult]]:
    """Tombstones for every row the anonymous ``person``'s journeys stand for, per funnel.

    Each funnel's version goes up by one and every tombstone carries it, so
    it replaces whatever version the row had. Drop-offs are marked retracted
    in ``state``; the stages and emitted transitions stay (the merge record
    carries them).
    """
    out = []
    for name, fs in journey_of(state, funnels).items():
        info = compiled(funnels[name])
        version = fs["ver"] = max(fs["ver"], 1) + 1
        channel = fs["ch"] or DEFAULT_CHANNEL
        result = JourneyResult(False, [], [], [], channel, "")
        dims = breakdown(fs["dims"])
        for stage, at in fs["st"].items():
            result.entries.append(new_entry(name, stage, info.key(stage), person, at[0], channel, at[1],
                                            dims, False, version, True, fs.get("ex", False)))
        for to, (from_stage, _) in fs["tr"].items():
            if from_stage is not None:
                result.transitions.append(_transition(fs, info, person, to, None, version, channel))
        drops = fs.get("drops", {})
        for stage, (_, dropped_ts, deleted) in list(drops.items()):
            if not deleted:
                drops[stage] = [version, dropped_ts, True]
                result.dropoffs.append(_dropoff(fs, info, person, stage))
        out.append((name, result))
    return out


def merged_before(state: UserState, anonymous: str) -> bool:
    return anonymous in state.get(MERGED, ())


def merge(state: UserState, anonymous: str, journey: dict[str, dict[str, Any]],
          funnels: dict[str, FunnelDefinition], person: str) -> list[tuple[str, JourneyResult, Merged]]:
    """Merge the anonymous id's ``journey`` (funnel states) into the ``person``'s ``state``.

    Returns, per funnel, what changed for the person (entries are never
    ``new``: each journey counted its own) and how to correct the counts
    (:class:`Merged`). Merging a journey again changes nothing it already
    gave; the caller checks :func:`merged_before` not to count twice.
    """
    merged: list[str] = state.setdefault(MERGED, [])
    if anonymous not in merged:
        merged.append(anonymous)
        del merged[: max(0, len(merged) - MERGED_LIMIT)]
    out = []
    for name, theirs in journey.items():
        definition = funnels.get(name)
        if definition is not None:
            fs = state.get(name)
            if fs is None:
                fs = state[name] = _new_funnel_state()
            out.append((name, *_merge_funnel(fs, theirs, definition, person)))
    return out


class Merged(NamedTuple):
    """How a merge corrects a funnel's entry counters.

    ``both``: the stages both journeys had entered (each counted one entry:
    ``funnel_stage_entries_merged_total`` takes one back). ``recount``: stage
    -> what the entries still need after that, when an exclusion mark
    differed between the journeys or changed with the merge: +n counts n
    more entries, -n counts n excluded ones (so entries - merged - excluded
    is again the persons in the stage, not excluded).
    """

    both: list[str]
    recount: dict[str, int]


def _recount(mine: Collection[str], mine_excluded: bool, theirs: Collection[str], theirs_excluded: bool,
             both: Collection[str], merged: Collection[str], now_excluded: bool) -> dict[str, int]:
    """:attr:`Merged.recount`: per stage, counted after minus counted before (net of ``both``)."""
    out = {}
    for stage in merged:
        before = ((stage in mine and not mine_excluded) + (stage in theirs and not theirs_excluded)
                  - (stage in both))
        change = (not now_excluded) - before
        if change:
            out[stage] = change
    return out


def _merge_funnel(fs: dict[str, Any], theirs: dict[str, Any], definition: FunnelDefinition,
                  person: str) -> tuple[JourneyResult, Merged]:
    info = compiled(definition)
    own, own_excluded = set(fs["st"]), fs.get("ex", False)  # what the person counted before
    fs["ver"] = max(fs["ver"], theirs["ver"])
    reattributed = _merge_attribution(fs, theirs, info.last_touch)
    dims = fs["dims"]
    for i in (1, 2, 3):  # product, region, manager: the person's own latest, else theirs
        dims[i] = dims[i] or theirs["dims"][i]
    known = set(fs["seen"])
    fs["seen"] = ([e for e in theirs["seen"] if e not in known] + fs["seen"])[-SEEN_LIMIT:]
    bought = set(fs["buys"])
    fs["buys"] = ([e for e in theirs["buys"] if e not in bought] + fs["buys"])[-SEEN_LIMIT:]
    channel = fs["ch"] or DEFAULT_CHANNEL
    result = JourneyResult(False, [], [], [], channel, "")
    reached: dict[str, list[Any]] = fs["st"]
    both: list[str] = []
    moved: list[tuple[int, int]] = []  # (stage index, entry time) of entries new or earlier here
    earlier: list[str] = []  # the person's stages whose entry moves earlier
    for stage, at in sorted(theirs["st"].items(), key=lambda item: item[1][0]):
        mine = reached.get(stage)
        if mine is not None:
            both.append(stage)
            if at[0] >= mine[0]:
                continue
            earlier.append(stage)
            fs["ver"] += 1
            reached[stage] = [at[0], at[1], fs["ver"]]
        else:
            reached[stage] = [at[0], at[1]]
        moved.append((info.key(stage), at[0]))
    fs["last"] = latest_entry(reached)  # an entry of the person's may be earlier now
    counted = {to: tr for to, tr in theirs["tr"].items() if tr[0] is not None}
    _retransition(result, fs, info, person, channel, counted, earlier)
    if earlier and fs.get("drops"):
        _remeasure_dropoffs(result, fs, info, person, earlier)
    for index, ts in moved:
        if fs.get("drops"):
            _retract_dropoffs(result, fs, info, person, index, ts)
    if theirs.get("xt"):  # the other journey's exclusion events are the person's
        fs["xt"] = sorted({*fs.get("xt", ()), *theirs["xt"]})[-SEEN_LIMIT:]
    remarked = "xt" in fs and _reexclude(result, fs, info, person)
    counts = Merged(both, _recount(own, own_excluded, theirs["st"], theirs.get("ex", False), both,
                                   reached, fs.get("ex", False)))
    if remarked:
        result.excluded = 0  # counted by ``recount`` instead
        return result, counts  # every row again, under the new mark
    if reattributed:  # every row under the new channel
        result.entries.clear()
        _emit_all(result, fs, info, person, skip_transitions={t.to_stage for t in result.transitions})
    else:
        dims_now = breakdown(dims)
        for index, _ in moved:
            stage = definition.names[index]
            at = reached[stage]
            result.entries.append(new_entry(info.name, stage, index, person, at[0], channel, at[1],
                                            dims_now, False, at[2] if len(at) > 2 else 1, False,
                                            fs.get("ex", False)))
    return result, counts


def _merge_attribution(fs: dict[str, Any], theirs: dict[str, Any], last_touch: bool) -> bool:
    """Take the other journey's channel and campaign if its touch wins; whether it changed them."""
    if theirs["ch"] is None:
        return False
    if fs["ch"] is not None:
        mine, other = fs.get("cht", 0), theirs.get("cht", 0)
        if (other <= mine) if last_touch else (other >= mine):
            return False
    before = (fs["ch"], fs["dims"][0])
    fs["ch"], fs["cht"], fs["dims"][0] = theirs["ch"], theirs.get("cht", 0), theirs["dims"][0]
    return before[0] is not None and before != (fs["ch"], fs["dims"][0])


def replay_rows(state: UserState, funnels: dict[str, FunnelDefinition],
                person: str) -> list[tuple[str, JourneyResult]]:
    """The person's current rows in every funnel (a merge record seen again: written again)."""
    out = []
    for name, fs in journey_of(state, funnels).items():
        result = JourneyResult(True, [], [], [], fs["ch"] or DEFAULT_CHANNEL, "")
        _emit_all(result, fs, compiled(funnels[name]), person)
        out.append((name, result))
    return out
