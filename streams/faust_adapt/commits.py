"""Commits of the agents' partitions: each envelope's log, not Faust's acknowledged offsets and gaps.

On the agents' topics a stream event is an envelope (streams.faust_adapt.envelopes):
the records of one partition fetched together. Faust's commit logic
(``Consumer._new_offset`` with ``_add_gap``) commits past an unprocessed
message when acknowledgements arrive out of order or after a revoke
(faust-streaming#606). Here, per partition, an :class:`EnvelopeLog` keeps
the envelopes delivered since the last seek in order; an envelope is done
only when the agent marks it so, after everything it caused is written; the
partition commits the last offset + 1 of its done head, and only that. The
logs are forgotten at every seek and revoke, after Faust's last commit.

Adapts faust-streaming 0.15.3 ``Consumer`` internals (pinned in
pyproject.toml): ``ack``, ``_filter_tps_with_pending_acks``, ``_new_offset``,
``on_partitions_revoked``, and the bookkeeping they share (``_unacked_messages``,
``_n_acked``, ``_waiting_for_ack``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from time import monotonic
from typing import Any

from faust.types import TP, Message
from mode.utils.futures import notify

from streams.faust_adapt.consumer import EagerConsumer
from streams.faust_adapt.envelopes import Envelope, EnvelopeLog

__all__ = ["EnvelopeCommitter"]

log = logging.getLogger(__name__)

#: How long a partition's commits may wait for unacknowledged offsets before that is logged.
BLOCKED_COMMIT_WARN_SECONDS = 60.0


class EnvelopeCommitter(EagerConsumer):
    """A Faust consumer whose envelope partitions commit by their :class:`EnvelopeLog`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Partition -> (since when its commits wait for an unacknowledged
        # envelope, whether that was logged).
        self._blocked: dict[TP, tuple[float, bool]] = {}
        # Stream partition -> the envelopes delivered since its last seek,
        # which decide its commits (streams.faust_adapt.envelopes).
        self._envelopes: dict[TP, EnvelopeLog] = {}

    def ack(self, message: Message) -> bool:
        """Faust's acknowledgement: for an envelope, only the end of its tracking.

        Called by ``Message.ack`` under Faust's (reentrant) ``ack_lock`` once
        the stream's last reference is released. What an envelope's commit
        needs is :func:`~streams.faust_adapt.envelopes.mark_done`, which only the agent
        calls: Faust's streams also acknowledge, unprocessed, the messages
        they skip while flow control is suspended or that come from an older
        consumer generation (``Stream._py_aiter``); those stay not done, and
        the seek that follows reads them again.
        """
        if not isinstance(message, Envelope):
            return super().ack(message)
        if message.acked:
            return False
        message.acked = True
        self._unacked_messages.discard(message)
        self._n_acked += len(message.records)
        notify(self._waiting_for_ack)
        return True

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        yield from super()._filter_tps_with_pending_acks(topics)
        for tp, envelopes in self._envelopes.items():
            if envelopes and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        envelopes = self._envelopes.get(tp)
        if envelopes is not None:
            offset = envelopes.committable()
            self._watch_blocked(tp, envelopes)
            return offset
        return super()._new_offset(tp)

    def _forget_envelopes(self, tps: Iterable[TP] | None = None) -> None:
        """Replace the envelope logs of ``tps`` (all if None): what they held commits nothing now."""
        tps = None if tps is None else list(tps)
        for state in self._per_envelope_partition():
            if tps is None:
                state.clear()
            else:
                for tp in tps:
                    state.pop(tp, None)

    def _per_envelope_partition(self) -> list[dict[TP, Any]]:
        """What is kept per envelope partition, forgotten with its log (subclasses add theirs)."""
        return [self._envelopes, self._blocked]

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        # Faust's handler waits for the agents' acknowledgements and commits
        # (with the logs still in place), then the revoked logs go.
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            self._forget_envelopes(revoked)

    def _watch_blocked(self, tp: TP, envelopes: EnvelopeLog) -> None:
        """Say once when ``tp``'s commits wait for an envelope never acknowledged while later ones were."""
        blocked = envelopes.blocked()
        if blocked is None:
            self._blocked.pop(tp, None)
            return
        since, first, last, done = blocked
        _, told = self._blocked.setdefault(tp, (since, False))
        now = monotonic()
        if not told and now - since >= BLOCKED_COMMIT_WARN_SECONDS:
            self._blocked[tp] = (since, True)
            log.warning("commits of %s[%d] have waited %.0f s at offset %d: offsets %d-%d were never "
                        "acknowledged (%d later envelopes were)", tp.topic, tp.partition, now - since,
                        first, first, last, done)
