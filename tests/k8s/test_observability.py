"""deploy/observability: the Grafana dashboard uses only metrics the sidecar and the webhook
export, its panels are well formed, and the Prometheus Operator monitors point at what the
injector and the injected pods really expose (schemas: tests/k8s/prometheus_operator.py)."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest

from sidecar import inject
from sidecar.metrics import Metrics, WebhookMetrics
from tests.k8s import prometheus_operator
from tests.k8s.test_manifests import ROOT, containers, find, injected_demo, objects, pod_specs

DASHBOARD = ROOT / "deploy" / "observability" / "mcp-sidecar-dashboard.json"
METRIC = re.compile(r"\bmcp_sidecar_[a-z0-9_]+")
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


class _NoCertificate:
    cert_file = "/nonexistent/tls.crt"
    reloads = 0


def exported_names() -> set[str]:
    """Every sample name the sidecar and the webhook can export."""
    names: set[str] = set()
    webhook = WebhookMetrics()
    webhook.bind_certificate(_NoCertificate())
    for registry in (Metrics().registry, webhook.registry):
        for family in registry.collect():
            for suffix in _SUFFIXES.get(family.type, ("",)):
                names.add(family.name + suffix)
    return names


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def queries(data: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def test_every_metric_in_the_dashboard_is_exported() -> None:
    exported = exported_names()
    used = {name for expr in queries(dashboard()) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no mcp_sidecar metric"
    assert used - exported == set()
    # what the issue asks the dashboard to show
    for wanted in (
        "mcp_sidecar_requests_total",  # requests and errors by peer
        "mcp_sidecar_mcp_requests_total",  # by tool, denials
        "mcp_sidecar_request_duration_seconds_bucket",  # latency
        "mcp_sidecar_tool_call_duration_seconds_bucket",
        "mcp_sidecar_svid_time_to_expiry_seconds",  # SVID expiry
        "mcp_sidecar_svid_rotations_total",  # rotations
        "mcp_sidecar_bundle_rotations_total",
    ):
        assert wanted in used, wanted


def test_the_check_catches_a_misspelled_metric() -> None:
    data = dashboard()
    data["panels"][1]["targets"][0]["expr"] = "rate(mcp_sidecar_request_total[5m])"
    used = {name for expr in queries(data) for name in METRIC.findall(expr)}
    assert used - exported_names() == {"mcp_sidecar_request_total"}


def test_panels_are_well_formed() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat")
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs))
        for target in panel["targets"]:
            expr = target["expr"]
            for opening, closing in ("()", "{}", "[]"):
                assert expr.count(opening) == expr.count(closing), expr
            if "_bucket" in expr:
                assert expr.startswith("histogram_quantile(") and "by (le" in expr, expr
            # rates of counters only, never of gauges
            for name in re.findall(r"(?:rate|increase)\((mcp_sidecar_[a-z0-9_]+)", expr):
                assert name.endswith(("_total", "_bucket")), expr


def test_the_dashboard_is_shipped_as_a_grafana_configmap() -> None:
    config_map = find("ConfigMap", "mcp-sidecar-dashboard", "deploy/observability")
    assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
    assert json.loads(config_map["data"]["mcp-sidecar-dashboard.json"]) == dashboard()


def test_the_pod_monitor_scrapes_every_injected_admin_port() -> None:
    monitor = find("PodMonitor", "mcp-sidecar", "deploy/observability")
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint,) = spec["podMetricsEndpoints"]
    selected = 0
    for template in (t for obj in injected_demo() for t in pod_specs(obj)):
        labels = template["metadata"]["labels"]
        if all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()):
            selected += 1
            ports = [port for c in containers(template["spec"]) for port in c.get("ports", [])]
            admin = {
                "name": endpoint["port"],
                "containerPort": inject.ADMIN_PORT,
                "protocol": "TCP",
            }
            assert admin in ports
    assert selected == 5  # math server, agent, rogue; the gateway and its clock server
    assert endpoint["path"] == "/metrics"


def test_the_service_monitor_reaches_the_webhook_over_verified_https() -> None:
    monitor = find("ServiceMonitor", "mcp-sidecar-injector", "deploy/observability")
    service = find("Service", "mcp-sidecar-injector", "deploy/injector")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    tls = endpoint["tlsConfig"]
    assert "insecureSkipVerify" not in tls
    assert tls["ca"]["secret"] == {"name": "mcp-sidecar-injector-tls", "key": "ca.crt"}
    namespace, name = service["metadata"]["namespace"], service["metadata"]["name"]
    assert tls["serverName"] == f"{name}.{namespace}.svc"


@pytest.mark.parametrize(
    ("kind", "name", "break_it"),
    [
        ("PodMonitor", "mcp-sidecar", lambda o: o["spec"].update(podMetricEndpoints=[])),
        ("PodMonitor", "mcp-sidecar", lambda o: o["spec"]["podMetricsEndpoints"][0].pop("port")),
        (
            "ServiceMonitor",
            "mcp-sidecar-injector",
            lambda o: o["spec"]["endpoints"][0].update(scheme="HTTPS"),
        ),
        (
            "ServiceMonitor",
            "mcp-sidecar-injector",
            lambda o: o["spec"]["endpoints"][0].update(interval="30 s"),
        ),
    ],
)
def test_the_monitor_schemas_catch_mistakes(kind: str, name: str, break_it: Any) -> None:
    obj = copy.deepcopy(find(kind, name, "deploy/observability"))
    jsonschema.validate(obj, prometheus_operator.SCHEMAS[kind])
    break_it(obj)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, prometheus_operator.SCHEMAS[kind])


def test_every_observability_object_is_known() -> None:
    kinds = sorted(o["kind"] for o in objects("deploy/observability"))
    assert kinds == ["ConfigMap", "PodMonitor", "ServiceMonitor"]
