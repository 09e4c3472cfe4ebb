"""deploy/k8s: rendered the way kustomize renders it, validated against Kubernetes' OpenAPI schemas
(kubernetes-validate ships them offline, strict mode rejects unknown fields), then checked for wiring:
selectors, probes, settings names, the Qdrant cluster bootstrap, the embedder's client-side balancing."""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.deployfiles import K8S_DIR, env_example_names, settings_env_names
from tests.deploy.services import SERVICE_SETTINGS, settings_class

# The oldest Kubernetes these manifests target (native gRPC probes are GA from 1.27) and the newest schema.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}

Resource = dict[str, Any]


def render(folder: Path = K8S_DIR) -> list[Resource]:
    """The subset of ``kustomize build`` our kustomization uses: resources, namespace, labels, images."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    allowed = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
    assert set(kustomization) <= allowed, f"the test renderer does not know {set(kustomization) - allowed}"
    resources: list[Resource] = []
    for name in kustomization["resources"]:
        resources += [doc for doc in yaml.safe_load_all((folder / name).read_text()) if doc]
    tags = {image["name"]: image.get("newTag") for image in kustomization.get("images", [])}
    for resource in resources:
        meta = resource.setdefault("metadata", {})
        if resource["kind"] not in CLUSTER_SCOPED and "namespace" in kustomization:
            meta["namespace"] = kustomization["namespace"]
        for label_set in kustomization.get("labels", []):
            meta.setdefault("labels", {}).update(label_set["pairs"])
        for container in _containers(resource):
            image = container["image"]
            if tags.get(image):
                container["image"] = f"{image}:{tags[image]}"
    return resources


def _pod_spec(resource: Resource) -> dict[str, Any] | None:
    spec = resource.get("spec", {})
    if resource["kind"] in ("Deployment", "StatefulSet", "Job"):
        pod: dict[str, Any] = spec["template"]["spec"]
        return pod
    return None


def _containers(resource: Resource) -> Iterator[dict[str, Any]]:
    pod = _pod_spec(resource)
    if pod:
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


@pytest.fixture(scope="module")
def resources() -> list[Resource]:
    return render()


def by_kind(resources: list[Resource], kind: str, name: str) -> Resource:
    for resource in resources:
        if resource["kind"] == kind and resource["metadata"]["name"] == name:
            return resource
    raise AssertionError(f"no {kind}/{name} in deploy/k8s")


def schema_errors(resource: Resource, version: str) -> str | None:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.absolute_path))
        return f"{resource['kind']}/{resource['metadata'].get('name')}: {path}: {exc.message}"
    return None


# -- schemas ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_matches_the_kubernetes_openapi_schema(
    resources: list[Resource], version: str
) -> None:
    errors = [e for r in resources if (e := schema_errors(r, version))]
    assert errors == []
    kinds = {r["kind"] for r in resources}
    assert {"StatefulSet", "Deployment", "HorizontalPodAutoscaler", "Job", "Service", "ConfigMap"} <= kinds


def test_the_schema_check_catches_a_broken_manifest(resources: list[Resource]) -> None:
    embedder = copy.deepcopy(by_kind(resources, "Deployment", "embedder"))
    embedder["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    assert schema_errors(embedder, K8S_VERSIONS[0])
    typo = copy.deepcopy(by_kind(resources, "StatefulSet", "qdrant"))
    typo["spec"]["replica"] = 3
    assert schema_errors(typo, K8S_VERSIONS[0])


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is not installed: the Python renderer stands in"
)
def test_the_renderer_agrees_with_kubectl_kustomize(resources: list[Resource]) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, check=True)
    rendered = [doc for doc in yaml.safe_load_all(out.stdout) if doc]
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    assert sorted(rendered, key=key) == sorted(resources, key=key)


# -- wiring ------------------------------------------------------------------------------------------------


def test_no_secret_is_committed_and_every_secret_reference_names_one_secret(
    resources: list[Resource],
) -> None:
    assert not [r for r in resources if r["kind"] == "Secret"]
    refs = {
        (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
        for r in resources
        for c in _containers(r)
        for item in c.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert refs == {("recipelens-secrets", "qdrant-api-key"), ("recipelens-secrets", "gateway-api-keys")}
    assert (
        "kubectl -n recipelens create secret generic recipelens-secrets"
        in (K8S_DIR / "README.md").read_text()
    )


def test_services_select_pods_and_probes_use_declared_ports(resources: list[Resource]) -> None:
    pods = {r["metadata"]["name"]: r for r in resources if _pod_spec(r)}
    for service in (r for r in resources if r["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matches = [
            p
            for p in pods.values()
            if selector.items() <= p["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matches, f"Service {service['metadata']['name']} selects no pod"
        ports = {
            port["name"]: port["containerPort"]
            for m in matches
            for c in _containers(m)
            for port in c["ports"]
        }
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), (service["metadata"]["name"], port)
    for workload in pods.values():
        spec = workload["spec"]
        if "selector" in spec:
            assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        for container in _containers(workload):
            declared = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name)
                if probe is None:
                    continue
                (kind,) = set(probe) & {"grpc", "httpGet", "tcpSocket", "exec"}
                port = probe[kind].get("port")
                assert port in declared or port in declared.values(), (
                    workload["metadata"]["name"],
                    probe_name,
                )


def test_probes_use_the_health_services(resources: list[Resource]) -> None:
    (embedder,) = _containers(by_kind(resources, "Deployment", "embedder"))
    assert embedder["readinessProbe"]["grpc"] == {"port": 50051, "service": "recipelens.v1.Embedder"}
    assert "grpc" in embedder["livenessProbe"] and "grpc" in embedder["startupProbe"]
    (gateway,) = _containers(by_kind(resources, "Deployment", "gateway"))
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (qdrant,) = _containers(by_kind(resources, "StatefulSet", "qdrant"))
    assert qdrant["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_config_map_sets_only_real_settings_and_env_example_names_them(resources: list[Resource]) -> None:
    config = by_kind(resources, "ConfigMap", "recipelens-config")["data"]
    env_names = {
        item["name"]
        for r in resources
        for c in _containers(r)
        for item in c.get("env", [])
        if item["name"].startswith("RECIPELENS_")
    }
    for key in set(config) | env_names:
        settings = settings_class(key)
        if settings is not None:
            assert key in settings_env_names(settings), f"{key} is not a setting of {settings.__name__}"
        assert key in env_example_names(), f"{key} is missing from .env.example"
    assert all(key.startswith(tuple(SERVICE_SETTINGS)) for key in config)


def test_qdrant_runs_as_a_three_node_cluster(resources: list[Resource]) -> None:
    statefulset = by_kind(resources, "StatefulSet", "qdrant")
    headless = by_kind(resources, "Service", statefulset["spec"]["serviceName"])
    assert statefulset["spec"]["replicas"] == 3
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert 6335 in {p["port"] for p in headless["spec"]["ports"]}
    (qdrant,) = _containers(statefulset)
    env = {item["name"]: item.get("value") for item in qdrant["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true" and env["QDRANT__CLUSTER__P2P__PORT"] == "6335"
    assert "QDRANT__SERVICE__API_KEY" in env
    script = qdrant["args"][0]
    headless_name = headless["metadata"]["name"]
    assert f'--bootstrap "http://{statefulset["metadata"]["name"]}-0.{headless_name}:6335"' in script
    assert f'self="http://${{HOSTNAME}}.{headless_name}:6335"' in script
    config = by_kind(resources, "ConfigMap", "recipelens-config")["data"]
    assert int(config["RECIPELENS_INDEXER_STORE__REPLICATION_FACTOR"]) == 2
    assert int(config["RECIPELENS_INDEXER_STORE__SHARD_NUMBER"]) % statefulset["spec"]["replicas"] == 0
    budget = by_kind(resources, "PodDisruptionBudget", "qdrant")
    assert budget["spec"]["maxUnavailable"] < int(config["RECIPELENS_INDEXER_STORE__REPLICATION_FACTOR"])


def test_embedder_scales_and_gateway_balances_over_its_pods(resources: list[Resource]) -> None:
    service = by_kind(resources, "Service", "embedder")
    assert service["spec"]["clusterIP"] == "None", "client-side balancing needs every pod address in DNS"
    hpa = by_kind(resources, "HorizontalPodAutoscaler", "embedder")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = by_kind(resources, target["kind"], target["name"])
    (container,) = _containers(deployment)
    assert "cpu" in container["resources"]["requests"], "a CPU-utilisation HPA needs a CPU request"
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    config = by_kind(resources, "ConfigMap", "recipelens-config")["data"]
    port = service["spec"]["ports"][0]["port"]
    assert config["RECIPELENS_GATEWAY_EMBEDDER_ADDRESS"] == f"dns:///{service['metadata']['name']}:{port}"


def test_indexer_job_reads_the_catalogue_volume(resources: list[Resource]) -> None:
    job = by_kind(resources, "Job", "recipelens-index")
    (container,) = _containers(job)
    args = container["args"]
    assert args[0] == "build"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert args[args.index("--catalog") + 1] in mounts
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mounts["/catalog"]]["persistentVolumeClaim"]["claimName"]
    by_kind(resources, "PersistentVolumeClaim", claim)
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
