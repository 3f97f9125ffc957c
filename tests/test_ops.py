"""The deployment artefacts checked with real tools: `kustomize build` of every overlay, Kubernetes schema
validation (pinned version), structural checks of the KEDA and Prometheus-operator objects, the invariants the
operations issue asks for (hardening, GPU, autoscaling, PDBs, NetworkPolicies), `promtool check rules` and
`promtool test rules`, the Grafana dashboard, and the Dockerfile (hadolint and structure).

The live check of every dashboard and alert selector against real servers is tests/test_ops_prometheus.py.
"""

from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError
from prometheus_client import Counter, Gauge, Histogram

from devtools.ops_tools import (
    ALERT_TESTS,
    DASHBOARD,
    KUBERNETES_VERSION,
    OVERLAYS,
    REPO,
    dashboard_exprs,
    docs_exprs,
    find,
    kustomize_build,
    metric_name,
    one,
    promql_selectors,
    recording_rules,
    rule_exprs,
    rule_groups,
    run,
    scaler_exprs,
    tool,
    write_rules,
)
from service import metrics
from service.cli import build_parser
from service.config import Settings

pytestmark = pytest.mark.ops

CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
DEPLOYMENTS = ("dfguard-gateway", "dfguard-worker", "dfguard-triton")
JOBS = {"dfguard-gateway", "dfguard-worker", "dfguard-triton"}  # the ServiceMonitors' job labels


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize_build(overlay) for overlay in OVERLAYS}


def _pod_specs(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in find(objs, "Deployment")}


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _settings_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    env: dict[str, str] = dict(one(objs, "ConfigMap", "dfguard-settings")["data"])
    return env


# --- kustomize and Kubernetes schemas -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_every_component(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    for name in DEPLOYMENTS:
        one(objs, "Deployment", name)
        one(objs, "Service", name)
        one(objs, "PodDisruptionBudget", name)
        one(objs, "ServiceMonitor", name)
        one(objs, "ServiceAccount", name)
    one(objs, "HorizontalPodAutoscaler", "dfguard-gateway")
    one(objs, "ScaledObject", "dfguard-worker")
    one(objs, "PrometheusRule", "dfguard")
    one(objs, "ConfigMap", "dfguard-grafana-dashboard")
    one(objs, "ConfigMap", "dfguard-settings")
    namespace = one(objs, "Namespace", "dfguard" if overlay == "prod" else f"dfguard-{overlay}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == namespace["metadata"]["name"], o["metadata"]["name"]
    # Images are pinned by the overlay, never a floating tag.
    for pod in _pod_specs(objs).values():
        for c in _containers(pod):
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_pinned_kubernetes(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    """Strict: unknown fields (typos) are errors, as `kubectl apply --validate=strict` would make them."""
    checked = 0
    for obj in built[overlay]:
        if obj["kind"] in CRD_KINDS:
            with pytest.raises(SchemaNotFoundError):  # CRDs are checked structurally below
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e.message} at {list(e.absolute_path)}")
        checked += 1
    assert checked >= 20


def test_schema_validation_catches_a_typo(built: dict[str, list[dict[str, Any]]]) -> None:
    """Negative control: the validator really rejects an unknown field and a wrong type."""
    deployment = copy.deepcopy(one(built["prod"], "Deployment", "dfguard-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    hpa = copy.deepcopy(one(built["prod"], "HorizontalPodAutoscaler", "dfguard-gateway"))
    hpa["spec"]["maxReplicas"] = "forty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


# --- CRDs: structural schemas of the fields used (KEDA 2.x ScaledObject, Prometheus operator v1) ------------

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
}


def _obj(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api},
            "kind": {"const": kind},
            "metadata": _META,
            "spec": spec,
        },
    }


