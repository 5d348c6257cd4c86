"""Test-only launcher: `funnel worker` whose ClickHouse inserts fail on demand.

While the file named by FUNNEL_TEST_CLICKHOUSE_DOWN exists, every insert of the
journey sinks (every funnel table) raises clickhouse-connect's OperationalError
(what the driver raises when the server cannot be reached) before anything is
written. The first insert after the file is gone is written and *then*
reported as failed - an answer lost on its way back - so the sink's retry must
be dropped by ClickHouse through its insert_deduplication_token.

Run as a script (the harness does: ``start_faulty_worker``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.exceptions import OperationalError

from streams.pipeline import Pipeline
from streams.settings import Settings
from streams.tools.worker import run_worker

FLAG_ENV = "FUNNEL_TEST_CLICKHOUSE_DOWN"


class FlakyClient:
    """Wraps a clickhouse-connect client; only ``insert`` misbehaves."""

    def __init__(self, client: Any, flag: Path) -> None:
        self._client = client
        self._flag = flag
        self._was_down = False

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self._flag.exists():
            self._was_down = True
            raise OperationalError("test: ClickHouse is down (connection refused)")
        result = self._client.insert(*args, **kwargs)
        if self._was_down:
            self._was_down = False
            raise OperationalError("test: connection reset after the insert was sent")
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def make_flaky(pipeline: Pipeline) -> None:
    flag = Path(os.environ[FLAG_ENV])
    # Every row of the funnel's tables goes through these two (journey and
    # ingest agents); one client, so the outage and the lost answer are shared.
    client = FlakyClient(pipeline.journey_sink.client, flag)
    for sink in (pipeline.journey_sink, pipeline.direct_sink):
        sink.client = client  # type: ignore[assignment]


if __name__ == "__main__":
    sys.exit(run_worker(Settings(), customize=make_flaky))
