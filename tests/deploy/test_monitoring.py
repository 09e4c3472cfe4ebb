"""deploy/grafana and deploy/k8s/monitoring: the dashboard and the metrics HPA ask only for metrics the
services export, the HPA's custom metrics are ones the adapter rules produce, and the manifests are valid.

The gateway's metric names and labels are read from a live ``GatewayMetrics`` registry, the embedder's
from a live ``EmbedderMetrics`` (embedder/metrics.py, issue 15) once that module is on this branch; until
then from ``EMBEDDER_METRICS`` below, a copy of what the quant branch's module defines (commit 89f25e9).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.metrics import GatewayMetrics
from tests.deploy.deployfiles import K8S_DIR, ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "recipelens-dashboard.json"
MONITORING = K8S_DIR / "monitoring"
# embedder/metrics.py on the quant branch (89f25e9): name → labels
EMBEDDER_METRICS = {
    "recipelens_embedder_requests": {"model_version", "method"},
    "recipelens_embedder_images": {"model_version", "method"},
    "recipelens_embedder_errors": {"method", "code"},
    "recipelens_embedder_request_seconds": {"method"},
    "recipelens_embedder_batch_size": {"model_version"},
    "recipelens_embedder_queue_wait_seconds": {"model_version"},
    "recipelens_embedder_inference_seconds": {"model_version"},
    "recipelens_embedder_in_flight_requests": set(),
    "recipelens_embedder_model_loaded": {"model_version", "name", "numerics", "provider"},
}
_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")
_METRIC = re.compile(r"\brecipelens_[a-z0-9_]+")
_BY = re.compile(r"\bby \(([^)]*)\)")
PROM_LABELS = {"le", "job", "instance", "namespace", "pod"}  # added by histograms and by scraping


def base_name(sample: str) -> str:
    return _SUFFIX.sub("", sample)


def registry_metrics(registry: Any) -> dict[str, set[str]]:
    """Metric family name → label names, from a prometheus_client registry."""
    found: dict[str, set[str]] = {}
    for collector in registry._collector_to_names:
        name = base_name(getattr(collector, "_name", ""))
        if name:
            found[name] = set(getattr(collector, "_labelnames", ()))
    return found


def gateway_metrics() -> dict[str, set[str]]:
    return registry_metrics(GatewayMetrics().registry)


def embedder_metrics() -> dict[str, set[str]]:
    """The embedder's metrics from its real registry once embedder/metrics.py exists, else the copy above."""
    if importlib.util.find_spec("embedder.metrics") is None:
        return EMBEDDER_METRICS
    module = importlib.import_module("embedder.metrics")
    return registry_metrics(module.EmbedderMetrics().registry)


def exported() -> dict[str, set[str]]:
    return {**gateway_metrics(), **embedder_metrics()}


def dashboard_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_gateway_metric_names_are_read_from_the_real_registry() -> None:
    names = gateway_metrics()
    assert "recipelens_gateway_requests" in names and names["recipelens_gateway_requests"] >= {"api", "code"}


def dashboard_problems(dashboard: dict[str, Any]) -> list[str]:
    """Metrics or grouping labels the dashboard asks for that no service exports."""
    metrics = exported()
    problems = []
    for title, expr in dashboard_targets(dashboard):
        samples = _METRIC.findall(expr)
        for sample in samples:
            name = base_name(sample)
            if name not in metrics:
                problems.append(f"panel {title!r}: {sample} is exported by no service")
            elif len(samples) == 1:
                for group in _BY.findall(expr):
                    labels = {label.strip() for label in group.split(",") if label.strip()}
                    if unknown := labels - metrics[name] - PROM_LABELS:
                        problems.append(f"panel {title!r}: {name} has no label {sorted(unknown)}")
    return problems


def test_dashboard_shows_both_services_with_metrics_they_export() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard_problems(dashboard) == []
    used = {base_name(sample) for _, expr in dashboard_targets(dashboard) for sample in _METRIC.findall(expr)}
    assert {n for n in used if n.startswith("recipelens_gateway_")} == set(gateway_metrics())
    assert {n for n in used if n.startswith("recipelens_embedder_")} == set(embedder_metrics())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert {var["name"] for var in dashboard["templating"]["list"]} == {"datasource", "job"}


def test_the_dashboard_check_catches_an_unknown_metric_or_label() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace(
        "recipelens_gateway_requests_total", "recipelens_gateway_request_total"
    )
    assert dashboard_problems(dashboard)
    dashboard = json.loads(DASHBOARD.read_text())
    target = dashboard["panels"][1]["targets"][0]
    target["expr"] = target["expr"].replace("by (api, method)", "by (api, route)")
    assert any("route" in problem for problem in dashboard_problems(dashboard))


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.utils.latest_version()])
def test_monitoring_manifests_match_the_kubernetes_schema(version: str) -> None:
    for path in sorted(MONITORING.glob("*.yaml")):
        for doc in _documents(path):
            kubernetes_validate.validate(doc, version, strict=True)


def test_metrics_hpa_replaces_the_cpu_hpa_and_scales_on_adapter_metrics() -> None:
    (hpa,) = _documents(MONITORING / "embedder-hpa.yaml")
    base = next(d for d in _documents(K8S_DIR / "embedder.yaml") if d["kind"] == "HorizontalPodAutoscaler")
    assert (
        hpa["metadata"]["name"] == base["metadata"]["name"]
        and hpa["spec"]["scaleTargetRef"] == (base["spec"]["scaleTargetRef"])
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        base["spec"]["minReplicas"],
        base["spec"]["maxReplicas"],
    )
    assert (
        hpa["metadata"]["namespace"]
        == yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["namespace"]
    )
    pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"} == {"cpu"}
    (adapter,) = _documents(MONITORING / "prometheus-adapter-rules.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    produced = {rule["name"]["as"] for rule in rules}
    assert pods_metrics <= produced, "the HPA asks for a metric no adapter rule serves"
    for rule in rules:
        (series,) = _METRIC.findall(rule["seriesQuery"])
        assert base_name(series) in embedder_metrics(), series
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}  # per-pod values for the HPA


def test_embedder_and_gateway_pods_are_scraped_on_a_port_they_declare() -> None:
    for file, name in (("embedder.yaml", "embedder"), ("gateway.yaml", "gateway")):
        deployment = next(d for d in _documents(K8S_DIR / file) if d["kind"] == "Deployment")
        template = deployment["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert (
            annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        )
        ports = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert int(annotations["prometheus.io/port"]) in ports, name
        if name == "embedder":  # the port the embedder serves its metrics on is the one scraped
            config = next(d for d in _documents(K8S_DIR / "config.yaml") if d["kind"] == "ConfigMap")["data"]
            assert config["RECIPELENS_EMBEDDER_METRICS_PORT"] == annotations["prometheus.io/port"]
