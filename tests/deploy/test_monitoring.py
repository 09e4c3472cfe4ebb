"""deploy/grafana and deploy/k8s/monitoring: the dashboard and the metrics HPA ask only for metrics the
services export, the HPA's custom metrics are ones the adapter rules produce, and the manifests are valid.

The gateway's metric names are read from a live ``GatewayMetrics`` registry. The embedder's come from
``embedder/metrics.py`` once it exists (issue 15); until then from ``EMBEDDER_METRICS`` below, the names
issue 15 item 5 implies — the day the module lands, this test compares against it instead.
"""

from __future__ import annotations

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
EMBEDDER_METRICS_MODULE = ROOT / "embedder" / "metrics.py"
# issue 15 item 5: requests and images per model version and method, batch-size histogram, queue wait,
# inference time, errors by status code, models loaded with their numerics
EMBEDDER_METRICS = {
    "recipelens_embedder_requests": {"model_version", "method"},
    "recipelens_embedder_images": {"model_version", "method"},
    "recipelens_embedder_batch_size": set(),
    "recipelens_embedder_queue_wait_seconds": set(),
    "recipelens_embedder_inference_seconds": set(),
    "recipelens_embedder_errors": {"method", "code"},
    "recipelens_embedder_models_loaded": {"model_version", "numerics"},
}
_SUFFIX = re.compile(r"_(total|bucket|sum|count|created)$")
_METRIC = re.compile(r"\brecipelens_[a-z0-9_]+")
_BY = re.compile(r"\bby \(([^)]*)\)")
PROM_LABELS = {"le", "job", "instance", "namespace", "pod"}  # added by histograms and by scraping


def base_name(sample: str) -> str:
    return _SUFFIX.sub("", sample)


def gateway_metrics() -> dict[str, set[str]]:
    """Metric family name → label names, from a real registry."""
    found: dict[str, set[str]] = {}
    for collector in GatewayMetrics().registry._collector_to_names:
        name = base_name(getattr(collector, "_name", ""))
        found[name] = set(getattr(collector, "_labelnames", ()))
    return {name: labels for name, labels in found.items() if name}


def embedder_metrics() -> dict[str, set[str]]:
    """The embedder's metrics: from embedder/metrics.py once written (labels unchecked), else the issue's."""
    if not EMBEDDER_METRICS_MODULE.is_file():
        return EMBEDDER_METRICS
    names = re.findall(r"[\"'](recipelens_embedder_[a-z0-9_]+)[\"']", EMBEDDER_METRICS_MODULE.read_text())
    return {base_name(name): PROM_LABELS | {"model_version", "method", "code", "numerics"} for name in names}


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