def _strict(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": list(required), "properties": props}


_INT = {"type": "integer", "minimum": 0}
_INT_STRING = {"type": "string", "pattern": r"^[0-9]+$"}
SCALED_OBJECT = _obj(
    "keda.sh/v1alpha1",
    "ScaledObject",
    _strict(
        {
            "scaleTargetRef": _strict(
                {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
                ("name",),
            ),
            "pollingInterval": _INT,
            "cooldownPeriod": _INT,
            "initialCooldownPeriod": _INT,
            "idleReplicaCount": _INT,
            "minReplicaCount": _INT,
            "maxReplicaCount": _INT,
            "fallback": _strict({"failureThreshold": _INT, "replicas": _INT}),
            "advanced": _strict(
                {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": _strict({"name": {"type": "string"}, "behavior": {}}),
                    "scalingModifiers": _strict(
                        {
                            "formula": {"type": "string"},
                            "target": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                            "activationTarget": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"},
                            "metricType": {"enum": ["AverageValue", "Value"]},
                        },
                        ("formula", "target"),
                    ),
                }
            ),
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": _strict(
                    {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": _LABELS,  # KEDA reads trigger metadata as strings only
                        "authenticationRef": _strict(
                            {"name": {"type": "string"}, "kind": {"type": "string"}}
                        ),
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                    },
                    ("type", "metadata"),
                ),
            },
        },
        ("scaleTargetRef", "triggers"),
    ),
)
# Keys of KEDA's kafka scaler (keda.sh/docs/2.x/scalers/apache-kafka) and which must be integers.
KAFKA_TRIGGER_KEYS = {
    "bootstrapServers", "bootstrapServersFromEnv", "consumerGroup", "consumerGroupFromEnv", "topic",
    "topicFromEnv", "lagThreshold", "activationLagThreshold", "offsetResetPolicy", "allowIdleConsumers",
    "excludePersistentLag", "scaleToZeroOnInvalidOffset", "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions", "partitionLimitation", "version", "sasl", "tls",
}  # fmt: skip
# Keys of KEDA's prometheus scaler (keda.sh/docs/2.x/scalers/prometheus).
PROMETHEUS_TRIGGER_KEYS = {
    "serverAddress", "query", "threshold", "activationThreshold", "namespace", "customHeaders",
    "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout", "authModes",
}  # fmt: skip
SERVICE_MONITOR = _obj(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _strict(
        {
            "jobLabel": {"type": "string"},
            "selector": _strict({"matchLabels": _LABELS}, ("matchLabels",)),
            "namespaceSelector": _strict({"any": {"type": "boolean"}, "matchNames": {"type": "array"}}),
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": _strict(
                    {
                        "port": {"type": "string"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                    },
                    ("port",),
                ),
            },
        },
        ("selector", "endpoints"),
    ),
)
PROMETHEUS_RULE = _obj(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _strict(
        {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": _strict(
                    {
                        "name": {"type": "string"},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "rules": {
                            "type": "array",
                            "items": _strict(
                                {
                                    "alert": {"type": "string"},
                                    "record": {"type": "string"},
                                    "expr": {"type": "string"},
                                    "for": {"type": "string", "pattern": _DURATION},
                                    "labels": _LABELS,
                                    "annotations": _LABELS,
                                },
                                ("expr",),
                            ),
                        },
                    },
                    ("name", "rules"),
                ),
            }
        },
        ("groups",),
    ),
)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_are_structurally_valid(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = built[overlay]
    schemas = {
        "ScaledObject": SCALED_OBJECT,
        "ServiceMonitor": SERVICE_MONITOR,
        "PrometheusRule": PROMETHEUS_RULE,
    }
    for obj in objs:
        if obj["kind"] in schemas:
            jsonschema.validate(obj, schemas[obj["kind"]])
    # The HPA behaviour KEDA passes through is a Kubernetes type: validate it as one.
    so = one(objs, "ScaledObject", "dfguard-worker")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-dfguard-worker"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dfguard-worker"},
            "maxReplicas": so["spec"]["maxReplicaCount"],
            "behavior": so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    rules = one(objs, "PrometheusRule", "dfguard")
    assert all("alert" in r or "record" in r for g in rules["spec"]["groups"] for r in g["rules"])


