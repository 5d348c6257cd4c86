"""The sink contract: ``add()`` rows, ``flush()`` them, ``write()`` one batch.

A new sink is one subclass with one :meth:`BatchSink.write`. The caller (a
Faust agent) adds the rows caused by one batch of Kafka messages, awaits
:meth:`BatchSink.flush`, and acknowledges the messages only when flush
returns: write before you acknowledge. Flush retries until every table is
written, so a sink outage becomes backpressure (the agent stops consuming)
rather than loss; memory stays bounded by the batch size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sinks.exceptions import SinkRetryableError, SinkStopped
from sinks.metrics import FunnelMetrics

__all__ = ["BatchSink", "Row"]

log = logging.getLogger(__name__)

Row = Sequence[object]


class BatchSink(ABC):
    """Buffers rows per table and writes them as batches, retrying with backoff.

    Writes run on one dedicated thread, in order: drivers are blocking, and
    the embedded ClickHouse engine must not be driven from two threads at once.
    """

    name: str = "sink"

    def __init__(
        self,
        metrics: FunnelMetrics,
        *,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.metrics = metrics
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._buffers: dict[str, list[Row]] = {}
        # Sinks of one target share its executor (one thread, writes in order).
        self._own_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"sink-{self.name}"
        )
        self._pending = metrics.sink_pending_rows.labels(self.name)
        self._reported = 0  # of the rows buffered or taken, those the gauge counts
        self._taken = 0  # rows taken (take) and not written yet
        # Export the error counter at 0 from the start: a series that first
        # appears at 1 hides its first failures from rate() and increase().
        metrics.sink_errors.labels(self.name)
        self._stopping = asyncio.Event()

    # -- the contract -------------------------------------------------------
    @abstractmethod
    def write(self, table: str, rows: Sequence[Row], token: str) -> None:
        """Write ``rows`` to ``table`` in one request; blocking.

        ``token`` identifies this batch: a retry of the same batch passes the
        same token, so a sink that supports it can deduplicate the retry.
        Raise :class:`SinkRetryableError` for failures expected to pass.
        """

    def add(self, table: str, row: Row) -> None:
        # The pending-rows gauge learns of added rows when they are flushed
        # (or seen by :meth:`report_pending`): a gauge update per row took a
        # lock per row on the hot path.
        self._buffers.setdefault(table, []).append(row)

    def extend(self, table: str, rows: Sequence[Row]) -> None:
        if rows:
            self._buffers.setdefault(table, []).extend(rows)

    def report_pending(self) -> None:
        """Bring ``funnel_sink_pending_rows`` up to the rows buffered now."""
        added = self.pending - self._reported
        if added:
            self._pending.inc(added)
            self._reported += added

    @property
    def pending(self) -> int:
        """Rows added and not written yet (those taken by :meth:`take` included)."""
        return sum(len(rows) for rows in self._buffers.values()) + self._taken

    def take(self) -> dict[str, list[Row]]:
        """Detach the rows buffered now, to write with :meth:`write_taken`; adds start afresh.

        Lets a caller prepare its next batch while this one is written:
        rows added meanwhile are not part of the taken ones.
        """
        taken, self._buffers = self._buffers, {}
        self._taken += sum(len(rows) for rows in taken.values())
        self.report_pending()
        return taken

    async def write_taken(self, taken: dict[str, list[Row]], token: str) -> None:
        """Write rows from :meth:`take`, table by table, as :meth:`flush` does.

        Retries each table until it is written; a table leaves ``taken``
        once written, so a :class:`SinkStopped` leaves exactly the unwritten
        ones in it.
        """
        for table in list(taken):
            rows = taken[table]
            if rows:
                await self._write_with_retry(table, rows, f"{token}:{table}")
            del taken[table]
            self._taken -= len(rows)
            self._pending.dec(len(rows))
            self._reported -= len(rows)

    async def flush(self, token: str) -> None:
        """Write everything buffered, table by table (:meth:`take`, then :meth:`write_taken`).

        Retries each table until it is written. Raises :class:`SinkStopped`
        if :meth:`stop` is called while a write keeps failing.
        """
        await self.write_taken(self.take(), token)

    def discard(self) -> None:
        """Drop buffered rows (the caller will see the same messages again)."""
        self._pending.dec(self._reported)
        self._reported = self._taken = 0
        self._buffers.clear()

    async def run_blocking(self, fn, *args):
        """Run ``fn(*args)`` on the sink's own thread (reads share it with writes)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def stop(self) -> None:
        """Make pending retries give up (with SinkStopped) instead of waiting forever."""
        self._stopping.set()

    def close(self) -> None:
        self.stop()
        if self._own_executor:
            self._executor.shutdown(wait=True)

    # -- internals ----------------------------------------------------------
    async def _write_with_retry(self, table: str, rows: list[Row], token: str) -> None:
        delay = self.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                await self.run_blocking(self.write, table, rows, token)
            except Exception as exc:  # every failure is retried: losing rows is worse
                self.metrics.sink_errors.labels(self.name).inc()
                level = logging.WARNING if isinstance(exc, SinkRetryableError) else logging.ERROR
                log.log(
                    level,
                    "%s: writing %d rows to %s failed (attempt %d, retry in %.1fs): %s",
                    self.name, len(rows), table, attempt, delay, exc,
                    exc_info=level >= logging.ERROR and attempt == 1,
                )
                if self._stopping.is_set():
                    raise SinkStopped(f"{self.name}: stopped with {len(rows)} rows unwritten") from exc
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            self.metrics.sink_write_seconds.labels(self.name).observe(time.perf_counter() - started)
            self.metrics.sink_rows.labels(self.name, table).inc(len(rows))
            if attempt > 1:
                log.info("%s: %s written after %d attempts", self.name, table, attempt)
            return
