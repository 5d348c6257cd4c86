"""The Faust app of a worker: the aiokafka transport with this package's consumer.

faust-streaming 0.15.3 internals (pinned in pyproject.toml): ``App._new_transport``
picks the transport (and so the consumer class, :class:`RewindingConsumer`),
the ``TableManager`` setting the table manager (and so table recovery:
:class:`~streams.faust_adapt.recovery.BatchRecovery`), and ``App.FlowControlQueue``
builds every channel's queue (here one that tells the consumer when Faust
clears it: :class:`EnvelopeQueue`).
"""

from __future__ import annotations

from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.faust_adapt.envelopes import EnvelopeQueue
from streams.faust_adapt.offsets import RewindingConsumer
from streams.faust_adapt.recovery import BatchTableManager

__all__ = ["FunnelApp"]


class _Transport(faust_aiokafka.Transport):
    Consumer = RewindingConsumer


class FunnelApp(faust.App):
    """faust.App on the aiokafka driver, with the consumer of :mod:`streams.faust_adapt.offsets`
    and the table recovery of :mod:`streams.faust_adapt.recovery`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("TableManager", BatchTableManager)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def FlowControlQueue(self, maxsize: int | None = None, *, clear_on_resume: bool = False) -> Any:
        # faust-streaming 0.15.3 builds every channel's queue here: ours tells
        # the consumer when Faust clears it (see EnvelopeQueue).
        consumer = self.consumer
        return EnvelopeQueue(maxsize=maxsize, flow_control=self.flow_control, clear_on_resume=clear_on_resume,
                             on_clear=lambda: cast(RewindingConsumer, consumer).reread_dropped())
