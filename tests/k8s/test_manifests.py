"""Every manifest under spire/ and deploy/, checked offline.

* Each kustomization is rendered (tests/k8s/kustomize.py; cross-checked against ``kubectl
  kustomize`` where kubectl is installed) and every object validates against the Kubernetes JSON
  schemas of ``kubernetes-validate`` (strict: unknown fields are errors) for the oldest Kubernetes
  the injection supports (1.29, native sidecars) and the newest the package ships (1.37). The same
  holds for the demo workloads after injection.
* ClusterSPIFFEIDs validate against the openAPIV3Schema of our CRD (spire/crds/), with unknown
  fields made errors too; the ControllerManagerConfig's keys against the fields of
  spire-controller-manager v0.6.6; the SPIRE server and agent configs parse as HCL.
* The pieces agree with each other: trust domain, socket paths, SPIFFE IDs, ports, selectors,
  names used by deploy/kind/up.sh, and the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import hcl
import jsonschema
import kubernetes_validate
import pytest
import yaml

from sidecar import inject, webhook
from sidecar.config import load_config_text
from sidecar.spiffe.ids import SpiffeId
from tests.k8s import prometheus_operator
from tests.k8s.kustomize import KUSTOMIZATION, Rendered, object_key, render

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = (
    "spire",
    "deploy/injector",
    "deploy/demo",
    "deploy/demo/rogue",
    "deploy/gateway",
    "deploy/observability",
)
K8S_VERSIONS = ("1.29", "1.37")
CRD_FILE = ROOT / "spire" / "crds" / "clusterspiffeids.spire.spiffe.io.yaml"
# Fields of ControllerManagerConfig in spire-controller-manager v0.6.6
# (api/v1alpha1/controllermanagerconfig_types.go), top level and the nested ones we use.
CONTROLLER_MANAGER_FIELDS = {
    "": {
        "apiVersion", "kind", "clusterName", "clusterDomain", "trustDomain", "ignoreNamespaces",
        "validatingWebhookConfigurationName", "gcInterval", "spireServerSocketPath", "logLevel",
        "logEncoding", "grpc", "syncPeriod", "leaderElection", "cacheNamespace",
        "cacheNamespaces", "gracefulShutDown", "controller", "metrics", "health", "webhook",
        "className", "watchClassless", "parentIDTemplate", "reconcile", "entryIDPrefix",
        "entryIDPrefixCleanup", "staticManifestPath", "expandEnvStaticManifests",
        "enableEntryRenderCache", "entryRenderCacheSize",
    },
    "metrics": {"bindAddress"},
    "health": {"healthProbeBindAddress", "readinessEndpointName", "livenessEndpointName"},
    "leaderElection": {
        "leaderElect", "leaseDuration", "renewDeadline", "retryPeriod", "resourceLock",
        "resourceName", "resourceNamespace",
    },
    "reconcile": {"clusterSPIFFEIDs", "clusterFederatedTrustDomains", "clusterStaticEntries"},
}  # fmt: skip


@cache
def rendered(directory: str) -> Rendered:
    return render(ROOT / directory)


def objects(directory: str) -> list[dict[str, Any]]:
    return copy.deepcopy(rendered(directory).objects)


def all_objects() -> list[dict[str, Any]]:
    return [obj for directory in KUSTOMIZATIONS for obj in objects(directory)]


def find(kind: str, name: str, directory: str | None = None) -> dict[str, Any]:
    pool = objects(directory) if directory else all_objects()
    matches = [o for o in pool if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def injected_demo() -> list[dict[str, Any]]:
    """The demo objects as they run: workloads injected (webhook and CLI inject the same)."""
    return [
        inject.inject_object(obj)[0]
        for d in ("deploy/demo", "deploy/demo/rogue", "deploy/gateway")
        for obj in objects(d)
    ]


def pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    path = inject.POD_TEMPLATE_PATHS.get(obj["kind"])
    if path is None:
        return
    node: Any = obj
    for key in path:
        node = node[key]
    yield node


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def settings() -> dict[str, str]:
    data = find("ConfigMap", "spire-settings", "spire")["data"]
    assert isinstance(data, dict)
    return data


# --------------------------------------------------------------------------- rendering, coverage


def test_every_manifest_file_is_rendered() -> None:
    """No YAML or config file under spire/ and deploy/ escapes validation."""
    used = set().union(*(rendered(d).files for d in KUSTOMIZATIONS))
    candidates = {
        path.resolve()
        for base in ("spire", "deploy")
        for path in (ROOT / base).rglob("*")
        if path.suffix in {".yaml", ".yml", ".json", ".conf"}
    }
    assert candidates - used == set()
    assert {ROOT / d / KUSTOMIZATION for d in KUSTOMIZATIONS} <= used
    kustomizations = {
        p.parent.relative_to(ROOT).as_posix() for p in ROOT.glob("**/kustomization.yaml")
    }
    reached = {p.parent.relative_to(ROOT).as_posix() for p in used if p.name == KUSTOMIZATION}
    assert kustomizations - {".venv"} <= reached | set(KUSTOMIZATIONS)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_python_render_matches_kubectl_kustomize(directory: str) -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0 and "unknown command" in result.stderr:
        pytest.skip("this kubectl has no kustomize")
    assert result.returncode == 0, result.stderr
    theirs = {object_key(o): o for o in yaml.safe_load_all(result.stdout) if o}
    ours = {object_key(o): o for o in objects(directory)}
    assert ours == theirs


# ---------------------------------------------------------------------------------- schemas


def validate(obj: dict[str, Any], version: str) -> None:
    if obj["kind"] == "ClusterSPIFFEID":
        validate_against_crd(obj)
        return
    if obj["apiVersion"] == "monitoring.coreos.com/v1":
        jsonschema.validate(obj, prometheus_operator.SCHEMAS[obj["kind"]])
        return
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        name = f"{obj['kind']}/{obj['metadata'].get('name')}"
        pytest.fail(f"{name} (Kubernetes {version}): {path}: {exc.message}")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_objects_validate_against_kubernetes_schemas(directory: str, version: str) -> None:
    for obj in objects(directory):
        validate(obj, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_injected_demo_validates_against_kubernetes_schemas(version: str) -> None:
    """The injected sidecar (a restartable init container) is valid Kubernetes."""
    demo = injected_demo()
    assert sum(bool(o.get("kind") in ("Deployment", "Job")) for o in demo) == 5
    for obj in demo:
        validate(obj, version)


def test_strict_validation_catches_mistakes() -> None:
    """The validation above is not vacuous."""
    deployment = find("Deployment", "math", "deploy/demo")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)
    deployment = find("Deployment", "math", "deploy/demo")
    deployment["spec"]["template"]["spec"]["containers"][0]["restartpolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.29", strict=True)


def closed(schema: Any) -> Any:
    """The schema with unknown properties made errors (Kubernetes would silently prune them)."""
    if isinstance(schema, dict):
        result = {k: closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            result["additionalProperties"] = False
        return result
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


@cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def validate_against_crd(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "spire.spiffe.io/v1alpha1"
    schema = closed(crd_schema())
    schema["properties"]["metadata"] = {"type": "object"}  # metadata is the API server's
    jsonschema.Draft7Validator(schema).validate(obj)


def test_crd_schema_is_structural_and_matches_the_resource() -> None:
    crd = yaml.safe_load(CRD_FILE.read_text())
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
    assert crd["spec"]["scope"] == "Cluster"
    jsonschema.Draft7Validator.check_schema(crd_schema())

    def check(node: dict[str, Any], where: str) -> None:
        assert "type" in node, f"{where}: structural schemas give every node a type"
        for name, child in node.get("properties", {}).items():
            check(child, f"{where}.{name}")
        if "items" in node:
            check(node["items"], f"{where}[]")
        if isinstance(node.get("additionalProperties"), dict):
            check(node["additionalProperties"], f"{where}{{}}")

    check(crd_schema(), "openAPIV3Schema")


def test_crd_validation_rejects_bad_cluster_spiffe_ids() -> None:
    good = find("ClusterSPIFFEID", "mcp-sidecar-workloads", "spire")
    validate_against_crd(good)
    changes: tuple[Callable[[dict[str, Any]], object], ...] = (
        lambda s: s.pop("spiffeIDTemplate"),
        lambda s: s.update(spiffeIdTemplate="x"),
        lambda s: s.update(podSelector={"matchLabels": {"a": 1}}),
        lambda s: s.update(federatesWith="partner.example"),
    )
    for change in changes:
        bad = copy.deepcopy(good)
        change(bad["spec"])
        with pytest.raises(jsonschema.ValidationError):
            validate_against_crd(bad)


def test_controller_manager_config_uses_known_fields() -> None:
    config = yaml.safe_load(
        find("ConfigMap", "spire-controller-manager", "spire")["data"]["config.yaml"]
    )
    assert config["apiVersion"] == "spire.spiffe.io/v1alpha1"
    assert config["kind"] == "ControllerManagerConfig"
    for section, allowed in CONTROLLER_MANAGER_FIELDS.items():
        keys = set(config if not section else config.get(section, {}))
        assert keys <= allowed, f"{section or 'top level'}: unknown {keys - allowed}"
    assert config["trustDomain"] == "${TRUST_DOMAIN}" and config["clusterName"] == "${CLUSTER_NAME}"
    assert config["reconcile"]["clusterSPIFFEIDs"] is True


def expanded_hcl(name: str, key: str) -> dict[str, Any]:
    text = find("ConfigMap", name, "spire")["data"][key]
    values = {
        "TRUST_DOMAIN": settings()["trust_domain"],
        "CLUSTER_NAME": settings()["cluster_name"],
    }
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(values)
    parsed = hcl.loads(re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], text))
    assert isinstance(parsed, dict)
    return parsed


def test_spire_server_config() -> None:
    config = expanded_hcl("spire-server", "server.conf")
    server = config["server"]
    assert server["trust_domain"] == settings()["trust_domain"]
    plugins = config["plugins"]
    assert set(plugins) == {"DataStore", "KeyManager", "NodeAttestor", "Notifier"}
    clusters = plugins["NodeAttestor"]["k8s_psat"]["plugin_data"]["clusters"]
    assert clusters == {
        settings()["cluster_name"]: {"service_account_allow_list": ["spire-system:spire-agent"]}
    }
    notifier = plugins["Notifier"]["k8sbundle"]["plugin_data"]
    assert notifier["namespace"] == "spire-system" and notifier["config_map"] == "spire-bundle"
    find("ConfigMap", "spire-bundle", "spire")
    assert config["health_checks"]["bind_port"] == "8080"


def test_spire_agent_config() -> None:
    config = expanded_hcl("spire-agent", "agent.conf")
    agent = config["agent"]
    assert agent["trust_domain"] == settings()["trust_domain"]
    plugins = config["plugins"]
    assert (
        plugins["NodeAttestor"]["k8s_psat"]["plugin_data"]["cluster"] == settings()["cluster_name"]
    )
    k8s = plugins["WorkloadAttestor"]["k8s"]["plugin_data"]
    assert k8s == {"skip_kubelet_verification": True, "node_name_env": "MY_NODE_NAME"}
    # The socket: agent dir -> the CSI driver's -workload-api-socket-dir -> the injected mount.
    socket_dir, socket_name = agent["socket_path"].rsplit("/", 1)
    assert f"unix://{inject.WORKLOAD_API_DIR}/{socket_name}" == inject.WORKLOAD_API_SOCKET
    spec = next(pod_specs(find("DaemonSet", "spire-agent", "spire")))["spec"]
    by_name = {c["name"]: c for c in containers(spec)}
    agent_mount = next(
        m for m in by_name["spire-agent"]["volumeMounts"] if m["mountPath"] == socket_dir
    )
    args = by_name["spiffe-csi-driver"]["args"]
    csi_dir = args[args.index("-workload-api-socket-dir") + 1]
    csi_mount = next(
        m for m in by_name["spiffe-csi-driver"]["volumeMounts"] if m["mountPath"] == csi_dir
    )
    assert agent_mount["name"] == csi_mount["name"] and csi_mount["readOnly"] is True
    token = next(v for v in spec["volumes"] if v["name"] == "agent-token")
    (source,) = token["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "spire-server"
    token_dir = next(
        m["mountPath"] for m in by_name["spire-agent"]["volumeMounts"] if m["name"] == "agent-token"
    )
    token_path = plugins["NodeAttestor"]["k8s_psat"]["plugin_data"]["token_path"]
    assert token_path == f"{token_dir}/{source['serviceAccountToken']['path']}"
    assert spec["hostPID"] is True and spec["hostNetwork"] is True


def test_controller_manager_reaches_the_server_socket() -> None:
    server = expanded_hcl("spire-server", "server.conf")["server"]
    socket_dir, socket_name = server["socket_path"].rsplit("/", 1)
    spec = next(pod_specs(find("StatefulSet", "spire-server", "spire")))["spec"]
    by_name = {c["name"]: c for c in spec["containers"]}
    (server_mount,) = [
        m for m in by_name["spire-server"]["volumeMounts"] if m["mountPath"] == socket_dir
    ]
    config = yaml.safe_load(
        find("ConfigMap", "spire-controller-manager", "spire")["data"]["config.yaml"]
    )
    cm_dir, cm_name = config["spireServerSocketPath"].rsplit("/", 1)
    (cm_mount,) = [
        m for m in by_name["spire-controller-manager"]["volumeMounts"] if m["mountPath"] == cm_dir
    ]
    assert cm_name == socket_name and cm_mount["name"] == server_mount["name"]
    assert "--expand-env" in by_name["spire-controller-manager"]["args"]
    assert "-expandEnv" in by_name["spire-server"]["args"]


# -------------------------------------------------------------------------------- trust domain


def test_trust_domain_is_set_in_exactly_one_place() -> None:
    trust_domain = settings()["trust_domain"]
    assert trust_domain == "example.org"
    hits = [
        (path.relative_to(ROOT).as_posix(), line)
        for path in (ROOT / "spire").rglob("*")
        if path.is_file()
        for line in path.read_text().splitlines()
        if trust_domain in line and not line.lstrip().startswith("#")
    ]
    assert hits == [("spire/kustomization.yaml", "      - trust_domain=example.org")]
    # Everything that needs it reads it from spire-settings.
    for kind, name in (("StatefulSet", "spire-server"), ("DaemonSet", "spire-agent")):
        spec = next(pod_specs(find(kind, name, "spire")))["spec"]
        for container in spec["containers"]:
            if container["name"] in ("spire-server", "spire-agent", "spire-controller-manager"):
                env = {e["name"]: e.get("valueFrom") for e in container["env"]}
                assert env["TRUST_DOMAIN"] == {
                    "configMapKeyRef": {"name": "spire-settings", "key": "trust_domain"}
                }
    template = find("ClusterSPIFFEID", "mcp-sidecar-workloads", "spire")["spec"]["spiffeIDTemplate"]
    assert template == (
        "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}"
        "/sa/{{ .PodSpec.ServiceAccountName }}"
    )


def spiffe_id(namespace: str, service_account: str) -> str:
    """What the ClusterSPIFFEID gives a pod."""
    return f"spiffe://{settings()['trust_domain']}/ns/{namespace}/sa/{service_account}"


def sidecar_config(config_map: str, directory: str) -> Any:
    text = find("ConfigMap", config_map, directory)["data"][inject.CONFIG_FILE]
    return load_config_text(text, source=f"{directory}/{config_map}")


def test_demo_sidecar_policies_fit_spire_and_each_other() -> None:
    math = sidecar_config("math-sidecar", "deploy/demo")
    agent = sidecar_config("agent-sidecar", "deploy/demo")
    rogue = sidecar_config("rogue-sidecar", "deploy/demo/rogue")
    for config in (math, agent, rogue):
        assert config.trust_domain == settings()["trust_domain"]
        # kubelet probes reach the pod IP: the admin listener must not be loopback-only.
        assert (config.admin.listen.host, config.admin.listen.port) == (
            "0.0.0.0",
            inject.ADMIN_PORT,
        )
        assert config.workload_api is None  # $SPIFFE_ENDPOINT_SOCKET, set by the injector
    agent_id, rogue_id = spiffe_id("mcp-demo", "agent"), spiffe_id("mcp-demo", "rogue")
    assert math.inbound.allow_spiffe_ids.allows(SpiffeId.parse(agent_id))
    assert not math.inbound.allow_spiffe_ids.allows(SpiffeId.parse(rogue_id))
    service = find("Service", "math", "deploy/demo")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == math.inbound.listen.port
    for config in (agent, rogue):
        (route,) = config.outbound.routes
        assert route.upstream == f"https://math.mcp-demo.svc:{port['port']}"
        assert str(route.server_spiffe_id) == spiffe_id("mcp-demo", "math")
    # Each workload runs as the service account its ID is about, and names its policy.
    for kind, name, account, config_map in (
        ("Deployment", "math", "math", "math-sidecar"),
        ("Deployment", "agent", "agent", "agent-sidecar"),
        ("Job", "rogue", "rogue", "rogue-sidecar"),
    ):
        template = next(pod_specs(find(kind, name)))
        assert template["spec"]["serviceAccountName"] == account
        find("ServiceAccount", account)
        assert template["metadata"]["annotations"][inject.CONFIG_MAP_ANNOTATION] == config_map
        assert template["metadata"]["labels"][inject.INJECT_LABEL] == "true"


def test_agent_and_rogue_call_the_outbound_route() -> None:
    agent = sidecar_config("agent-sidecar", "deploy/demo")
    (route,) = agent.outbound.routes
    url = f"http://127.0.0.1:{agent.outbound.listen.port}{route.path_prefix}/mcp"
    for kind, name in (("Deployment", "agent"), ("Job", "rogue")):
        (container,) = next(pod_specs(find(kind, name)))["spec"]["containers"]
        command = container["command"]
        assert command[:3] == ["python", "-m", "sidecar.demo.agent_loop"]
        assert command[command.index("--url") + 1] == url
    (rogue,) = next(pod_specs(find("Job", "rogue")))["spec"]["containers"]
    assert "--expect-refused" in rogue["command"]


def test_prometheus_scrape_annotations_point_at_the_admin_port() -> None:
    for name in ("math", "agent"):
        annotations = next(pod_specs(find("Deployment", name)))["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(inject.ADMIN_PORT)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_cluster_spiffe_id_selects_every_injected_pod() -> None:
    selector = find("ClusterSPIFFEID", "mcp-sidecar-workloads", "spire")["spec"]["podSelector"]
    assert selector == {"matchLabels": {inject.INJECT_LABEL: "true"}}
    # Even a pod injected only because of its namespace label gets the label.
    plan = inject.plan_injection({"metadata": {}, "spec": {"containers": [{"name": "a"}]}})
    assert not isinstance(plan, inject.Skip)
    assert {"op": "add", "path": "/metadata/labels", "value": {inject.INJECT_LABEL: "true"}} in plan


# ----------------------------------------------------------------------------------- injector


def label_selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def test_webhook_configuration() -> None:
    config = find("MutatingWebhookConfiguration", "mcp-sidecar-injector", "deploy/injector")
    service = find("Service", "mcp-sidecar-injector", "deploy/injector")
    deployment = find("Deployment", "mcp-sidecar-injector", "deploy/injector")
    (port,) = service["spec"]["ports"]
    (container,) = next(pod_specs(deployment))["spec"]["containers"]
    (container_port,) = container["ports"]
    assert port["targetPort"] == container_port["name"]
    assert f"--listen=0.0.0.0:{container_port['containerPort']}" in container["args"]
    assert f"--image={inject.DEFAULT_IMAGE}" in container["args"]
    assert len(config["webhooks"]) == 2
    for hook in config["webhooks"]:
        assert hook["admissionReviewVersions"] == ["v1"]
        assert webhook.ADMISSION_API_VERSION == "admission.k8s.io/v1"
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == "Fail"
        assert hook["timeoutSeconds"] <= 10
        assert "caBundle" not in hook["clientConfig"]  # patched in by up.sh / cert-manager
        assert hook["clientConfig"]["service"] == {
            "name": service["metadata"]["name"],
            "namespace": service["metadata"]["namespace"],
            "path": webhook.INJECT_PATH,
            "port": port["port"],
        }
        (rule,) = hook["rules"]
        assert rule == {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
        excluded = next(
            e
            for e in hook["namespaceSelector"]["matchExpressions"]
            if e["key"] == "kubernetes.io/metadata.name"
        )
        assert excluded["operator"] == "NotIn"
        assert set(excluded["values"]) == inject.SYSTEM_NAMESPACES
    assert deployment["metadata"]["namespace"] in inject.SYSTEM_NAMESPACES  # never injects itself


@pytest.mark.parametrize("namespace_label", [None, "enabled", "disabled", "other"])
@pytest.mark.parametrize("pod_label", [None, "true", "false", "other"])
def test_webhook_selectors_never_overlap(
    namespace_label: str | None, pod_label: str | None
) -> None:
    """A pod is sent to at most one webhook entry, and exactly when it asked for injection."""
    config = find("MutatingWebhookConfiguration", "mcp-sidecar-injector", "deploy/injector")
    namespace_labels = {"kubernetes.io/metadata.name": "team-a"}
    if namespace_label is not None:
        namespace_labels[inject.NAMESPACE_LABEL] = namespace_label
    pod_labels = {} if pod_label is None else {inject.INJECT_LABEL: pod_label}
    matching = [
        hook["name"]
        for hook in config["webhooks"]
        if label_selector_matches(hook["namespaceSelector"], namespace_labels)
        and label_selector_matches(hook["objectSelector"], pod_labels)
    ]
    if pod_label == "false" or (namespace_label == "disabled" and pod_label != "true"):
        expected: list[str] = []
    elif namespace_label == "enabled":
        expected = ["namespace.inject.mcp-sidecar.io"]
    elif pod_label == "true" and namespace_label != "disabled":
        expected = ["object.inject.mcp-sidecar.io"]
    else:
        expected = []
    assert matching == expected
    system = {"kubernetes.io/metadata.name": "kube-system", inject.NAMESPACE_LABEL: "enabled"}
    assert not any(
        label_selector_matches(hook["namespaceSelector"], system) for hook in config["webhooks"]
    )


# --------------------------------------------------------------------------------- hygiene


def images() -> list[str]:
    found = []
    for obj in [*all_objects(), *injected_demo()]:
        for spec in pod_specs(obj):
            found += [c["image"] for c in containers(spec["spec"])]
    return found


def test_images_are_pinned() -> None:
    for image in images():
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    assert {
        "ghcr.io/spiffe/spire-server:1.15.3",
        "ghcr.io/spiffe/spire-agent:1.15.3",
        "ghcr.io/spiffe/spire-controller-manager:0.6.6",
        "ghcr.io/spiffe/spiffe-csi-driver:0.2.6",
        "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.12.0",
        inject.DEFAULT_IMAGE,
    } <= set(images())


def test_injected_workloads_never_get_a_host_path() -> None:
    for obj in injected_demo():
        for spec in pod_specs(obj):
            assert all("hostPath" not in v for v in spec["spec"].get("volumes", []))


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The "restricted" Pod Security Standard (the checks that apply to these pods)."""
    problems = []
    pod_context = spec.get("securityContext", {})
    allowed_volumes = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
        "projected", "secret",
    }  # fmt: skip
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= allowed_volumes:
            problems.append(f"volume {volume['name']}: {kinds}")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(key)
    for container in containers(spec):
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{name}: must drop ALL capabilities")
        if context.get("capabilities", {}).get("add", []) not in ([], ["NET_BIND_SERVICE"]):
            problems.append(f"{name}: adds capabilities")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


