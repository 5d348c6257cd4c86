"""One settings object, read from ``FUNNEL_*`` environment variables.

Every field names its variable; the README's configuration table lists the
same. Secrets are ``SecretStr`` and ``str(settings)`` masks them.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas import FunnelConfigError, FunnelsConfig, default_config

__all__ = ["Settings", "load_funnels", "split_brokers"]


#: Secret settings: each also read from the file ``FUNNEL_<NAME>_FILE`` names.
SECRET_FIELDS = ("clickhouse_url", "clickhouse_reader_url", "email_hash_key", "kafka_sasl_password")


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="FUNNEL_KAFKA_SECURITY_PROTOCOL: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="FUNNEL_KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* only)."
    )
    kafka_sasl_username: str | None = Field(None, description="FUNNEL_KAFKA_SASL_USERNAME: SASL user.")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="FUNNEL_KAFKA_SASL_PASSWORD: SASL password (or FUNNEL_KAFKA_SASL_PASSWORD_FILE)."
    )
    kafka_ssl_cafile: Path | None = Field(
        None, description="FUNNEL_KAFKA_SSL_CAFILE: CA bundle (PEM) the brokers' certificates are checked "
        "against; unset: the system's."
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="FUNNEL_KAFKA_SSL_CERTFILE: client certificate (PEM), for brokers that ask for one."
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="FUNNEL_KAFKA_SSL_KEYFILE: the client certificate's private key (PEM)."
    )
    kafka_allow_sasl_plaintext: bool = Field(
        False, description="FUNNEL_KAFKA_ALLOW_SASL_PLAINTEXT: allow SASL_PLAINTEXT to a broker that is "
        "not on this machine (the password crosses the network readable)."
    )
    clickhouse_url: SecretStr | None = Field(
        None, description="FUNNEL_CLICKHOUSE_URL: http(s)://user:pass@host:port/db for a server, "
        "chdb:///path for the embedded engine. Unset in `funnel demo`: chdb under FUNNEL_DATA_DIR."
    )
    clickhouse_reader_url: SecretStr | None = Field(
        None, description="FUNNEL_CLICKHOUSE_READER_URL: a read-only ClickHouse user for /sql, the page, its "
        "API, `funnel sql` and `funnel report`; unset: FUNNEL_CLICKHOUSE_URL's user, in a readonly session."
    )
    clickhouse_ca_file: Path | None = Field(
        None, description="FUNNEL_CLICKHOUSE_CA_FILE: CA bundle (PEM) an https:// ClickHouse's certificate "
        "is checked against; unset: the system's."
    )
    clickhouse_verify: bool = Field(
        True, description="FUNNEL_CLICKHOUSE_VERIFY: check an https:// ClickHouse's certificate; false "
        "only for a test server (the connection is then open to interception)."
    )
    clickhouse_cluster: str | None = Field(
        None, description="FUNNEL_CLICKHOUSE_CLUSTER: apply the schema ON CLUSTER with Replicated and "
        "Distributed tables (deploy/clickhouse on a cluster); unset: one server."
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

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """``FUNNEL_<SECRET>_FILE`` names a file holding the secret (Docker and Kubernetes secrets)."""
        if not isinstance(data, dict):
            return data
        for field in SECRET_FIELDS:
            variable = f"FUNNEL_{field.upper()}"
            path = os.environ.get(f"{variable}_FILE")
            if not path:
                continue
            if data.get(field) is not None:
                raise ValueError(f"{variable} and {variable}_FILE are both set: set one")
            try:
                data[field] = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from None
        return data

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _kafka_security(self) -> Settings:
        """Security settings that cannot work fail here, naming the setting."""
        protocol = self.kafka_security_protocol
        sasl = protocol.startswith("SASL_")
        for field in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password"):
            given = getattr(self, field) is not None
            if sasl and not given:
                raise ValueError(f"FUNNEL_{field.upper()} is required with "
                                 f"FUNNEL_KAFKA_SECURITY_PROTOCOL={protocol}")
            if given and not sasl:
                raise ValueError(f"FUNNEL_{field.upper()} is set, but FUNNEL_KAFKA_SECURITY_PROTOCOL="
                                 f"{protocol} uses no SASL (SASL_PLAINTEXT or SASL_SSL do)")
        for field in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, field)
            if path is None:
                continue
            if not protocol.endswith("SSL"):
                raise ValueError(f"FUNNEL_{field.upper()} is set, but FUNNEL_KAFKA_SECURITY_PROTOCOL="
                                 f"{protocol} uses no TLS (SSL or SASL_SSL do)")
            if not path.is_file():
                raise ValueError(f"FUNNEL_{field.upper()}: {path} is not a readable file")
        if self.clickhouse_ca_file is not None and not self.clickhouse_ca_file.is_file():
            raise ValueError(f"FUNNEL_CLICKHOUSE_CA_FILE: {self.clickhouse_ca_file} is not a readable file")
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("FUNNEL_KAFKA_SSL_KEYFILE is set without FUNNEL_KAFKA_SSL_CERTFILE")
        if protocol == "SASL_PLAINTEXT" and self.kafka_url and not self.kafka_allow_sasl_plaintext:
            remote = [h for h in split_brokers(self.kafka_url) if not _loopback(h.rsplit(":", 1)[0])]
            if remote:
                raise ValueError(f"FUNNEL_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT would send the password "
                                 f"readable to {', '.join(remote)}: use SASL_SSL, or set "
                                 "FUNNEL_KAFKA_ALLOW_SASL_PLAINTEXT=true")
        return self

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
        for name in ("clickhouse_url", "clickhouse_reader_url"):
            secret = getattr(self, name)
            url = secret.get_secret_value() if secret else None
            if url and "@" in url:
                scheme, rest = url.split("://", 1)
                fields[name] = f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
            else:
                fields[name] = url
        fields["email_hash_key"] = "***" if self.email_hash_key else None
        fields["kafka_sasl_password"] = "***" if self.kafka_sasl_password else None
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
