"""The status timer: the status line, a stall warning, topics and a changelog the broker lost.

Every ``FUNNEL_STATUS_INTERVAL_SECONDS`` the worker logs its rate, lag and
rows pending, updates the stalled-user gauges, warns once when nothing is
processed while the consumer lags, and checks that its topics still exist:
an embedded, in-memory broker that restarted has lost them. Topics it lost
are created again and read from their start; a lost journeys changelog is
written again from the journeys held in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, cast

from aiokafka.errors import KafkaError
from faust.types import TP

from streams.agents.journeys import JourneyAgent
from streams.faust_adapt.offsets import RewindingConsumer
from streams.faust_adapt.table import JourneyTable
from streams.settings import Settings
from streams.topics import TopicNames, ensure_topics, partition_of

__all__ = ["Upkeep"]

log = logging.getLogger("funnel.worker")

#: How often a running worker checks that its topics still exist.
TOPIC_CHECK_SECONDS = 10.0

#: How long nothing may be processed while the consumer lags before the status timer says where
#: each partition stands.
STALL_WARN_SECONDS = 30.0


class Upkeep:
    """The worker's status timer (:meth:`status`).

    Arguments:
        app: the worker's Faust app (its consumer, its rebalancing flag).
        pending_rows: rows the sinks hold, not yet written.
        consumer_lag: messages behind on the input partitions, or None.
    """

    def __init__(self, settings: Settings, names: TopicNames, app: Any, journeys: JourneyAgent,
                 pending_rows: Callable[[], int], consumer_lag: Callable[[], int | None]) -> None:
        self.settings, self.names, self.app, self.journeys = settings, names, app, journeys
        self.pending_rows, self.consumer_lag = pending_rows, consumer_lag
        self._next_topic_check = time.monotonic() + TOPIC_CHECK_SECONDS
        self._changelog_lost = False  # the broker lost the journey changelog: rewrite it
        self._stalled_since: float | None = None  # since when nothing is processed with a lag

    @property
    def table(self) -> JourneyTable:
        return self.journeys.table

    async def status(self) -> None:
        await self._check_topics()
        self.journeys.update_stalls()
        processed = self.journeys.take_processed()
        rate = processed / self.settings.status_interval_seconds
        lag = self.consumer_lag()
        log.info("status: %.0f events/s through journeys, consumer lag %s messages, %d rows pending in sinks",
                 rate, "unknown" if lag is None else lag, self.pending_rows())
        self._watch_stall(processed, lag)

    async def _check_topics(self) -> None:
        """Create topics the broker lost (an embedded, in-memory broker that restarted)."""
        if time.monotonic() < self._next_topic_check:
            return
        self._next_topic_check = time.monotonic() + TOPIC_CHECK_SECONDS
        changelog = self.table.changelog_topic.get_topic_name()
        try:
            created = await ensure_topics(self.settings, timeout=5.0, extra=[changelog])
        except Exception as exc:  # the broker may be down right now: the next check retries
            log.warning("topic check failed: %s", exc)
            return
        if created:
            log.warning("created missing topics %s: the broker lost them (an embedded broker restarted?)",
                        ", ".join(created))
            # Its other topics are new too (a producer may have created them
            # first): read every partition this worker consumes from the start.
            consumed = [*self.names.events.values(), self.names.spend, self.names.normalized]
            cast(RewindingConsumer, self.app.consumer).rewind(
                TP(topic, p) for topic in consumed for p in range(self.settings.topic_partitions))
            self._changelog_lost = self._changelog_lost or changelog in created
        if self._changelog_lost:
            await self._rewrite_changelog()

    async def _rewrite_changelog(self) -> None:
        """Write every journey this worker holds to the changelog again: the broker lost it.

        Only in memory now, the journeys changed before the loss would be
        missing from a later recovery (a restart, a rebalance). One record per
        user, taken with no await after reading the table, as an agent's
        batch is; a batch written later comes after it. If the broker refuses
        it, the next topic check tries again.
        """
        started = time.monotonic()
        count, table = self.settings.topic_partitions, self.table
        active = table.active_partitions()  # a standby's copy may be behind its active's
        for key, state in table.items():
            partition = partition_of(key, count)
            if partition in active:
                table.send_changelog(partition, key, state)
        records = table.take_changelog()
        try:
            await asyncio.gather(*await table.produce_changelog(records))
        except KafkaError as exc:
            log.warning("journey changelog: rewriting %d journeys failed (%r); trying again at the next "
                        "topic check", len(records), exc)
            return
        self._changelog_lost = False
        log.warning("journey changelog: wrote the %d journeys held here again (the broker lost it) in %.1f s",
                    len(records), time.monotonic() - started)

    def _watch_stall(self, processed: int, lag: int | None) -> None:
        """Say once, after STALL_WARN_SECONDS of it, that nothing is processed while the consumer lags."""
        if processed or not lag or self.app.rebalancing:
            self._stalled_since = None
            return
        now = time.monotonic()
        if self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= STALL_WARN_SECONDS:  # once per stall
            self._stalled_since = float("inf")
            consumer = cast(RewindingConsumer, self.app.consumer)
            log.warning("status: nothing processed for %.0f s with %d messages behind (a sink down, "
                        "or a stuck partition): %s", STALL_WARN_SECONDS, lag, consumer.describe())
