"""The Faust app of a worker: the aiokafka transport with this package's consumer.

faust-streaming 0.15.3 internals (pinned in pyproject.toml): ``App._new_transport``
picks the transport (and so the consumer class, :class:`RewindingConsumer`),
and ``App.FlowControlQueue`` builds every channel's queue (here one that tells
the consumer when Faust clears it: :class:`EnvelopeQueue`).
"""

from __future__ import annotations

from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.faust_adapt.envelopes import EnvelopeQueue
from streams.faust_adapt.offsets import RewindingConsumer

__all__ = ["FunnelApp"]


class _Transport(faust_aiokafka.Transport):
    Consumer = RewindingConsumer


class FunnelApp(faust.App):
    """faust.App on the aiokafka driver, with the consumer of :mod:`streams.faust_adapt.offsets`."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def FlowControlQueue(self, maxsize: int | None = None, *, clear_on_resume: bool = False) -> Any:
        # faust-streaming 0.15.3 builds every channel's queue here: ours tells
        # the consumer when Faust clears it (see EnvelopeQueue).
        consumer = self.consumer
        return EnvelopeQueue(maxsize=maxsize, flow_control=self.flow_control, clear_on_resume=clear_on_resume,
                             on_clear=lambda: cast(RewindingConsumer, consumer).reread_dropped())
