"""The journey agent: normalized events -> journeys, rows, window memberships, drop-offs, stalls.

Its batch body (:meth:`JourneyAgent.batch`) reads `normalized`; the ingest
agent hands it the events that skip that topic (:meth:`JourneyAgent.apply`).
Per batch, each changed user is read from the table once and written once;
the rows of every ClickHouse table the batch touches are added to the sink
with no await in between, so a batch's rows are its own.

Identity (:mod:`streams.funnel.identity`): an event with an anonymous id
arrives in that id's partition and is decided there - applied under the
anonymous id, or forwarded on `normalized` to the person it belongs to; a
link also retracts the anonymous journey's rows and forwards the journey as a
merge record, which the person's partition merges.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, cast

import orjson
from faust import Stream
from faust.types import TP, EventT

from schemas import FunnelDefinition, NormalizedEvent
from sinks import ClickHouseSink, FunnelMetrics, Tally
from streams.agents.runner import Finish, batch_token
from streams.faust_adapt.envelopes import records_of
from streams.faust_adapt.table import ChangelogRecord, JourneyTable, route_table_to
from streams.funnel import identity
from streams.funnel.journey import UserState, apply_event, expire_window, furthest, window_ms
from streams.funnel.lifecycle import TEMPERATURES, StallTracker, WindowDeadlines
from streams.funnel.outputs import JourneyResult
from streams.funnel.routing import route
from streams.funnel.rows import dropoff_row, entry_row, event_row, transition_row
from streams.funnel.windows import Watermarks, WindowAggregator
from streams.topics import partition_of

__all__ = ["JourneyAgent"]


def _batch_order(triple: tuple[Any, Any, Any]) -> int:
    """Sort key of a batch: merge records first (in arrival order), then events by event time."""
    e = triple[2]
    return -1 if "merge" in e else e["ts"]


class _Identified:
    """Where identity decisions put their rows, window memberships, records and counts (one batch)."""

    __slots__ = ("dropoffs", "entries", "forwards", "links", "partitions", "tally", "transitions", "windows")

    def __init__(self, entries: list[tuple[Any, ...]], transitions: list[tuple[Any, ...]],
                 dropoffs: list[tuple[Any, ...]], windows: WindowAggregator, tally: Tally,
                 partitions: int) -> None:
        self.entries, self.transitions, self.dropoffs = entries, transitions, dropoffs
        self.windows, self.tally, self.partitions = windows, tally, partitions
        self.forwards: list[ChangelogRecord] = []  # to `normalized`: events to their person, merges
        self.links: list[tuple[Any, ...]] = []  # identities rows

    def forward(self, person: str, value: Any) -> None:
        """Send ``value`` (an event with its person set, a merge record) to the person's partition."""
        key = person.encode()
        self.forwards.append((partition_of(key, self.partitions), key, orjson.dumps(value)))

    def add(self, result: JourneyResult) -> None:
        """The rows and window memberships of a retraction, a merge or a replayed merge."""
        for entry in result.entries:
            self.entries.append(entry_row(entry))
            self.windows.add_entry(entry)
        for tr in result.transitions:
            self.transitions.append(transition_row(tr))
            self.windows.add_transition(tr)
        self.dropoffs.extend([dropoff_row(d) for d in result.dropoffs])


