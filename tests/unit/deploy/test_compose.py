"""docker-compose.yml, deploy/Dockerfile and the README's "Production" section, checked
statically (no Docker engine here): `docker-compose config` from Debian's
docker-compose 1.29 validates and interpolates the file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    DEPLOY,
    PROMETHEUS_DIR,
    REPO,
    bind_mounts,
    compose_config,
    compose_services,
    container_path_of,
    default_compose_config,
    load_yaml,
    readme_production,
)

README = readme_production()
# Rows of the services table: | `name` | host port (or a dash) | what |
README_SERVICES = dict(re.findall(r"^\| `([\w-]+)` \| ([^|]*?) \|", README, re.M))
STATEFUL = {"kafka": "kafka-data", "clickhouse": "clickhouse-data",
            "prometheus": "prometheus-data", "grafana": "grafana-data"}  # fmt: skip


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of a service's published ports."""
    result = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            address = port.get("host_ip", "0.0.0.0")
            result.append((address, int(port["published"]), int(port["target"])))
        else:
            *address, host, container = port.split("/")[0].split(":")
            result.append((address[0] if address else "0.0.0.0", int(host), int(container)))
    return result


def test_config_is_valid_with_defaults_only() -> None:
    # Raises with docker-compose's own message when invalid or when a variable
    # without a default is missing.
    assert default_compose_config()["services"]


def test_environment_reaches_the_services() -> None:
    services = compose_config(
        {
            "CLICKHOUSE_USER": "analyst",
            "CLICKHOUSE_PASSWORD": "s3cret",
            "ALERT_WEBHOOK_URL": "https://hooks.example.com/funnel",
            "PUBLISH_ADDRESS": "0.0.0.0",
            "GRAFANA_PORT": "3300",
        }
    )["services"]
    url = "http://analyst:s3cret@clickhouse:8123/funnel"
    for name in ("worker", "migrate", "generator"):
        assert services[name]["environment"]["FUNNEL_CLICKHOUSE_URL"] == url
    assert services["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] == "s3cret"
    assert services["grafana"]["environment"]["CLICKHOUSE_PASSWORD"] == "s3cret"
    assert services["alertmanager"]["environment"]["ALERT_WEBHOOK_URL"].startswith("https://")
    assert ("0.0.0.0", 3300, 3000) in _published(services["grafana"])


def test_readme_lists_exactly_the_compose_services() -> None:
    assert set(README_SERVICES) == set(compose_services())


def test_readme_ports_match_the_published_ports() -> None:
    for name, service in compose_services().items():
        documented = README_SERVICES[name].strip()
        published = [str(host) for _, host, _ in _published(service)]
        assert published == ([documented] if documented.isdigit() else []), name


def test_published_host_ports_do_not_collide() -> None:
    ports = [host for s in compose_services().values() for _, host, _ in _published(s)]
    assert len(ports) == len(set(ports))


def test_host_ports_bind_to_loopback_by_default() -> None:
    addresses = {a for s in compose_services().values() for a, _, _ in _published(s)}
    assert addresses == {"127.0.0.1"}


def test_worker_scales() -> None:
    """`docker compose up --scale worker=3` needs replicas that share nothing
    host-wide: no published port, no fixed container name."""
    worker = compose_services()["worker"]
    assert "ports" not in worker
    assert not any("container_name" in s for s in compose_services().values())
    assert worker["command"] == ["worker"]
    assert worker["environment"] == {
        "FUNNEL_KAFKA_URL": "kafka://kafka:9092",
        "FUNNEL_CLICKHOUSE_URL": "http://funnel:funnel@clickhouse:8123/funnel",
        "FUNNEL_STORE": "rocksdb://",
        "FUNNEL_TOPIC_PARTITIONS": "12",
        # Reachable from Prometheus' container, not only from the worker's own.
        "FUNNEL_WEB_HOST": "0.0.0.0",
        "FUNNEL_WEB_PORT": "6066",
    }
    # Replicas must not share one RocksDB directory.
    assert not worker.get("volumes")


@pytest.mark.parametrize(
    ("service", "command"),
    [
        ("worker", ["worker"]),
        ("migrate", ["migrate"]),
        ("generator", ["generate", "--rate", "200"]),
    ],
)
def test_funnel_services_run_the_funnel_image(service: str, command: list[str]) -> None:
    spec = compose_services()[service]
    assert spec["command"] == command
    assert spec["build"]["dockerfile"] == "deploy/Dockerfile"
    assert Path(spec["build"]["context"]).resolve() == REPO
    assert spec["image"] == compose_services()["worker"]["image"]


def test_generator_is_an_optional_profile() -> None:
    assert compose_services()["generator"]["profiles"] == ["generator"]
    optional = {"generator", "clickhouse-shard1", "clickhouse-shard2"}  # the cluster profile's too
    assert all("profiles" not in s for n, s in compose_services().items() if n not in optional)


def test_start_order() -> None:
    services = compose_services()
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }
    assert services["migrate"]["depends_on"] == {"clickhouse": {"condition": "service_healthy"}}
    # Workers create the topics; the generator needs them.
    assert services["generator"]["depends_on"] == {"worker": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} -> {dependency}"
            if spec["condition"] == "service_completed_successfully":
                assert services[dependency]["restart"] == "no", f"{name} -> {dependency}"


def test_long_running_services_have_healthchecks() -> None:
    for name, service in compose_services().items():
        if service.get("restart") != "no" and name != "generator":
            assert "healthcheck" in service, name


