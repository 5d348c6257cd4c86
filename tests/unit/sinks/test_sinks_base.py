"""sinks.BatchSink: buffering per table, tokens, retries with backoff, stopping."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from sinks import BatchSink, FunnelMetrics, Row, SinkRetryableError, SinkStopped

FOREVER = 10**9


class FakeSink(BatchSink):
    """Records every write attempt; the first ``failures`` attempts raise ``error``."""

    name = "fake"

    def __init__(self, metrics: FunnelMetrics, failures: int = 0,
                 error: Exception | None = None, *, backoff_initial: float, backoff_max: float) -> None:
        super().__init__(metrics, backoff_initial=backoff_initial, backoff_max=backoff_max)
        self.failures = failures
        self.error = error or SinkRetryableError("connection refused")
        self.attempts: list[tuple[str, list[Row], str]] = []
        self.written: dict[str, list[Row]] = {}

    def write(self, table: str, rows: Sequence[Row], token: str) -> None:
        self.attempts.append((table, list(rows), token))
        if self.failures:
            self.failures -= 1
            raise self.error
        self.written.setdefault(table, []).extend(rows)


@pytest.fixture
def make_sink(metrics: FunnelMetrics) -> Iterator:
    sinks: list[FakeSink] = []

    def make(failures: int = 0, *, error: Exception | None = None,
             backoff_initial: float = 0.01, backoff_max: float = 0.02) -> FakeSink:
        sink = FakeSink(metrics, failures, error, backoff_initial=backoff_initial, backoff_max=backoff_max)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def sample(metrics: FunnelMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"sink": "fake", **labels})


def fill(sink: BatchSink) -> None:
    sink.add("events", ("e1",))
    sink.extend("stage_entries", [("s1",), ("s2",)])
    sink.add("events", ("e2",))
    sink.extend("transitions", [])  # nothing: no empty batch later


def test_rows_are_buffered_per_table_until_flush(make_sink, metrics: FunnelMetrics) -> None:
    sink = make_sink()
    fill(sink)
    # The gauge learns of buffered rows when they are flushed (no lock per row).
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (4, 0)
    sink.report_pending()
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (4, 4)
    sink.add("events", ("e3",))
    sink.report_pending()
    sink.report_pending()  # only what was added since
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (5, 5)
    assert sink.attempts == []


def test_flush_writes_each_table_once_with_its_token(make_sink, metrics: FunnelMetrics) -> None:
    sink = make_sink()
    fill(sink)
    asyncio.run(sink.flush("journey:0:100-199"))
    assert sink.attempts == [
        ("events", [("e1",), ("e2",)], "journey:0:100-199:events"),
        ("stage_entries", [("s1",), ("s2",)], "journey:0:100-199:stage_entries"),
    ]
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (0, 0)
    assert sample(metrics, "funnel_sink_rows_total", table="events") == 2
    assert sample(metrics, "funnel_sink_rows_total", table="stage_entries") == 2
    assert sample(metrics, "funnel_sink_write_seconds_count") == 2
    assert sample(metrics, "funnel_sink_errors_total") == 0
    asyncio.run(sink.flush("journey:0:200-299"))  # buffers were cleared: nothing to write
    assert len(sink.attempts) == 2


@pytest.mark.parametrize("error", [SinkRetryableError("timeout"), RuntimeError("driver bug")],
                         ids=["retryable", "unexpected"])
def test_failed_writes_are_retried_with_backoff(make_sink, metrics: FunnelMetrics, error) -> None:
    sink = make_sink(failures=2, error=error, backoff_initial=0.02, backoff_max=0.03)
    fill(sink)
    started = time.monotonic()
    asyncio.run(sink.flush("t"))
    assert time.monotonic() - started >= 0.02 + 0.03  # backoff doubled, capped at max
    assert [(table, token) for table, _, token in sink.attempts] == [
        ("events", "t:events"), ("events", "t:events"), ("events", "t:events"),
        ("stage_entries", "t:stage_entries"),
    ]
    assert sink.written == {"events": [("e1",), ("e2",)], "stage_entries": [("s1",), ("s2",)]}
    assert sample(metrics, "funnel_sink_errors_total") == 2
    assert sample(metrics, "funnel_sink_rows_total", table="events") == 2
    assert sample(metrics, "funnel_sink_pending_rows") == 0


async def flush_until_stopped(sink: FakeSink, metrics: FunnelMetrics, errors: int) -> None:
    task = asyncio.create_task(sink.flush("t"))
    for _ in range(500):
        if (sample(metrics, "funnel_sink_errors_total") or 0) >= errors:
            break
        await asyncio.sleep(0.002)
    sink.stop()
    await task


def test_stop_during_persistent_failure_keeps_rows_pending(make_sink, metrics: FunnelMetrics) -> None:
    sink = make_sink(failures=FOREVER, backoff_initial=30, backoff_max=30)  # stop must cut the wait
    fill(sink)
    started = time.monotonic()
    with pytest.raises(SinkStopped, match="fake: stopped with 2 rows unwritten"):
        asyncio.run(flush_until_stopped(sink, metrics, errors=1))
    assert time.monotonic() - started < 5
    assert sink.written == {}
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (4, 4)
    assert sample(metrics, "funnel_sink_rows_total", table="events") is None


def test_stop_keeps_exactly_the_unwritten_tables(make_sink, metrics: FunnelMetrics) -> None:
    sink = make_sink()
    fill(sink)

    def fail_entries(table: str, rows: Sequence[Row], token: str) -> None:
        if table == "stage_entries":
            raise SinkRetryableError("too many parts")
        FakeSink.write(sink, table, rows, token)

    sink.write = fail_entries
    with pytest.raises(SinkStopped):
        asyncio.run(flush_until_stopped(sink, metrics, errors=2))
    assert sink.written == {"events": [("e1",), ("e2",)]}
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (2, 2)
    sink.discard()  # the caller will consume the same messages again
    assert (sink.pending, sample(metrics, "funnel_sink_pending_rows")) == (0, 0)


def test_run_blocking_runs_on_the_sink_thread(make_sink) -> None:
    sink = make_sink()
    name = asyncio.run(sink.run_blocking(lambda: threading.current_thread().name))
    assert name.startswith("sink-fake")


def test_taken_rows_are_written_apart_from_rows_added_after(make_sink, metrics: FunnelMetrics) -> None:
    """A caller prepares its next batch while the taken one is written."""
    sink = make_sink()
    fill(sink)
    taken = sink.take()
    sink.add("events", ("next",))  # the next batch, added meanwhile
    assert sink.pending == 5  # 4 taken and not written yet, 1 buffered
    assert sample(metrics, "funnel_sink_pending_rows") == 4  # the gauge learns of rows when taken
    asyncio.run(sink.write_taken(taken, "t1"))
    assert sink.written == {"events": [("e1",), ("e2",)], "stage_entries": [("s1",), ("s2",)]}
    assert taken == {}
    assert sink.pending == 1 and sample(metrics, "funnel_sink_pending_rows") == 0
    asyncio.run(sink.flush("t2"))
    assert sink.written["events"][-1] == ("next",)
    assert sink.pending == 0 and sample(metrics, "funnel_sink_pending_rows") == 0


def test_a_stopped_write_of_taken_rows_keeps_the_unwritten_tables(make_sink) -> None:
    sink = make_sink(failures=FOREVER, backoff_initial=0.01)
    fill(sink)
    taken = sink.take()

    async def stop_soon() -> None:
        await asyncio.sleep(0.05)
        sink.stop()

    async def both() -> None:
        await asyncio.gather(sink.write_taken(taken, "t"), stop_soon())

    with pytest.raises(SinkStopped):
        asyncio.run(both())
    assert sum(len(rows) for rows in taken.values()) == 4 and sink.pending == 4
