"""streams.pipeline: the wiring of one worker."""

from __future__ import annotations

from typing import Any

from streams import pipeline as pipeline_module


def test_the_agents_queues_hold_a_few_envelopes(pipeline: Any) -> None:
    """Faust's default queue (4 096 messages) would be millions of records as envelopes."""
    for agent in pipeline.app.agents.values():
        assert agent.channel.clone().queue.maxsize == pipeline_module.ENVELOPE_QUEUE == 64
