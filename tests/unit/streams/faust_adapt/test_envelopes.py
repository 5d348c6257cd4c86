"""streams.faust_adapt.envelopes and the consumer's commits of envelope partitions.

Simulated envelopes drive the paths the issue names: acknowledgements out of
order, a stale one after a revoke, a fetch again after a seek, a crash in the
middle of an envelope. The consumer is the one a Pipeline's app creates (not
started); its commit to the broker is replaced by a recorder.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.faust_adapt.envelopes import Envelope, EnvelopeLog, EnvelopeQueue, mark_done
from streams.faust_adapt.offsets import RewindingConsumer

VISIT = TP("funnel.visit", 0)
SIGNUP = TP("funnel.signup", 3)


def envelope(tp: TP, offsets: range, generation: int = 1) -> Envelope:
    return Envelope(tp, [SimpleNamespace(offset=o, timestamp=1_700_000_000_000, timestamp_type=0)
                         for o in offsets], generation)


# -- the log alone ---------------------------------------------------------------------------
def test_an_envelope_is_one_faust_message_over_its_records() -> None:
    e = envelope(VISIT, range(10, 15))
    assert (e.topic, e.partition, e.tp, e.first_offset, e.offset) == ("funnel.visit", 0, VISIT, 10, 14)
    assert [r.offset for r in e.value] == [10, 11, 12, 13, 14]  # what the agent's event carries
    assert e.timestamp == 1_700_000_000.0 and e.generation_id == 1
    assert not e.done and not e.acked


def test_commits_take_only_the_done_envelopes_at_the_head() -> None:
    log = EnvelopeLog()
    a, b, c = envelope(VISIT, range(0, 3)), envelope(VISIT, range(3, 7)), envelope(VISIT, range(7, 9))
    for e in (a, b, c):
        log.deliver(e)
    assert log.committable() is None
    c.done = True  # acknowledged out of order
    b.done = True
    assert log.committable() is None  # never past a that is not done
    a.done = True
    assert log.committable() == 9
    assert log.committable() is None and len(log) == 0


def test_an_envelope_must_follow_the_last_one_delivered() -> None:
    log = EnvelopeLog()
    log.deliver(envelope(VISIT, range(0, 5)))
    with pytest.raises(ValueError, match="does not follow"):
        log.deliver(envelope(VISIT, range(4, 8)))


def test_a_crash_in_the_middle_of_an_envelope_acknowledges_none_of_it() -> None:
    """The agent acknowledges an envelope once all of it is written: a failure part-way, none of it."""
    log = EnvelopeLog()
    a, b = envelope(VISIT, range(0, 100)), envelope(VISIT, range(100, 200))
    log.deliver(a)
    log.deliver(b)
    a.done = True

    def handle(records: Any) -> None:
        for record in records:
            if record.offset == 150:
                raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        handle(b.records)
        b.done = True  # not reached
    assert log.committable() == 100  # a only: b is read again after the restart


# -- the consumer ------------------------------------------------------------------------------
@pytest.fixture
def consumer(app_consumer: Any) -> RewindingConsumer:
    assert isinstance(app_consumer, RewindingConsumer)
    consumer: Any = app_consumer
    consumer.assignment = lambda: {VISIT, SIGNUP}
    consumer.commits = []

    async def commit(offsets: dict[TP, int]) -> bool:
        consumer.commits.append(dict(offsets))
        return True

    consumer._commit = commit
    return app_consumer


def deliver(consumer: RewindingConsumer, tp: TP, *ranges: range) -> list[Envelope]:
    out = []
    for offsets in ranges:
        e = envelope(tp, offsets, consumer.app.consumer_generation_id)
        consumer._envelopes.setdefault(tp, EnvelopeLog()).deliver(e)
        consumer.track_message(e)
        out.append(e)
    return out


def finish(consumer: RewindingConsumer, e: Envelope) -> None:
    """What the agent does once all of ``e`` is written: mark it done, then Faust's ack."""
    mark_done(SimpleNamespace(message=e))  # type: ignore[arg-type]
    e.ack(consumer)