# --- what the issue asks of the manifests -------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_sized(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    accounts = {sa["metadata"]["name"] for sa in find(objs, "ServiceAccount")}
    for name, pod in _pod_specs(objs).items():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] in accounts, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        assert all("hostPath" not in v for v in pod.get("volumes", [])), name
        for c in _containers(pod):
            where = f"{name}/{c['name']}"
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, where
            assert csc["readOnlyRootFilesystem"] is True, where
            assert csc["capabilities"]["drop"] == ["ALL"] and "add" not in csc["capabilities"], where
            assert not csc.get("privileged"), where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert "memory" in c["resources"]["limits"], where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: read-only root needs a writable /tmp"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_gpu_plans_shm_and_readiness(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    pod = _pod_specs(objs)["dfguard-triton"]
    triton = next(c for c in pod["containers"] if c["name"] == "triton")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "--strict-readiness=true" in triton["args"]
    assert "--model-repository=/models/repo" in triton["args"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"]
    assert any(m["name"] == "dshm" and m["mountPath"] == "/dev/shm" for m in triton["volumeMounts"])
    build_repo, build_plans = pod["initContainers"]
    # Init 1: the dfguard image writes the GPU repository with ONNX files, and hands over the script.
    assert (
        build_repo["image"]
        == one(objs, "Deployment", "dfguard-gateway")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert "dfguard triton build-repo --target gpu --out /models/repo" in " ".join(build_repo["args"])
    assert "cp /opt/dfguard/scripts/build_trt_plans.sh /models/" in " ".join(build_repo["args"])
    # From the settings the gateway and worker read (DFG_MODEL_PATHS, DFG_SHADOW_MODEL_PATHS): `ensemble` and
    # `shadow_ensemble` hold exactly the models their clients prepare crops for.
    assert any(
        r.get("configMapRef", {}).get("name", "").startswith("dfguard-settings")
        for r in build_repo["envFrom"]
    )
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY scripts/build_trt_plans.sh /opt/dfguard/scripts/build_trt_plans.sh" in dockerfile
    # Init 2: trtexec on the GPU, in NVIDIA's TensorRT image of the same release as the Triton image, so the
    # plans' TensorRT version is the one Triton loads.
    assert build_plans["command"] == ["bash", "/models/build_trt_plans.sh", "/models/repo"]
    assert build_plans["resources"]["limits"]["nvidia.com/gpu"] == 1
    release = re.compile(r"nvcr\.io/nvidia/(tensorrt|tritonserver):(\d\d\.\d\d)-py3")
    m_plans, m_triton = release.fullmatch(build_plans["image"]), release.fullmatch(triton["image"])
    assert m_plans and m_triton and m_plans.group(2) == m_triton.group(2)
    env = {e["name"]: e["value"] for e in build_plans["env"]}
    assert int(env["MAX_BATCH"]) == Settings().max_batch_size  # plans cover the service's largest batch
    assert {t["key"] for t in pod["tolerations"]} == {"nvidia.com/gpu"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_hpa_on_cpu_and_in_flight(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    hpa = one(objs, "HorizontalPodAutoscaler", "dfguard-gateway")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dfguard-gateway"}
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    kinds = {m["type"]: m for m in hpa["metrics"]}
    assert kinds["Resource"]["resource"]["name"] == "cpu"
    pods = kinds["Pods"]["pods"]
    assert pods["metric"]["name"] == "dfguard_in_flight_requests"
    assert isinstance(metrics.IN_FLIGHT, Gauge) and metrics.IN_FLIGHT._name == "dfguard_in_flight_requests"
    # In flight per pod never exceeds DFG_WORKERS: a target at or above it would never scale out.
    target = pods["target"]["averageValue"]
    value = int(target[:-1]) / 1000 if target.endswith("m") else float(target)
    workers = int(_settings_env(objs)["DFG_WORKERS"])
    assert 0 < value < workers


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_scaled_on_lag_up_to_partition_count(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = built[overlay]
    so = one(objs, "ScaledObject", "dfguard-worker")
    partitions = int(so["metadata"]["annotations"]["dfguard.io/uploads-topic-partitions"])
    spec = so["spec"]
    assert spec["maxReplicaCount"] == partitions
    assert 1 <= spec["minReplicaCount"] <= partitions
    assert spec["scaleTargetRef"]["name"] == "dfguard-worker"
    triggers = {t["name"]: t for t in spec["triggers"]}
    assert {t["type"] for t in triggers.values()} == {"kafka", "prometheus"} and len(triggers) == 2
    trigger = triggers["lag"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KAFKA_TRIGGER_KEYS, set(meta) - KAFKA_TRIGGER_KEYS
    assert meta["allowIdleConsumers"] == "false" and int(meta["lagThreshold"]) > 0
    assert meta["offsetResetPolicy"] in ("earliest", "latest")
    # The *FromEnv keys name variables of the worker container (from the settings ConfigMap).
    pod = _pod_specs(objs)["dfguard-worker"]
    container = next(
        c for c in pod["containers"] if c["name"] == spec["scaleTargetRef"]["envSourceContainerName"]
    )
    assert container["args"] == ["worker"]
    env = _settings_env(objs)
    assert any(
        ref.get("configMapRef", {}).get("name", "").startswith("dfguard-settings")
        for ref in container["envFrom"]
    )
    for key in ("bootstrapServersFromEnv", "consumerGroupFromEnv", "topicFromEnv"):
        assert env[meta[key]], key
    # The worker's metrics port is the one its Service and ServiceMonitor scrape.
    port = next(p for p in container["ports"] if p["name"] == "metrics")["containerPort"]
    assert int(env["DFG_WORKER_METRICS_PORT"]) == port and env["DFG_WORKER_METRICS_HOST"] == "0.0.0.0"
    # Liveness on the loop, readiness on group membership (a held worker stays ready: rolling updates).
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, probe


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_sees_the_hold(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """While every worker is held the scaler asks for no replicas beyond the minimum: the formula zeroes the
    lag when the `held` trigger (a Prometheus query over this namespace's workers) reports 1."""
    objs = built[overlay]
    so = one(objs, "ScaledObject", "dfguard-worker")
    namespace = so["metadata"]["namespace"]
    held = next(t for t in so["spec"]["triggers"] if t["name"] == "held")
    meta = held["metadata"]
    assert held["type"] == "prometheus" and set(meta) <= PROMETHEUS_TRIGGER_KEYS, set(meta)
    assert meta["serverAddress"].startswith("http") and float(meta["threshold"]) > 0
    assert meta["ignoreNullValues"] == "true", "no series must never block scaling on lag"
    query = meta["query"]
    assert f'namespace="{namespace}"' in query and 'job="dfguard-worker"' in query, query
    assert [metric_name(s) for s in promql_selectors(query)] == [
        "dfguard_worker_held_since_timestamp_seconds"
    ]
    modifiers = so["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "held > 0 ? 0 : lag"
    lag = next(t for t in so["spec"]["triggers"] if t["name"] == "lag")
    assert modifiers["target"] == lag["metadata"]["lagThreshold"], "scaling on lag is unchanged when not held"
    assert modifiers.get("metricType", "AverageValue") == "AverageValue"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_real_settings(
    built: dict[str, list[dict[str, Any]]], overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key of the settings ConfigMap (and the dev Secret) is a `Settings` field and its value parses."""
    objs = built[overlay]
    env = _settings_env(objs)
    for secret in find(objs, "Secret", "dfguard-secrets"):
        env.update({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    fields = {f"DFG_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.backend == "triton" and settings.triton_url == "dfguard-triton:8001"
    # The Triton Service answers gRPC on the port the settings name.
    triton = one(objs, "Service", "dfguard-triton")
    assert {"name": "grpc", "port": 8001} in [
        {"name": p["name"], "port": p["port"]} for p in triton["spec"]["ports"]
    ]
    # Every container that reads the settings also gets the secrets (DFG_DATABASE_URL, DFG_API_KEYS).
    for name in ("dfguard-gateway", "dfguard-worker"):
        refs = _pod_specs(objs)[name]["containers"][0]["envFrom"]
        assert any(r.get("secretRef", {}).get("name", "").startswith("dfguard-secrets") for r in refs), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdbs_cover_each_deployment(built: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    objs = built[overlay]
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in find(objs, "Deployment")
    }
    for pdb in find(objs, "PodDisruptionBudget"):
        want = pdb["spec"]["selector"]["matchLabels"]
        matched = [n for n, labels in pods.items() if want.items() <= labels.items()]
        assert matched == [pdb["metadata"]["name"]], (pdb["metadata"]["name"], matched)
        assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])
    assert {p["metadata"]["name"] for p in find(objs, "PodDisruptionBudget")} == set(pods)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_expose_only_the_gateway(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = built[overlay]
    policies = find(objs, "NetworkPolicy")
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in find(objs, "Deployment")}

    def selects(policy: dict[str, Any], pod: str) -> bool:
        want = policy["spec"]["podSelector"].get("matchLabels", {})
        return bool(want.items() <= pods[pod]["metadata"]["labels"].items())

    default_deny = [
        p for p in policies if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
    ]
    assert default_deny and all(not p["spec"].get("ingress") for p in default_deny)
    for name in pods:
        container_ports = {p["name"] for c in pods[name]["spec"]["containers"] for p in c.get("ports", [])}
        for policy in policies:
            if not selects(policy, name) or policy in default_deny:
                continue
            for rule in policy["spec"].get("ingress", []):
                ports = {p["port"] for p in rule["ports"]}
                assert ports <= container_ports, (policy["metadata"]["name"], ports)
                sources = rule.get("from")
                if not sources:  # open to any source: only the gateway's HTTP port
                    assert name == "dfguard-gateway" and ports == {"http"}, policy["metadata"]["name"]
                    continue
                for src in sources:
                    if "namespaceSelector" in src:  # monitoring: metrics ports only
                        assert ports == {"metrics"} or (ports == {"http"} and name == "dfguard-gateway")
                    else:
                        peer = src["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                        assert name == "dfguard-triton" and peer in {"dfguard-gateway", "dfguard-worker"}
                        assert ports == {"grpc", "http"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitors_scrape_real_ports_with_the_rules_job_names(
    built: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    objs = built[overlay]
    services = {s["metadata"]["name"]: s for s in find(objs, "Service")}
    jobs = set()
    for sm in find(objs, "ServiceMonitor"):
        spec = sm["spec"]
        matched = [
            s
            for s in services.values()
            if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, sm["metadata"]["name"]
        service = matched[0]
        jobs.add(service["metadata"]["labels"][spec["jobLabel"]])
        port_names = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in spec["endpoints"]} <= port_names
    assert jobs == JOBS
    used = {
        m.group(1)
        for e in [*rule_exprs(), *dashboard_exprs()]
        for m in re.finditer(r'job=~?"([^"]+)"', e.promql)
    }
    assert {j for u in used for j in u.split("|")} <= JOBS, used


# --- alert rules and dashboard ------------------------------------------------------------------------------


def _exported_names() -> set[str]:
    """Sample names service/metrics.py can export (with the client's suffixes)."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        if isinstance(obj, Counter):
            names |= {f"{obj._name}_total", f"{obj._name}_created"}
        elif isinstance(obj, Histogram):
            names |= {f"{obj._name}_{s}" for s in ("bucket", "count", "created")}
            if obj._upper_bounds[0] >= 0:  # OpenMetrics: no _sum with negative buckets (the client omits it)
                names.add(f"{obj._name}_sum")
        elif isinstance(obj, Gauge):
            names.add(obj._name)
    return names


def test_metric_names_exist() -> None:
    """Every dfguard_* name in an alert, a panel or the docs is a metric of service/metrics.py, and every
    `a:b:c` name a recording rule of ours (Triton's nv_* names are checked against a real Triton by
    tests/test_ops_prometheus.py)."""
    exported = _exported_names()
    exprs = [*rule_exprs(), *dashboard_exprs(), *docs_exprs(), *scaler_exprs()]
    used = {metric_name(s) for e in exprs for s in promql_selectors(e.promql)}
    ours = {n for n in used if n.startswith("dfguard_")}
    assert ours <= exported, ours - exported
    recorded = {n for n in used if ":" in n}
    assert recorded <= set(recording_rules()), recorded - set(recording_rules())
    assert used - ours - recorded <= {"up"} | {n for n in used if n.startswith("nv_")}
    assert len(docs_exprs()) >= 3  # the SLOs


def test_promql_selector_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (namespace, le) (rate(a_bucket{job="x", le!="1"}[5m]))) > 10 '
        "and on (namespace) sum without (pod) (b) / ignoring (code) group_left (route) c_total offset 5m "
        'or max(time() - d{x=~"a|b"}) * 0 unless count_values("v", e) atan2 f[10m:1m]'
    )
    assert promql_selectors(expr) == ['a_bucket{job="x", le!="1"}', "b", "c_total", 'd{x=~"a|b"}', "e", "f"]
    assert promql_selectors('{__name__="g", y="z"}') == ['{__name__="g", y="z"}']
    assert metric_name('{__name__="g", y="z"}') == "g"


def test_promtool_check_rules(tmp_path: Path) -> None:
    out = run([tool("promtool"), "check", "rules", str(write_rules(tmp_path))]).stdout
    n = sum(len(g["rules"]) for g in rule_groups()["groups"])
    assert f"SUCCESS: {n} rules found" in out, out


def test_promtool_unit_tests_cover_every_rule(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    out = run([tool("promtool"), "test", "rules", ALERT_TESTS.name], cwd=tmp_path).stdout
    assert "SUCCESS" in out, out
    alerts = {r["alert"] for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    checks = [c for t in cases for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in checks if c["exp_alerts"]}
    silent = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert alerts == fired == silent, (alerts, fired, silent)
    tested_exprs = " ".join(c["expr"] for t in cases for c in t.get("promql_expr_test", []))
    assert all(record in tested_exprs for record in recording_rules()), recording_rules().keys()
    for group in rule_groups()["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
                assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]


def test_dashboard_is_complete_and_provisioned(built: dict[str, list[dict[str, Any]]]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    for overlay in OVERLAYS:
        cm = one(built[overlay], "ConfigMap", "dfguard-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["dfguard.json"]) == dashboard
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
    exprs = "\n".join(e.promql for e in dashboard_exprs(dashboard))
    # What the issue asks the dashboard to show, by the metrics that show it.
    for needle in (
        "dfguard_http_requests_total",
        "dfguard_http_request_duration_seconds_bucket",
        "dfguard_errors_total",
        "dfguard_stage_duration_seconds_bucket",
        "sum by (decision) (rate(dfguard_decisions_total",
        "max by (topic, partition) (dfguard_worker_consumer_lag",
        "dfguard_worker_events_dead_lettered_total",
        "sum(rate(dfguard_dedup_hits_total",
        "min by (dependency) (dfguard_worker_dependency_up",
        "dfguard_worker_held_since_timestamp_seconds{",
        "/ sum(rate(dfguard_dedup_lookups_total",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
        "(rate(nv_inference_count{",
        "/ sum by (model) (rate(nv_inference_exec_count{",
        "nv_gpu_utilization",
        "sum by (primary, shadow) (increase(dfguard_shadow_decisions_total",
        "sum by (reason) (rate(dfguard_shadow_skipped_total",
        "sum by (le) (rate(dfguard_shadow_score_difference_bucket",
        "dfguard_shadow_queue_depth{",
        # Evidence for reviewers: each gateway and worker reports the store's bytes per tenant (max, not sum).
        "max by (tenant) (dfguard_evidence_stored_bytes{",
        "sum by (reason) (rate(dfguard_evidence_purged_total",
        "sum by (outcome) (rate(dfguard_evidence_captures_total",
        "sum by (outcome) (rate(dfguard_evidence_overlays_total",
        # Speech: tracks by outcome, the audio stage's time and windows per track.
        "sum by (outcome) (rate(dfguard_audio_tracks_total",
        'dfguard_stage_duration_seconds_bucket{namespace="dfguard", stage="audio"}',
        "sum(rate(dfguard_audio_windows_total",
        "dfguard_evidence_queue_depth{",
        "histogram_quantile(0.95, sum by (job, le) (rate(dfguard_evidence_overlay_seconds_bucket",
    ):
        assert needle in exprs, needle
    assert "sum by (tenant) (dfguard_evidence_stored_bytes" not in exprs  # would count the store once per pod
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "Rollouts: shadow model" in rows
    assert "Evidence for reviewers" in rows
    # Triton's ensembles only forward to their members: per-member panels leave both out.
    assert 'model!="ensemble"' not in exprs and 'model!~"ensemble|shadow_ensemble"' in exprs


def _shadow_series(namespace: str, pairs: dict[tuple[str, str, str], int]) -> list[dict[str, str]]:
    """promtool series of dfguard_shadow_decisions_total: (pod, primary, shadow) -> increase per 15 s."""
    return [
        {
            "series": f'dfguard_shadow_decisions_total{{namespace="{namespace}", pod="{pod}", '
            f'primary="{primary}", shadow="{shadow}"}}',
            "values": f"0+{step}x40",
        }
        for (pod, primary, shadow), step in pairs.items()
    ]


def test_dashboard_shadow_changed_share_counts_only_changed_decisions(tmp_path: Path) -> None:
    """The "decisions changed" panel, evaluated by promtool on known counters: a selector cannot compare two
    labels, so the expression's arithmetic (agreeing pairs found with label_replace) is checked by its
    results, including the all-agree case, where a plain `unless` would leave no series at all."""
    (expr,) = [e.promql for e in dashboard_exprs() if "'Shadow: decisions changed'" in e.where]
    mixed = {
        ("a", "allow", "allow"): 3,
        ("b", "allow", "allow"): 3,  # the same pair on two pods: summed, not a duplicate-series error
        ("a", "flag", "flag"): 2,
        ("a", "allow", "flag"): 1,
        ("b", "review", "allow"): 1,
    }
    cases = [
        (_shadow_series("dfguard", mixed) + _shadow_series("other", {("c", "allow", "flag"): 50}), 200),
        (_shadow_series("dfguard", {("a", "allow", "allow"): 4, ("b", "review", "review"): 1}), 0),
        (_shadow_series("dfguard", {("a", "allow", "flag"): 4, ("a", "flag", "review"): 1}), 1000),
    ]  # per mille, rounded: this promtool compares floats exactly
    tests = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": f"round(1000 * ({expr}))",
                        "eval_time": "5m",
                        "exp_samples": [{"labels": "{}", "value": want}],
                    }
                ],
            }
            for series, want in cases
        ],
    }
    (tmp_path / "shadow.test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    out = run([tool("promtool"), "test", "rules", "shadow.test.yaml"], cwd=tmp_path).stdout
    assert "SUCCESS" in out, out


# --- Dockerfile ---------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    out = run([tool("hadolint"), "--format", "json", str(REPO / "Dockerfile")]).stdout
    assert json.loads(out) == []


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    included = True
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        for i in range(1, len(parts) + 1):
            if re.fullmatch(regex, "/".join(parts[:i])) or (
                pattern.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pattern[3:])
            ):
                included = negate
                break
    return included


def test_dockerfile_structure() -> None:
    """Multi-stage, non-root, the CLI as entry point, and every COPY source in the build context."""
    text = (REPO / "Dockerfile").read_text()
    lines = [
        ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")
    ]
    stages = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(stages) >= 2 and stages[0].endswith(" AS build") and stages[-1].endswith(" AS runtime")
    final = lines[lines.index(stages[-1]) :]
    user = [ln for ln in final if ln.startswith("USER ")]
    assert user and re.fullmatch(r"USER [1-9][0-9]*:[1-9][0-9]*", user[-1]), user
    assert not any(ln.startswith("ADD ") for ln in lines)  # COPY only: no remote URLs, no auto-extraction
    assert 'ENTRYPOINT ["dfguard"]' in final
    cmd = json.loads(next(ln for ln in final if ln.startswith("CMD "))[4:])
    assert cmd[0] == "serve"
    ignore = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"
    ]
    copies = [ln.split()[1:-1] for ln in lines if ln.startswith("COPY ") and "--from=" not in ln]
    assert copies
    for sources in copies:
        for src in sources:
            assert (REPO / src).exists(), src
            assert _dockerignore_allows(src.rstrip("/"), ignore), f"{src} is excluded by .dockerignore"
            if (REPO / src).is_dir():
                assert _dockerignore_allows(f"{src.rstrip('/')}/__init__.py", ignore)
    assert not _dockerignore_allows(".venv/bin/python", ignore)
    assert not _dockerignore_allows("service/__pycache__/x.pyc", ignore)
    # The subcommands the manifests run exist in the CLI the image installs.
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"serve", "worker", "triton"} <= set(sub.choices)
