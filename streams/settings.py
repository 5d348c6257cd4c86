"""One settings object, read from ``FUNNEL_*`` environment variables.

Every field names its variable; the README's configuration table lists the
same. Secrets are ``SecretStr`` and ``str(settings)`` masks them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import FunnelConfigError, FunnelsConfig, default_config

__all__ = ["Settings", "load_funnels", "split_brokers"]


class Settings(BaseSettings):
    """Worker, generator and CLI configuration."""

    model_config = SettingsConfigDict(env_prefix="FUNNEL_", extra="ignore")

    kafka_url: str | None = Field(
        None, description="FUNNEL_KAFKA_URL: brokers, e.g. kafka://k1:9092,k2:9092. "
        "Unset in `funnel demo`: an embedded broker is started."
    )
    kafka_session_timeout_seconds: float = Field(
        10.0, ge=3, description="FUNNEL_KAFKA_SESSION_TIMEOUT_SECONDS: consumer session timeout; "
        "a dead worker's partitions move after this (the embedded broker also waits half of it "
        "before a group's first assignment)."
    )
    clickhouse_url: SecretStr | None = Field(
        None, description="FUNNEL_CLICKHOUSE_URL: http(s)://user:pass@host:port/db for a server, "
        "chdb:///path for the embedded engine. Unset in `funnel demo`: chdb under FUNNEL_DATA_DIR."
    )
    clickhouse_database: str = Field(
        "funnel", description="FUNNEL_CLICKHOUSE_DATABASE: database when the URL names none."
    )
    topic_prefix: str = Field("funnel.", description="FUNNEL_TOPIC_PREFIX: prefix of every topic.")
    topic_partitions: int = Field(
        4, ge=1, description="FUNNEL_TOPIC_PARTITIONS: partitions of the topics the pipeline creates."
    )
    topic_replication: int = Field(
        1, ge=1, description="FUNNEL_TOPIC_REPLICATION: replication factor of created topics."
    )
    app_id: str = Field(
        "funnel-pipeline", description="FUNNEL_APP_ID: Faust app id = consumer group."
    )
    store: str = Field(
        "memory://", description="FUNNEL_STORE: table store, memory:// or rocksdb:// (production)."
    )
    data_dir: Path = Field(
        Path(".funnel-data"), description="FUNNEL_DATA_DIR: table stores, chDB data, demo state."
    )
    web_host: str = Field("127.0.0.1", description="FUNNEL_WEB_HOST: bind address of the web server.")
    web_port: int = Field(
        6066, ge=0, description="FUNNEL_WEB_PORT: port of /metrics, /sql and /health."
    )
    window_seconds: int = Field(
        60, ge=1, description="FUNNEL_WINDOW_SECONDS: tumbling window size for stage_counts."
    )
    allowed_lateness_seconds: float = Field(
        300.0, ge=0, description="FUNNEL_ALLOWED_LATENESS_SECONDS: older than the partition "
        "watermark minus this counts as late (still applied)."
    )
    max_future_seconds: float = Field(
        300.0, ge=0, description="FUNNEL_MAX_FUTURE_SECONDS: event times further ahead are invalid."
    )
    max_message_bytes: int = Field(
        65536, ge=256, description="FUNNEL_MAX_MESSAGE_BYTES: larger messages are dead-lettered."
    )
    rocksdb_write_buffer_mb: int = Field(
        8, ge=1, description="FUNNEL_ROCKSDB_WRITE_BUFFER_MB: RocksDB store: memtable size per "
        "table partition (MiB); two at most."
    )
    rocksdb_block_cache_mb: int = Field(
        32, ge=1, description="FUNNEL_ROCKSDB_BLOCK_CACHE_MB: RocksDB store: block cache per "
        "table partition (MiB)."
    )
    batch_max_events: int = Field(
        20000, ge=1, description="FUNNEL_BATCH_MAX_EVENTS: events per agent batch (= insert size) when "
        "the stream is busy; a batch is whole envelopes, so it may pass this by one envelope's records."
    )
    batch_max_seconds: float = Field(
        0.1, gt=0, description="FUNNEL_BATCH_MAX_SECONDS: longest wait to fill a batch, so how far "
        "/metrics lags (p99 0.8 s at 10 000 events/s). Each agent's batch is one insert per "
        "ClickHouse table: a quiet stream gets up to 1/this inserts per second per table; raise it "
        "to insert less often."
    )
    direct_journeys: bool = Field(
        True, description="FUNNEL_DIRECT_JOURNEYS: apply events keyed by their user id, in the "
        "partition `normalized` would give them, to the journeys in the ingest agent (one hop less); "
        "false sends every event through `normalized`."
    )
    channels: str = Field(
        "seo,ads,social,email,partner,direct,referral",
        description="FUNNEL_CHANNELS: channel label allow-list; others become `other`.",
    )
    funnels_file: Path | None = Field(
        None, description="FUNNEL_FUNNELS_FILE: YAML funnel definitions (default: built-in)."
    )
    email_hash_key: SecretStr | None = Field(
        None, description="FUNNEL_EMAIL_HASH_KEY: HMAC key for e-mail hashes; unset drops e-mails."
    )
    stall_after_seconds: float = Field(
        3600.0, gt=0, description="FUNNEL_STALL_AFTER_SECONDS: no progress for this long makes a "
        "lead stalled (hot)."
    )
    stall_warm_seconds: float = Field(
        86400.0, gt=0, description="FUNNEL_STALL_WARM_SECONDS: a stalled lead is warm after this long."
    )
    stall_cold_seconds: float = Field(
        604800.0, gt=0, description="FUNNEL_STALL_COLD_SECONDS: a stalled lead is cold after this long."
    )
    status_interval_seconds: float = Field(
        10.0, gt=0, description="FUNNEL_STATUS_INTERVAL_SECONDS: worker status log line period."
    )
    log_level: str = Field("info", description="FUNNEL_LOG_LEVEL: crit, error, warn, info, debug.")

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        aliases = {"warning": "warn", "critical": "crit"}
        value = aliases.get(value, value)
        if value not in {"crit", "error", "warn", "info", "debug"}:
            raise ValueError("must be one of crit, error, warn, info, debug")
        return value

    @property
    def channel_list(self) -> list[str]:
        return [c.strip() for c in self.channels.split(",") if c.strip()]

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def __str__(self) -> str:
        fields: dict[str, Any] = self.model_dump()
        url = self.clickhouse_url.get_secret_value() if self.clickhouse_url else None
        if url and "@" in url:
            scheme, rest = url.split("://", 1)
            fields["clickhouse_url"] = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
        else:
            fields["clickhouse_url"] = url
        fields["email_hash_key"] = "***" if self.email_hash_key else None
        return " ".join(f"{k}={v}" for k, v in fields.items())


def split_brokers(url: str) -> list[str]:
    """``kafka://a:9092,b:9092`` (or ``a:9092,b:9092``) -> ``["a:9092", "b:9092"]``."""
    hosts = []
    for part in url.replace(";", ",").split(","):
        part = part.strip()
        if part.startswith("kafka://"):
            part = part[len("kafka://"):]
        part = part.rstrip("/")
        if part:
            hosts.append(part)
    if not hosts:
        raise ValueError(f"FUNNEL_KAFKA_URL {url!r} names no broker")
    return hosts


def load_funnels(path: Path | None) -> FunnelsConfig:
    """The funnel configuration from ``path`` (YAML), or the built-in default.

    Raises FunnelConfigError naming the file, the funnel and the problem.
    """
    if path is None:
        return default_config()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise FunnelConfigError(f"{path}: cannot read funnel config: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FunnelConfigError(f"{path}: not valid YAML: {exc}") from None
    return FunnelsConfig.from_mapping(data, source=str(path))