def commit(consumer: RewindingConsumer) -> list[dict[TP, int]]:
    consumer.loop.run_until_complete(consumer.commit())
    commits: list[dict[TP, int]] = consumer.commits  # type: ignore[attr-defined]
    return commits


def test_acknowledged_envelopes_are_committed_through_faust_s_commit(consumer: RewindingConsumer) -> None:
    a, b = deliver(consumer, VISIT, range(0, 10), range(10, 20))
    [c] = deliver(consumer, SIGNUP, range(5, 8))
    assert set(consumer.unacked) == {a, b, c}
    finish(consumer, b)  # Faust's Message.ack: the last reference released
    finish(consumer, c)
    assert commit(consumer) == [{SIGNUP: 8}]  # VISIT waits for a
    assert set(consumer.unacked) == {a}
    assert not consumer._acked[VISIT]  # Faust's acked offsets are not used for envelopes
    finish(consumer, a)
    assert commit(consumer)[-1] == {VISIT: 20}
    assert consumer._committed_offset[VISIT] == 20


def test_faust_s_acknowledgement_of_a_skipped_envelope_commits_nothing(consumer: RewindingConsumer) -> None:
    """Faust's streams acknowledge what they skip (flow control off, an older generation)."""
    a, b = deliver(consumer, VISIT, range(0, 10), range(10, 20))
    a.ack(consumer)  # Stream._py_aiter's skip: never reached the agent
    finish(consumer, b)
    assert commit(consumer) == []
    assert set(consumer.unacked) == set()  # Faust's tracking of it ended all the same


def test_a_stale_acknowledgement_after_a_revoke_commits_nothing(consumer: RewindingConsumer) -> None:
    [a] = deliver(consumer, VISIT, range(0, 10))
    consumer._forget_envelopes({VISIT})  # what on_partitions_revoked does after Faust's own handling
    finish(consumer, a)
    assert commit(consumer) == []


def test_on_partitions_revoked_commits_what_is_done_before_the_logs_go(
        consumer: RewindingConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    [a] = deliver(consumer, VISIT, range(0, 10))
    finish(consumer, a)
    seen: list[Any] = []

    async def app_s(revoked: set[TP]) -> None:  # the app's handler waits for acks and commits
        seen.append(dict(consumer._envelopes))
        await consumer.commit()

    monkeypatch.setattr(consumer, "_on_partitions_revoked", app_s)
    consumer.loop.run_until_complete(consumer.on_partitions_revoked({VISIT}))
    assert seen and VISIT in seen[0]
    assert consumer.commits == [{VISIT: 10}]  # type: ignore[attr-defined]
    assert VISIT not in consumer._envelopes


def test_after_a_seek_only_the_envelopes_fetched_again_count(consumer: RewindingConsumer) -> None:
    """Faust seeks to the committed offsets (a rebalance, recovery): what is in flight is read again."""
    consumer._committed_offset[VISIT] = 10
    [old] = deliver(consumer, VISIT, range(10, 20))

    async def seek_to_committed() -> dict[TP, int]:
        return {VISIT: 10}

    consumer._thread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]
    consumer.loop.run_until_complete(consumer.perform_seek())
    [again] = deliver(consumer, VISIT, range(10, 15))
    finish(consumer, old)  # the agent finishes the batch it held: stale
    assert commit(consumer) == []
    finish(consumer, again)
    assert commit(consumer) == [{VISIT: 15}]


def test_envelope_acknowledgements_count_towards_faust_s_commit_every(consumer: RewindingConsumer) -> None:
    [a] = deliver(consumer, VISIT, range(0, 250))
    before = consumer._n_acked
    assert a.ack(consumer)  # Faust's tracking ends
    assert consumer._n_acked == before + 250
    assert not a.ack(consumer)  # once


