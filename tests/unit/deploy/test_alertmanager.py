"""Alertmanager config, its render script and its wiring into the stack."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from deploy_support import (
    ALERTMANAGER_DIR,
    alerting_rules,
    compose_services,
    container_path_of,
    load_yaml,
    run_tool,
)

CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
ENTRYPOINT = ALERTMANAGER_DIR / "entrypoint.sh"
# Characters a real webhook URL carries that naive sed/YAML templating breaks.
TRICKY_URL = "https://hooks.example.com/services/T0/B1?token=a&b=it's|ok"


def _render(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs entrypoint.sh as the container does, with `true` as the command."""
    out = tmp_path / "alertmanager.yml"
    variables = {"ALERTMANAGER_TEMPLATE": str(CONFIG), "ALERTMANAGER_CONFIG": str(out), **env}
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "true"],
        env={"PATH": "/usr/bin:/bin", **variables},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _receiver_urls(path: Path) -> dict[str, str]:
    return {
        receiver["name"]: receiver["webhook_configs"][0]["url"]
        for receiver in load_yaml(path)["receivers"]
    }


def test_config_is_valid() -> None:
    run_tool("amtool", "check-config", CONFIG)


@pytest.mark.parametrize("severity", sorted({r["labels"]["severity"] for r in alerting_rules()}))
def test_every_severity_has_its_own_route(severity: str) -> None:
    route = load_yaml(CONFIG)["route"]
    matching = [r for r in route["routes"] if f'severity="{severity}"' in r["matchers"]]
    assert len(matching) == 1
    # amtool agrees on where such an alert ends up.
    out = run_tool("amtool", "config", "routes", "test", f"--config.file={CONFIG}",
                   f"severity={severity}")  # fmt: skip
    assert out.split() == [matching[0]["receiver"]]


def test_critical_alerts_go_to_oncall() -> None:
    out = run_tool("amtool", "config", "routes", "test", f"--config.file={CONFIG}",
                   "severity=critical", "alertname=FunnelPipelineDead")  # fmt: skip
    assert out.split() == ["oncall"]


def test_inhibit_rules_name_real_alerts_and_components() -> None:
    alerts = {r["alert"] for r in alerting_rules()}
    components = {r["labels"]["component"] for r in alerting_rules()}
    for rule in load_yaml(CONFIG)["inhibit_rules"]:
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            label, value = matcher.split("=", 1)
            known = {"alertname": alerts, "component": components}.get(label)
            if known is not None:
                assert value.strip('"') in known, matcher


def test_render_inserts_urls_literally(tmp_path: Path) -> None:
    proc = _render(tmp_path, ALERT_WEBHOOK_URL=TRICKY_URL)
    assert proc.returncode == 0, proc.stderr
    rendered = tmp_path / "alertmanager.yml"
    # The critical URL defaults to the general one.
    assert _receiver_urls(rendered) == {"team": TRICKY_URL, "oncall": TRICKY_URL}
    run_tool("amtool", "check-config", rendered)


def test_render_keeps_separate_critical_url(tmp_path: Path) -> None:
    pager = "https://pager.example.com/alertmanager"
    proc = _render(tmp_path, ALERT_WEBHOOK_URL=TRICKY_URL, ALERT_CRITICAL_WEBHOOK_URL=pager)
    assert proc.returncode == 0, proc.stderr
    assert _receiver_urls(tmp_path / "alertmanager.yml") == {"team": TRICKY_URL, "oncall": pager}


def test_render_without_urls_keeps_a_valid_config_and_says_so(tmp_path: Path) -> None:
    proc = _render(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ALERT_WEBHOOK_URL is not set" in proc.stderr
    assert (tmp_path / "alertmanager.yml").read_text() == CONFIG.read_text()


def test_render_rejects_a_non_http_url(tmp_path: Path) -> None:
    proc = _render(tmp_path, ALERT_WEBHOOK_URL="hooks.example.com/no-scheme")
    assert proc.returncode != 0
    assert "must be an http(s):// URL" in proc.stderr


def test_compose_runs_the_rendered_config() -> None:
    service = compose_services()["alertmanager"]
    config_dir = container_path_of(service, ALERTMANAGER_DIR)
    assert service["entrypoint"] == ["/bin/sh", f"{config_dir}/entrypoint.sh"]
    # entrypoint.sh writes /tmp/alertmanager.yml unless told otherwise.
    assert "--config.file=/tmp/alertmanager.yml" in service["command"]
    assert set(service["environment"]) == {"ALERT_WEBHOOK_URL", "ALERT_CRITICAL_WEBHOOK_URL"}
