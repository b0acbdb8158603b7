"""deploy/gateway: the edge gateway's pieces agree with each other and with deploy/demo (rendered
and schema-validated with the rest in test_manifests.py)."""

from __future__ import annotations

from sidecar import inject
from sidecar.spiffe.ids import SpiffeId
from tests.k8s.test_manifests import find, objects, pod_specs, sidecar_config, spiffe_id

GATEWAY = "deploy/gateway"


def test_the_gateway_is_an_oauth_front_door_to_both_servers() -> None:
    config = sidecar_config("gateway-config", GATEWAY)
    inbound = config.inbound
    assert inbound.mtls == "off" and inbound.oauth is not None
    assert inbound.mux is not None and inbound.upstream is None
    service = find("Service", "gateway", GATEWAY)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == inbound.listen.port
    gateway_id = SpiffeId.parse(spiffe_id("mcp-gateway", "gateway"))
    for target in inbound.mux.targets:
        # the target's URL is its server's Service, and its SPIFFE ID the server's account
        directory = GATEWAY if target.name == "clock" else "deploy/demo"
        server = find("Service", target.name, directory)
        namespace = server["metadata"]["namespace"]
        (server_port,) = server["spec"]["ports"]
        assert target.upstream == f"https://{target.name}.{namespace}.svc:{server_port['port']}"
        template = next(pod_specs(find("Deployment", target.name, directory)))
        account = template["spec"]["serviceAccountName"]
        assert str(target.server_spiffe_id) == spiffe_id(namespace, account)
        # and that server's sidecar admits the gateway
        server_config = sidecar_config(f"{target.name}-sidecar", directory)
        assert server_config.inbound.allow_spiffe_ids.allows(gateway_id), target.name
    clock = sidecar_config("clock-sidecar", GATEWAY)
    agent = SpiffeId.parse(spiffe_id("mcp-demo", "agent"))
    assert not clock.inbound.allow_spiffe_ids.allows(agent)  # only through the gateway


def test_the_gateway_pod_gets_an_identity_but_no_second_sidecar() -> None:
    deployment = find("Deployment", "gateway", GATEWAY)
    template = next(pod_specs(deployment))
    assert template["metadata"]["labels"][inject.INJECT_LABEL] == "true"  # ClusterSPIFFEID
    assert template["spec"]["serviceAccountName"] == "gateway"
    plan = inject.plan_injection(template)
    assert isinstance(plan, inject.Skip) and inject.CONTAINER_NAME in plan.reason
    (container,) = template["spec"]["containers"]
    assert container["args"] == ["run", "-c", f"{inject.CONFIG_DIR}/{inject.CONFIG_FILE}"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {inject.WORKLOAD_API_DIR, inject.CONFIG_DIR} <= mounts
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SPIFFE_ENDPOINT_SOCKET"] == inject.WORKLOAD_API_SOCKET
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "gateway-config"
    assert volumes["spiffe-workload-api"]["csi"]["driver"] == inject.CSI_DRIVER


def test_the_clock_server_is_injected_like_the_demo() -> None:
    (clock,) = [
        o
        for o in objects(GATEWAY)
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "clock"
    ]
    injected, _ = inject.inject_object(clock)
    names = [c["name"] for c in next(pod_specs(injected))["spec"]["initContainers"]]
    assert names == [inject.CONTAINER_NAME]
    (server,) = next(pod_specs(clock))["spec"]["containers"]
    command = server["command"]
    assert command[command.index("--tools") + 1] == "get_time,echo"