def test_restricted_namespaces_only_get_restricted_pods() -> None:
    namespaces = {
        o["metadata"]["name"]: o["metadata"].get("labels", {})
        for o in all_objects()
        if o["kind"] == "Namespace"
    }
    enforce = {
        name: labels.get("pod-security.kubernetes.io/enforce")
        for name, labels in namespaces.items()
    }
    assert enforce == {
        "spire-system": "privileged",
        "mcp-sidecar-system": "restricted",
        "mcp-demo": "restricted",
        "mcp-gateway": "restricted",
    }
    checked = 0
    for obj in [*objects("deploy/injector"), *injected_demo()]:
        for spec in pod_specs(obj):
            assert enforce[obj["metadata"]["namespace"]] == "restricted"
            assert restricted_violations(spec["spec"]) == [], obj["metadata"]["name"]
            checked += 1
    assert checked == 6
    # The check itself bites.
    assert restricted_violations({"containers": [{"name": "x"}], "hostNetwork": True})


def test_every_container_has_resources_and_a_read_only_root() -> None:
    for obj in [*all_objects(), *injected_demo()]:
        for spec in pod_specs(obj):
            for container in containers(spec["spec"]):
                where = f"{obj['metadata']['name']}/{container['name']}"
                assert "requests" in container.get("resources", {}), where
                assert "memory" in container["resources"].get("limits", {}), where
                assert container.get("securityContext", {}).get("readOnlyRootFilesystem"), where


