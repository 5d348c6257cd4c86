"""Fixtures for the streams tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from streams.pipeline import Pipeline
from streams.settings import Settings, load_funnels
from tests.unit.streams.fakes import RecordingClient


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A monkeypatch with every FUNNEL_* variable of the machine removed."""
    for name in list(os.environ):
        if name.startswith("FUNNEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def app_consumer(tmp_path: Any) -> Iterator[Any]:
    """The consumer a Pipeline's app creates (not started, no broker behind it)."""
    pipeline = Pipeline(Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path),
                        load_funnels(None), clickhouse=None, database="funnel",  # type: ignore[arg-type]
                        registry=CollectorRegistry())
    yield pipeline.app.consumer
    pipeline.close()


@pytest.fixture
def pipeline(tmp_path: Any) -> Iterator[Pipeline]:
    """A worker's pipeline (not started), topics prefixed ``t.``, rows kept by a RecordingClient."""
    settings = Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path, topic_prefix="t.")
    pipeline = Pipeline(settings, load_funnels(None), clickhouse=RecordingClient(),  # type: ignore[arg-type]
                        database="funnel", registry=CollectorRegistry())
    yield pipeline
    pipeline.close()