def test_other_messages_keep_faust_s_tracking(consumer: RewindingConsumer,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A message that is no envelope (a changelog's, in a worker) is Faust's business."""
    monkeypatch.setattr(consumer.app.topics, "acks_enabled_for", lambda topic: True)  # once subscribed
    message = ConsumerMessage(VISIT.topic, VISIT.partition, 4, 0.0, 0, None, None, b"{}", None, tp=VISIT)
    assert consumer.ack(message)
    assert consumer._acked[VISIT] == [4]


def test_the_envelopes_no_agent_took_are_forgotten_from_the_first_one() -> None:
    log = EnvelopeLog()
    a, b, c, d = (envelope(VISIT, range(i * 10, i * 10 + 10)) for i in range(4))
    for e in (a, b, c, d):
        log.deliver(e)
    a.taken = a.done = True
    b.taken = True  # in an agent's batch, being written
    d.taken = True  # behind c, which Faust's queue dropped: read again with it
    assert log.drop_untaken() == 20
    assert list(log._fifo) == [a, b]
    assert log.drop_untaken() is None  # nothing left to drop


def test_envelopes_faust_s_queues_dropped_are_read_again(consumer: RewindingConsumer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Faust clears its stream queues when flow control resumes, also after it sought the partitions
    at the end of recovery: what was handed out in between was lost, and its commits waited for ever."""
    a, b, c = deliver(consumer, VISIT, range(0, 10), range(10, 20), range(20, 30))
    a.taken = b.taken = True
    consumer._next[VISIT] = 30
    consumer.reread_dropped()
    assert consumer._next[VISIT] == 20 and consumer._dropped == {VISIT: 20}
    assert "offsets from 20 of funnel.visit[0] were dropped by Faust's stream queue" in caplog.text
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    consumer._seek = seek  # type: ignore[method-assign]
    consumer.loop.run_until_complete(consumer._seek_dropped())  # before the next fetch
    assert seeks == [(VISIT, 20)] and not consumer._dropped
    finish(consumer, a)
    finish(consumer, b)
    finish(consumer, c)  # stale: forgotten
    assert commit(consumer) == [{VISIT: 20}]


def test_the_agents_queues_tell_the_consumer_when_faust_clears_them(
        consumer: RewindingConsumer, monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[bool] = []
    monkeypatch.setattr(consumer, "reread_dropped", lambda: told.append(True))

    async def resume() -> None:
        queue = consumer.app.FlowControlQueue(maxsize=4, clear_on_resume=True)
        assert isinstance(queue, EnvelopeQueue)
        consumer.app.flow_control.resume()  # what Faust's recovery does at its end

    consumer.loop.run_until_complete(resume())
    assert told


def test_a_partition_behind_with_nothing_handed_out_is_read_again(
        consumer: RewindingConsumer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A safety net: records dropped without a seek following would never be read otherwise."""
    from streams.faust_adapt import offsets

    monkeypatch.setattr(offsets, "REREAD_IDLE_SECONDS", 0.0)
    monkeypatch.setattr(consumer, "highwater", lambda tp: {VISIT: 1840, SIGNUP: 50}[tp])
    consumer.flow_active = True
    consumer.app.flow_control.resume()
    consumer._next.update({VISIT: 208, SIGNUP: 50})  # SIGNUP is at its end
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    consumer._seek = seek  # type: ignore[method-assign]
    deliver(consumer, VISIT, range(208, 300))  # in flight: not idle
    consumer.loop.run_until_complete(consumer._reread_idle())
    assert seeks == []
    consumer._forget_envelopes({VISIT})  # nothing in flight, still behind
    monkeypatch.setattr(offsets, "REREAD_IDLE_SECONDS", 3600.0)
    consumer.loop.run_until_complete(consumer._reread_idle())  # starts the clock
    assert seeks == []
    monkeypatch.setattr(offsets, "REREAD_IDLE_SECONDS", 0.0)
    consumer.loop.run_until_complete(consumer._reread_idle())
    assert seeks == [(VISIT, 208)] and consumer._refetching[VISIT] == 208
    assert "funnel.visit[0] has handed nothing out" in caplog.text