def test_kafka_runs_kraft_without_topic_auto_creation() -> None:
    kafka = compose_services()["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_funnel_services_agree_on_topic_partitions() -> None:
    """Workers refuse to start when a topic's partition count differs from
    FUNNEL_TOPIC_PARTITIONS, so every funnel service gets the same value."""
    services = compose_config({"FUNNEL_TOPIC_PARTITIONS": "24"})["services"]
    for name in ("worker", "migrate", "generator"):
        assert services[name]["environment"]["FUNNEL_TOPIC_PARTITIONS"] == "24"


def test_state_lives_in_named_volumes() -> None:
    config = default_compose_config()
    for service, volume in STATEFUL.items():
        sources = [v.split(":")[0] for v in config["services"][service]["volumes"]]
        assert volume in sources, service
        assert volume in config["volumes"]


def test_mounted_deploy_files_exist() -> None:
    mounts = [(n, src) for n, s in compose_services().items() for src, _ in bind_mounts(s)]
    assert mounts
    for name, source in mounts:
        assert source.is_relative_to(DEPLOY), f"{name} mounts {source} from outside deploy/"
        assert source.exists(), f"{name} mounts missing {source}"


def test_prometheus_scrapes_every_worker_and_alerts_alertmanager() -> None:
    services = compose_services()
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (discovery,) = jobs["funnel-worker"]["dns_sd_configs"]
    # Docker DNS answers a service name with every replica's address.
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"
    assert discovery["port"] == int(services["worker"]["environment"]["FUNNEL_WEB_PORT"])
    for manager in config["alerting"]["alertmanagers"]:
        for target in manager["static_configs"][0]["targets"]:
            host, port = target.split(":")
            assert host in services and int(port) == 9093
    prometheus = services["prometheus"]
    config_dir = container_path_of(prometheus, PROMETHEUS_DIR)
    assert f"--config.file={config_dir}/prometheus.yml" in prometheus["command"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(maxsplit=1)[0].upper(), line.split(maxsplit=1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_builds_the_funnel_image() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert ("ENTRYPOINT", '["funnel"]') in instructions
    assert any(op == "RUN" and "pip install '.[rocksdb]'" in arg for op, arg in instructions)


def test_dockerfile_copies_only_files_that_exist() -> None:
    """Build context is the repository root. A directory must hold files, or a
    fresh clone (git keeps no empty directories) would not have it."""
    copies = [arg.split() for op, arg in _dockerfile_instructions() if op == "COPY"]
    sources = [REPO / src for *srcs, _ in copies for src in srcs if not src.startswith("--")]
    assert sources
    for source in sources:
        assert source.is_file() or any(p.is_file() for p in source.rglob("*")), source


def test_readme_override_example_merges(tmp_path: Path) -> None:
    (example,) = [block for block in re.findall(r"```yaml\n(.*?)```", README, re.S) if "*external" in block]
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(example)
    services = compose_config({}, override)["services"]
    for name in ("migrate", "worker"):
        assert services[name]["environment"]["FUNNEL_KAFKA_URL"] != "kafka://kafka:9092"


def test_the_cluster_profile_matches_its_config_files() -> None:
    """Two shards of one replica, Keeper in the first, as remote_servers, macros and keeper say."""
    import xml.etree.ElementTree as ET

    services = compose_services()
    cluster_dir = DEPLOY / "clickhouse" / "cluster"
    shards = {name: s for name, s in services.items() if name.startswith("clickhouse-shard")}
    assert set(shards) == {"clickhouse-shard1", "clickhouse-shard2"}
    assert all(s["profiles"] == ["cluster"] for s in shards.values())
    servers = ET.parse(cluster_dir / "remote_servers.xml").getroot()
    replicas = servers.findall("./remote_servers/funnel_cluster/shard/replica")
    assert [r.findtext("host") for r in replicas] == sorted(shards)
    assert servers.findtext("./zookeeper/node/host") == "clickhouse-shard1"
    keeper = ET.parse(cluster_dir / "keeper.xml").getroot()
    assert keeper.findtext("./keeper_server/raft_configuration/server/hostname") == "clickhouse-shard1"
    assert servers.findtext("./zookeeper/node/port") == keeper.findtext("./keeper_server/tcp_port")
    macros = {}
    for name, service in shards.items():
        mounted = {target: source for source, target in bind_mounts(service)}
        assert mounted["/etc/clickhouse-server/config.d/remote_servers.xml"].name == "remote_servers.xml"
        assert ("/etc/clickhouse-server/config.d/keeper.xml" in mounted) == (name == "clickhouse-shard1")
        root = ET.parse(mounted["/etc/clickhouse-server/config.d/macros.xml"]).getroot()
        macros[name] = (root.findtext("./macros/shard"), root.findtext("./macros/replica"))
        assert macros[name][1] == name == service["hostname"]
    assert len({shard for shard, _ in macros.values()}) == 2  # one {shard} per node


def test_the_readme_cluster_override_merges(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text()
    block = text[text.index("To try it with Compose, start the `cluster` profile"):]
    override = tmp_path / "docker-compose.override.yml"
    override.write_text(re.search(r"```yaml\n(.*?)```", block, re.S).group(1))  # type: ignore[union-attr]
    services = compose_config({}, override)["services"]
    for name in ("migrate", "worker"):
        env = services[name]["environment"]
        assert env["FUNNEL_CLICKHOUSE_CLUSTER"] == "funnel_cluster"
        assert "@clickhouse-shard1:8123/" in env["FUNNEL_CLICKHOUSE_URL"]
