"""deploy/helm/funnel: the chart rendered (tests/unit/deploy/helm_render.py) and checked against
the Kubernetes schemas (kubernetes-validate), with the settings the worker really reads."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_support import DEPLOY
from helm_render import Unsupported, render

from streams.settings import SECRET_FIELDS, Settings, load_funnels
from tests.named_stages import B2B, FUNNELS_YAML

CHART = DEPLOY / "helm" / "funnel"
KUBERNETES = "1.30.0"


def _values(**changes: Any) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path, value in changes.items():
        node = values
        *parents, leaf = path.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return values


def manifests(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    docs = []
    for template in sorted((CHART / "templates").glob("*.yaml")):
        text = render(template.read_text(), copy.deepcopy(values), chart=chart)
        docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def _kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


VARIANTS = {
    "defaults": {},
    "cluster and storage class": {"clickhouse__cluster": "funnel_cluster",
                                  "storage__storageClassName": "ssd"},
    "service monitor, extra settings": {"serviceMonitor__enabled": True,
                                        "env": {"FUNNEL_LOG_LEVEL": "debug", "FUNNEL_WINDOW_SECONDS": 300}},
}


@pytest.mark.parametrize("changes", VARIANTS.values(), ids=list(VARIANTS))
def test_every_manifest_passes_the_kubernetes_schema(changes: dict[str, Any]) -> None:
    docs = manifests(_values(**changes))
    kinds = sorted(d["kind"] for d in docs)
    expected = ["ConfigMap", "Job", "PodDisruptionBudget", "Service", "StatefulSet"]
    monitor = ["ServiceMonitor"] if "serviceMonitor__enabled" in changes else []
    assert kinds == sorted([*expected, *monitor])
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD of the Prometheus Operator: not in Kubernetes' schemas
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_schema_check_can_fail() -> None:
    statefulset = _kind(manifests(_values()), "StatefulSet")
    statefulset["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES, strict=True)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def test_workers_keep_their_store_answer_probes_and_are_scraped() -> None:
    docs = manifests(_values())
    statefulset = _kind(docs, "StatefulSet")
    pod = statefulset["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["args"] == ["worker"]
    env = _env(container)
    assert env["FUNNEL_STORE"] == "rocksdb://" and env["FUNNEL_DATA_DIR"] == "/var/lib/funnel"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == "/var/lib/funnel"
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == env["FUNNEL_WEB_PORT"] == "6066"
    assert _kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    job = _kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_secrets_are_referenced_never_given(tmp_path: Path) -> None:
    docs = manifests(_values())
    statefulset = _kind(docs, "StatefulSet")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "funnel-secrets"
    env = _env(statefulset["spec"]["template"]["spec"]["containers"][0])
    files = {name for name in env if name.endswith("_FILE")} - {"FUNNEL_FUNNELS_FILE"}
    assert files == {f"FUNNEL_{f.upper()}_FILE" for f in SECRET_FIELDS} - {"FUNNEL_EMAIL_HASH_KEY_FILE"}
    assert all(env[name].startswith("/run/secrets/funnel/") for name in files)
    # No secret as a plain value, in the manifests or the values.
    assert not {f"FUNNEL_{f.upper()}" for f in SECRET_FIELDS} & set(env)
    assert "password" not in {key.lower() for key in _values()["kafka"]}


def test_every_setting_the_chart_sets_is_one_the_worker_reads() -> None:
    known = {f"FUNNEL_{name.upper()}" for name in Settings.model_fields}
    known |= {f"FUNNEL_{name.upper()}_FILE" for name in SECRET_FIELDS}
    for doc in manifests(_values(**VARIANTS["cluster and storage class"])):
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert set(_env(container)) <= known, doc["kind"]


def test_the_funnels_file_is_a_valid_funnel_configuration(tmp_path: Path) -> None:
    configmap = _kind(manifests(_values()), "ConfigMap")
    path = tmp_path / "funnels.yaml"
    path.write_text(configmap["data"]["funnels.yaml"])
    assert [f.name for f in load_funnels(path).funnels] == ["default"]


def test_a_funnels_file_with_named_stages_goes_through_unchanged(tmp_path: Path) -> None:
    """Stages named otherwise than event types, with filters (tests/named_stages.py), reach the
    workers as written."""
    configmap = _kind(manifests(_values(funnels=FUNNELS_YAML)), "ConfigMap")
    path = tmp_path / "funnels.yaml"
    path.write_text(configmap["data"]["funnels.yaml"])
    assert load_funnels(path).by_name["b2b"] == B2B


def test_the_renderer_refuses_what_it_does_not_implement() -> None:
    for template in ("{{ include \"x\" . }}", "{{ .Values.a | upper }}", "{{- if .Values.a }}x",
                     "{{ default 1 .Values.a }}", "x{{ end }}"):
        with pytest.raises(Unsupported):
            render(template, {"a": "b"})
    assert render("a: {{ .Values.a | quote }}\n{{- if .Values.b }}\nb: 1\n{{- end }}", {"a": "x"}) == 'a: "x"'