class JourneyAgent:
    """Keeps the journeys of the users whose table partitions this worker holds.

    Arguments:
        table: the journeys table (person id or anonymous id bytes -> :data:`UserState`).
        sink: where rows of events from `normalized` go.
        homes: per partition, the `normalized` partition its watermark and deadlines are kept under.
        send: produces (partition, key, value) records to `normalized` (events forwarded
            to their person, merge records); returns their batches' futures.
    """

    def __init__(
        self,
        table: JourneyTable,
        sink: ClickHouseSink,
        metrics: FunnelMetrics,
        funnels: dict[str, FunnelDefinition],
        routes: dict[str, list[FunnelDefinition]],
        homes: Sequence[TP],
        *,
        window_seconds: int,
        allowed_lateness_seconds: float,
        stalls: StallTracker,
        send: Callable[[Sequence[ChangelogRecord]], Awaitable[list[asyncio.Future[Any]]]],
    ) -> None:
        self.table, self.sink, self.metrics, self.send = table, sink, metrics, send
        self.funnels, self.routes, self.homes = funnels, routes, homes
        self.window_seconds = window_seconds
        self.watermarks = Watermarks(allowed_lateness_seconds)
        self.deadlines = WindowDeadlines()
        self.stalls = stalls
        self.processed = 0  # events applied since the status timer last took the count
        self.last_event_ms: int | None = None  # newest event time processed

    async def batch(self, stream: Stream, events: Sequence[EventT]) -> Finish:
        loads = orjson.loads
        decoded = [(event, record, loads(record.value or b"{}"))
                   for event in events for record in records_of(event)]
        return await self.apply(decoded, self.sink, batch_token("journey", events))

    async def apply(self, batch: Sequence[tuple[EventT, Any, NormalizedEvent]], sink: ClickHouseSink,
                    token: str) -> Finish:
        """Apply a batch of events to the users' journeys and produce their changelog records.

        Returns what finishes the batch: its rows written, its changelog
        records acknowledged by the broker.

        ``batch`` holds (envelope event, record, normalized event) triples:
        the envelope routes the table to the record's partition.
        """
        m, tally = self.metrics, Tally()
        now = time.time()
        dirty: dict[bytes, tuple[UserState, EventT]] = {}
        # Window memberships of this batch's entries and transitions, written
        # with its other rows (stage_counts): no topic and agent in between.
        windows = WindowAggregator(self.window_seconds)
        # (user, funnel) -> partition, for the users whose furthest stage or
        # last progress changed (only a new stage entry changes them)
        touched: dict[tuple[bytes, str], Any] = {}
        anchors: dict[Any, EventT] = {}  # partition -> an event of it (routes table access)
        # One user's events come from five topics, so ingest can pass them on
        # out of event-time order; applying each batch in event-time order
        # repairs that whenever they meet in one batch (stable sort: ties keep
        # arrival order). Merge records come first: an event of the anonymous
        # id forwarded after the link (behind its merge record on the topic)
        # but older than it must find the event ids the anonymous journey saw,
        # or a producer's retry of one of them is applied again.
        decoded = sorted(batch, key=_batch_order)
        homes, routes, journeys, observe = self.homes, self.routes, self.table, self.watermarks.observe
        # This batch's rows, in order, handed to the sink after the loop.
        events: list[tuple[Any, ...]] = []
        entries: list[tuple[Any, ...]] = []
        transitions: list[tuple[Any, ...]] = []
        dropoffs: list[tuple[Any, ...]] = []
        routed: EventT | None = None  # the event the table is routed by now
        by_event = journeys.routes_by_event
        identified = _Identified(entries, transitions, dropoffs, windows, tally, len(homes))
        for event, msg, e in decoded:
            tp = homes[msg.partition]
            person = e["person_id"]
            if person is None:  # an anonymous id's event, or a merge record: decided here
                if event is not routed and by_event:
                    route_table_to(event)
                    routed = event
                anchors[tp] = event
                person = self._identify(event, e, dirty, touched, tp, identified)
                if person is None:
                    continue
            key = person.encode()
            targets = self.targets(e) if e["funnel"] else routes.get(e["event_type"])
            if not targets:  # valid, but no configured funnel has this stage: kept
                events.append(event_row(e, "", "", ""))
                continue
            cached = dirty.get(key)
            if cached is None:
                # Faust's RocksDB store reads (and writes) the partition of the
                # "current event": point it at this message before touching the table.
                if event is not routed and by_event:
                    route_table_to(event)
                    routed = event
                state: UserState = journeys.get(key) or {}
            else:
                state = cached[0]
            dirty[key] = (state, event)
            late = observe(tp, e["ts"])
            anchors[tp] = event
            applied = False  # in a funnel, not as a duplicate: one event-lag sample however many
            for funnel in targets:
                result = apply_event(state, e, funnel)
                if result.entries:
                    touched[key, funnel.name] = tp
                    for entry in result.entries:
                        entries.append(entry_row(entry))
                        windows.add_entry(entry)
                if result.dropoffs:
                    dropoffs.extend([dropoff_row(d) for d in result.dropoffs])
                events.append(event_row(e, funnel.name, result.channel, result.customer))
                for tr in result.transitions:
                    transitions.append(transition_row(tr))
                    windows.add_transition(tr)
                if result.duplicate:
                    tally.inc(m.child(m.duplicate_events, funnel.name))
                    continue
                applied = True
                if late:
                    tally.inc(m.child(m.late_events, funnel.name))
                self._count(tally, funnel.name, e, result)
            if applied:
                tally.observe(m.event_lag, max(0.0, now - e["ts"] / 1000.0))
        for table, rows_of in (("dropoffs", dropoffs), ("events", events), ("stage_entries", entries),
                               ("transitions", transitions), ("identities", identified.links)):
            if rows_of:
                sink.extend(table, rows_of)
        # Follow the users who changed first, so a window that already ended
        # (old data, a backlog) expires in this same batch.
        self._track(touched, dirty, anchors, int(now * 1000))
        self._expire_windows(sink, tally, anchors, dirty, int(now * 1000))
        # Counted as the journeys changed, before any await (as one inc per
        # update would be): a batch handled again finds its events applied.
        tally.apply()
        # One table write (and changelog record) per user per batch. Faust
        # routes it by the "current event", so point it at that user's event.
        routed = None
        put = journeys.put
        for key, (state, event) in dirty.items():
            if event is not routed and by_event:
                route_table_to(event)
                routed = event
            put(key, state, event)
        changelog = self.table.take_changelog()  # no await since the writes: ours only
        sink.extend("stage_counts", list(windows.rows()))
        rows = sink.take()  # no await since this batch's rows were added: its own only
        delivered = await self.table.produce_changelog(changelog)
        if identified.forwards:
            delivered += await self.send(identified.forwards)
        self.processed += len(decoded)
        if decoded:  # sorted by event time
            self.last_event_ms = max(self.last_event_ms or 0, decoded[-1][2]["ts"])

        async def finish() -> None:
            # The table first: ClickHouse must never hold a row version the
            # changelog does not know. Rows written before a crash lost the
            # batch's changelog would be ahead of the state a restart gets
            # back, and the replay could give the same version to other
            # content (a replay may apply a person's events in another order).
            await asyncio.gather(*delivered)
            await sink.write_taken(rows, token)

        return finish

    def _identify(self, event: EventT, e: NormalizedEvent, dirty: dict[bytes, tuple[UserState, EventT]],
                  touched: dict[tuple[bytes, str], Any], tp: Any, out: _Identified) -> str | None:
        """Decide an event with an anonymous id, or merge a merge record, in its partition.

        Returns the person to apply the event to here, or None when it was
        forwarded (or was a merge record). The table is routed to ``event``.
        """
        if "merge" in e:
            self._merge(event, cast(dict[str, Any], e), dirty, touched, tp, out)
            return None
        anonymous = cast(str, e["anonymous_id"])
        key = anonymous.encode()
        cached = dirty.get(key)
        state = cached[0] if cached is not None else self.table.get(key)
        kind, person = identity.identify(state, e)
        if kind == identity.ANONYMOUS:
            if cached is None and state is not None:
                dirty[key] = (state, event)  # read once: the journey below finds it here
            e["person_id"] = anonymous
            return anonymous
        m = self.metrics
        state = state if state is not None else {}
        if kind == identity.CONFLICT:
            if identity.note_conflict(state, e["event_id"]):
                out.tally.inc(m.identity_conflicts)
            dirty[key] = (state, event)
        elif kind in (identity.LINKED, identity.LINK_AGAIN):
            if kind == identity.LINKED:
                identity.link(state, e, person)
                out.tally.inc(m.identity_links)
            dirty[key] = (state, event)
            self._retract(state, anonymous, key, out)
            journey = identity.journey_of(state, self.funnels)
            if journey:
                out.forward(person, {"merge": anonymous, "person_id": None, "user_id": person,
                                     "ts": e["ts"], "event_id": e["event_id"], "journey": journey})
        if kind != identity.FORWARD:
            out.links.append((anonymous, e["user_id"], e["ts"], e["source"], e["event_id"],
                              "conflict" if kind == identity.CONFLICT else "linked"))
        e["person_id"] = person
        out.forward(person, e)
        return None

    def _retract(self, state: UserState, anonymous: str, key: bytes, out: _Identified) -> None:
        """The anonymous journey's rows as tombstones; it is no longer followed for windows and stalls."""
        now_ms = int(time.time() * 1000)
        for name, result in identity.retract(state, self.funnels, anonymous):
            out.add(result)
            self.stalls.update(key, name, None, 0, now_ms)

    def _merge(self, event: EventT, record: dict[str, Any], dirty: dict[bytes, tuple[UserState, EventT]],
               touched: dict[tuple[bytes, str], Any], tp: Any, out: _Identified) -> None:
        """A merge record: the anonymous journey joins the person's.

        One seen before (a replay) is merged again - a merge of what is
        already there changes nothing, and a replay may carry a stage the
        first record did not - and the person's rows are written again; its
        counts are not counted again.
        """
        person, anonymous = record["user_id"], record["merge"]
        key = person.encode()
        cached = dirty.get(key)
        state = cached[0] if cached is not None else (self.table.get(key) or {})
        dirty[key] = (state, event)
        again = identity.merged_before(state, anonymous)
        m = self.metrics
        for name, result, counts in identity.merge(state, anonymous, record["journey"], self.funnels, person):
            out.add(result)
            touched[key, name] = tp
            if not again:
                for stage in counts.both:
                    out.tally.inc(m.child(m.stage_entries_merged, name, stage))
                channel = self._count_progress(out.tally, name, result)
                for stage, change in counts.recount.items():  # an exclusion mark differed or changed
                    if change > 0:
                        out.tally.inc(m.child(m.stage_entries, name, stage, channel), change)
                    else:
                        out.tally.inc(m.child(m.stage_entries_excluded, name, stage), -change)
        if again:
            for _, result in identity.replay_rows(state, self.funnels, person):
                out.add(result)

    def _expire_windows(self, sink: ClickHouseSink, tally: Tally, anchors: dict[Any, EventT],
                        dirty: dict[bytes, tuple[UserState, EventT]], now_ms: int) -> None:
        """Drop-offs for the conversion windows each partition's watermark has passed."""
        m = self.metrics
        for tp, anchor in anchors.items():
            mark = self.watermarks.mark(tp)
            for due in self.deadlines.due(tp, mark if mark is not None else -1):
                funnel = self.funnels.get(due.funnel)
                cached = dirty.get(due.key)
                if cached is None:
                    route_table_to(anchor)
                    state = self.table.get(due.key)
                    if not state or funnel is None:
                        continue
                    cached = dirty[due.key] = (state, anchor)
                if funnel is None or identity.LINK in cached[0]:  # merged into its person
                    continue
                drop = expire_window(cached[0], funnel, due.key.decode(), due.stage, due.entered)
                if drop is not None:
                    sink.add("dropoffs", dropoff_row(drop))
                    if drop.first:
                        tally.inc(m.child(m.dropoffs, funnel.name, drop.stage, m.channel(drop.channel)))

    def _track(self, touched: dict[tuple[bytes, str], Any], dirty: dict[bytes, tuple[UserState, EventT]],
               anchors: dict[Any, EventT], now_ms: int) -> None:
        """Schedule the conversion window and update the stall counts of users who changed."""
        funnels, follow = self.funnels, self._follow
        for (key, name), tp in touched.items():
            follow(tp, key, dirty[key][0], funnels[name], now_ms)

    def _follow(self, tp: Any, key: bytes, state: UserState, funnel: FunnelDefinition, now_ms: int) -> None:
        place = furthest(state, funnel)
        if place is None:
            return
        stage, entered = place
        finished = stage == funnel.stages[-1].name
        if not finished:
            self.deadlines.schedule(tp, key, funnel.name, stage, entered, window_ms(funnel))
        self.stalls.update(key, funnel.name, None if finished else stage,
                           state[funnel.name]["last"], now_ms)

    def targets(self, e: NormalizedEvent) -> list[FunnelDefinition]:
        return route(e, self.funnels, self.routes)

    def _count(self, tally: Tally, funnel: str, e: NormalizedEvent, result: JourneyResult) -> None:
        m = self.metrics
        channel = self._count_progress(tally, funnel, result)
        if e["amount"] is not None:
            tally.inc(m.child(m.revenue, funnel, channel, e["currency"] or ""), float(e["amount"]))
        if result.customer == "new":
            tally.inc(m.child(m.customers, funnel, channel))

    def _count_progress(self, tally: Tally, funnel: str, result: JourneyResult) -> str:
        """Count the new stage entries and first transitions of ``result``; the channel label used."""
        m = self.metrics
        channel = m.channel(result.channel)
        if result.excluded > 0:  # every entry came again: the counted ones are taken out
            for entry in result.entries:
                if not entry.new:  # an entry new here was never counted
                    tally.inc(m.child(m.stage_entries_excluded, funnel, entry.stage))
            return channel
        if result.excluded < 0:  # every entry came again: each counts once more (excluded - 1 + 1)
            for entry in result.entries:
                tally.inc(m.child(m.stage_entries, funnel, entry.stage, channel))
        else:
            for entry in result.entries:
                if entry.new and not entry.excluded:
                    tally.inc(m.child(m.stage_entries, funnel, entry.stage, channel))
        for tr in result.transitions:  # a first one too when the exclusion just ended
            if tr.first and not tr.excluded:  # a correction is not a new conversion
                tally.inc(m.child(m.transitions, funnel, tr.from_stage, tr.to_stage, channel))
                tally.observe(m.child(m.transition_duration, funnel, tr.from_stage, tr.to_stage),
                              tr.seconds)
        return channel

    def update_stalls(self) -> None:
        self.stalls.advance(int(time.time() * 1000))
        counts = self.stalls.counts()
        for funnel in self.funnels.values():
            for stage in funnel.names[:-1]:
                for temperature in TEMPERATURES:
                    self.metrics.stalled_users.labels(funnel.name, stage, temperature).set(
                        counts.get((funnel.name, stage, temperature), 0)
                    )

    def take_processed(self) -> int:
        """Events applied since the last call (for the status line's rate)."""
        processed, self.processed = self.processed, 0
        return processed

    def follow_all(self, active: Collection[int]) -> int:
        """Follow again, for windows and stalls, every user of the ``active`` table partitions; how many.

        After a rebalance. A standby's copy of a partition (in the same store
        with Faust's memory store) is left to the worker that is its active one:
        counted here too, its stalled users would be counted twice.
        """
        self.deadlines.clear()
        self.stalls.clear()
        now_ms = int(time.time() * 1000)
        users = 0
        for key, state in self.table.items():
            partition = partition_of(key, len(self.homes))
            if partition not in active or identity.LINK in state:  # a linked id: its person is followed
                continue
            tp = self.homes[partition]
            for name in state:
                if name in self.funnels:
                    self._follow(tp, key, state, self.funnels[name], now_ms)
            users += 1
        return users
