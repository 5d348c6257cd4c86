"""streams.settings: FUNNEL_* environment, masking of secrets, broker lists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings, split_brokers


def test_defaults_without_environment(env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.kafka_url, s.clickhouse_url, s.funnels_file, s.email_hash_key) == (None, None, None, None)
    assert (s.window_seconds, s.allowed_lateness_seconds, s.topic_partitions) == (60, 300.0, 4)
    assert s.channel_list == ["seo", "ads", "social", "email", "partner", "direct", "referral"]
    assert s.topic("visit") == "funnel.visit"


def test_environment_with_funnel_prefix(env: pytest.MonkeyPatch) -> None:
    env.setenv("FUNNEL_KAFKA_URL", "kafka://k1:9092,k2:9092")
    env.setenv("FUNNEL_WINDOW_SECONDS", "30")
    env.setenv("FUNNEL_TOPIC_PREFIX", "shop.")
    env.setenv("FUNNEL_CHANNELS", " seo, Ads ,,tiktok ")
    env.setenv("FUNNEL_FUNNELS_FILE", "/etc/funnel/funnels.yaml")
    env.setenv("FUNNEL_LOG_LEVEL", "WARNING")
    env.setenv("WINDOW_SECONDS", "999")  # without the prefix: not ours
    s = Settings()
    assert (s.kafka_url, s.window_seconds, s.topic("purchase")) == (
        "kafka://k1:9092,k2:9092", 30, "shop.purchase")
    assert s.channel_list == ["seo", "Ads", "tiktok"]
    assert s.funnels_file == Path("/etc/funnel/funnels.yaml")
    assert s.log_level == "warn"


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("FUNNEL_WINDOW_SECONDS", "0", "window_seconds"),
        ("FUNNEL_WINDOW_SECONDS", "a minute", "window_seconds"),
        ("FUNNEL_TOPIC_PARTITIONS", "-1", "topic_partitions"),
        ("FUNNEL_MAX_MESSAGE_BYTES", "100", "max_message_bytes"),
        ("FUNNEL_LOG_LEVEL", "verbose", "log_level"),
    ],
)
def test_invalid_values_name_the_setting(env: pytest.MonkeyPatch, name: str, value: str, field: str) -> None:
    env.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert [e["loc"] for e in caught.value.errors()] == [(field,)]


def test_str_masks_clickhouse_password_and_hash_key(env: pytest.MonkeyPatch) -> None:
    env.setenv("FUNNEL_CLICKHOUSE_URL", "https://admin:s3cr%40t@ch.example.com:8443/funnel")
    env.setenv("FUNNEL_EMAIL_HASH_KEY", "hunter2")
    s = Settings()
    text = str(s)
    assert "clickhouse_url=https://***@ch.example.com:8443/funnel" in text.split()
    assert "email_hash_key=***" in text.split()
    for shown in (text, repr(s)):
        assert "s3cr" not in shown and "hunter2" not in shown and "admin" not in shown
    assert s.clickhouse_url is not None and s.email_hash_key is not None
    assert s.email_hash_key.get_secret_value() == "hunter2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("chdb:///var/lib/funnel/chdb", "clickhouse_url=chdb:///var/lib/funnel/chdb"),
        ("http://ch:8123/funnel", "clickhouse_url=http://ch:8123/funnel"),
        (None, "clickhouse_url=None"),
    ],
)
def test_str_shows_urls_without_credentials(env: pytest.MonkeyPatch, url: str | None, shown: str) -> None:
    if url:
        env.setenv("FUNNEL_CLICKHOUSE_URL", url)
    text = str(Settings()).split()
    assert shown in text
    assert "email_hash_key=None" in text


@pytest.mark.parametrize(
    ("url", "brokers"),
    [
        ("kafka://a:9092,b:9092", ["a:9092", "b:9092"]),
        ("a:9092", ["a:9092"]),
        (" kafka://a:9092/ ; kafka://b:9093 ,", ["a:9092", "b:9093"]),
    ],
)
def test_split_brokers(url: str, brokers: list[str]) -> None:
    assert split_brokers(url) == brokers


@pytest.mark.parametrize("url", ["", " , ", "kafka://"])
def test_split_brokers_needs_a_broker(url: str) -> None:
    with pytest.raises(ValueError, match="names no broker"):
        split_brokers(url)


def test_rocksdb_bounds_reach_the_journeys_table(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from streams.pipeline import Pipeline
    from streams.settings import load_funnels

    env.setenv("FUNNEL_ROCKSDB_WRITE_BUFFER_MB", "4")
    env.setenv("FUNNEL_ROCKSDB_BLOCK_CACHE_MB", "16")
    tables = {}
    for store in ("rocksdb://", "memory://"):
        pipeline = Pipeline(Settings(kafka_url="kafka://127.0.0.1:9", data_dir=tmp_path, store=store),
                            load_funnels(None), clickhouse=None, database="funnel",  # type: ignore[arg-type]
                            registry=CollectorRegistry())
        tables[store] = pipeline.journeys.options
        pipeline.close()
    assert tables["rocksdb://"] == {"write_buffer_size": 4 << 20, "max_write_buffer_number": 2,
                                    "block_cache_size": 16 << 20}
    assert tables["memory://"] is None


# -- secrets from files -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CLICKHOUSE_URL", "CLICKHOUSE_READER_URL", "KAFKA_SASL_PASSWORD",
                                  "EMAIL_HASH_KEY"])
def test_a_secret_comes_from_the_variable_or_its_file_not_both(
        env: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    secret = "http://u:s3cret@ch:8123/db" if name.startswith("CLICKHOUSE") else "s3cret"
    sasl = {"FUNNEL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "FUNNEL_KAFKA_SASL_MECHANISM": "scram-sha-512",
            "FUNNEL_KAFKA_SASL_USERNAME": "funnel"} if name == "KAFKA_SASL_PASSWORD" else {}
    for key, value in sasl.items():
        env.setenv(key, value)
    field = name.lower()
    if name == "KAFKA_SASL_PASSWORD":  # the other forms need a password too
        env.setenv("FUNNEL_KAFKA_SASL_PASSWORD", secret)
    else:
        env.setenv(f"FUNNEL_{name}", secret)
    assert getattr(Settings(), field).get_secret_value() == secret
    env.delenv(f"FUNNEL_{name}")
    path = tmp_path / "secret"
    path.write_text(secret + "\n")  # as `echo` writes it: the newline is not part of the secret
    env.setenv(f"FUNNEL_{name}_FILE", str(path))
    s = Settings()
    assert getattr(s, field).get_secret_value() == secret
    assert "s3cret" not in str(s) and "s3cret" not in repr(s)
    env.setenv(f"FUNNEL_{name}", secret)
    with pytest.raises(ValidationError, match=f"FUNNEL_{name} and FUNNEL_{name}_FILE are both set"):
        Settings()
    env.delenv(f"FUNNEL_{name}")
    env.setenv(f"FUNNEL_{name}_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match=f"FUNNEL_{name}_FILE: cannot read .*missing"):
        Settings()


# -- Kafka security -----------------------------------------------------------------------------


def _kafka(env: pytest.MonkeyPatch, **values: str) -> Settings:
    for key, value in values.items():
        env.setenv(f"FUNNEL_KAFKA_{key.upper()}", value)
    return Settings()


def test_sasl_needs_a_mechanism_a_user_and_a_password(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="FUNNEL_KAFKA_SASL_MECHANISM is required with "
                                              "FUNNEL_KAFKA_SECURITY_PROTOCOL=SASL_SSL"):
        _kafka(env, security_protocol="sasl_ssl")
    with pytest.raises(ValidationError, match="FUNNEL_KAFKA_SASL_USERNAME is required"):
        _kafka(env, sasl_mechanism="SCRAM-SHA-512")
    with pytest.raises(ValidationError, match="FUNNEL_KAFKA_SASL_PASSWORD is required"):
        _kafka(env, sasl_username="funnel")
    s = _kafka(env, sasl_password="pw")
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")


def test_settings_for_another_protocol_are_refused_by_name(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="FUNNEL_KAFKA_SASL_MECHANISM is set, but "
                                              "FUNNEL_KAFKA_SECURITY_PROTOCOL=PLAINTEXT uses no SASL"):
        _kafka(env, sasl_mechanism="PLAIN")
    env.delenv("FUNNEL_KAFKA_SASL_MECHANISM")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ValidationError, match="FUNNEL_KAFKA_SSL_CAFILE is set, but "
                                              "FUNNEL_KAFKA_SECURITY_PROTOCOL=PLAINTEXT uses no TLS"):
        _kafka(env, ssl_cafile=str(ca))
    with pytest.raises(ValidationError, match=r"FUNNEL_KAFKA_SSL_CAFILE: .*nothing\.pem is not a readable"):
        _kafka(env, security_protocol="SSL", ssl_cafile=str(tmp_path / "nothing.pem"))
    with pytest.raises(ValidationError, match="FUNNEL_KAFKA_SSL_KEYFILE is set without FUNNEL_KAFKA_SSL"):
        _kafka(env, ssl_cafile=str(ca), ssl_keyfile=str(ca))
    with pytest.raises(ValidationError, match="kafka_security_protocol\n  Input should be 'PLAINTEXT'"):
        _kafka(env, security_protocol="TLS")


def test_sasl_over_plaintext_to_another_machine_needs_an_explicit_yes(env: pytest.MonkeyPatch) -> None:
    sasl = {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "sasl_username": "u",
            "sasl_password": "p"}
    assert _kafka(env, url="kafka://127.0.0.1:9092,localhost:9093,[::1]:9094", **sasl)
    with pytest.raises(ValidationError, match=re.escape(
            "would send the password readable to k1.example:9092: use SASL_SSL, or set "
            "FUNNEL_KAFKA_ALLOW_SASL_PLAINTEXT=true")):
        _kafka(env, url="kafka://127.0.0.1:9092,k1.example:9092")
    assert _kafka(env, allow_sasl_plaintext="true").kafka_allow_sasl_plaintext
