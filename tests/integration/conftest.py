"""Fixtures that start the real parts on loopback: broker and worker processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.tools.broker import EmbeddedBroker

from .harness import Worker, pipeline_environment, start_worker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_file=log) as b:
        yield b


@pytest.fixture
def pipeline_env(broker: EmbeddedBroker, tmp_path: Path) -> dict[str, str]:
    """Environment of a fresh pipeline: own topic prefix, consumer group and chDB."""
    return pipeline_environment(broker.url, tmp_path)


@pytest.fixture
def worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    w = start_worker(pipeline_env, tmp_path / "worker.log")
    try:
        yield w
    finally:
        code = w.stop()
        assert code == 0, f"worker exited with {code}:\n{w.log_tail()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the failure-injection tests (test_reliability_*): `make test-reliability` runs them alone."""
    for item in items:
        if item.path.name.startswith("test_reliability_"):
            item.add_marker(pytest.mark.reliability)