def test_names_up_sh_relies_on_exist() -> None:
    script = (ROOT / "deploy" / "kind" / "up.sh").read_text()
    for path in re.findall(r'"\$ROOT/([^"]+)"', script):
        assert (ROOT / path).exists(), path
    assert find("CustomResourceDefinition", "clusterspiffeids.spire.spiffe.io")
    for kind, name in re.findall(r"(statefulset|daemonset|deployment|job)/([a-z0-9-]+)", script):
        if name in ("rogue",) or kind == "job":
            find("Job", name)
            continue
        find(
            {"statefulset": "StatefulSet", "daemonset": "DaemonSet", "deployment": "Deployment"}[
                kind
            ],
            name,
        )
    assert "mutatingwebhookconfiguration mcp-sidecar-injector" in script
    secret = next(
        v["secret"]["secretName"]
        for v in next(pod_specs(find("Deployment", "mcp-sidecar-injector")))["spec"]["volumes"]
    )
    assert f"secret generic {secret}" in script
    assert "IMAGE=mcp-sidecar:dev" in script and inject.DEFAULT_IMAGE == "mcp-sidecar:dev"
    assert 'docker build --target demo -t "$DEMO_IMAGE"' in script
    demo_images = {
        c["image"]
        for d in ("deploy/demo", "deploy/demo/rogue")
        for obj in objects(d)
        for spec in pod_specs(obj)
        for c in spec["spec"]["containers"]
    }
    assert demo_images == {"mcp-sidecar-demo:dev"}  # the workloads need the demo extra
    assert "DEMO_IMAGE=mcp-sidecar-demo:dev" in script
    for container in re.findall(r"-c ([a-z-]+)", script):
        assert container in {"agent", "rogue", inject.CONTAINER_NAME}
    assert re.findall(r"/webhooks/(\d)/clientConfig/caBundle", script) == ["0", "1"]
