"""MCP-aware authorization end to end with the official MCP SDK client and a real MCP server:
the reference scenario (roles from OAuth token claims on an OAuth ingress; an agent's SPIFFE ID
through the mesh), filtered tools/list over SSE, JSON-RPC denials, rate limits, hot reload."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, McpServerHandle
from tests.mcp.policykit import REFERENCE
from tests.polling import until
from tests.proxy.issuer import Issuer
from tests.proxy.mesh import WAIT, local_mesh
from tests.proxy.mesh import oauth_ingress as mesh_oauth_ingress


@pytest.fixture
async def oauth_ingress(
    mcp_server: McpServerHandle,
) -> AsyncIterator[tuple[str, Issuer, Callable[[], list[str]]]]:
    """Users (roles in their OAuth tokens) reach the MCP server through an OAuth ingress;
    the third item gives the ingress's log lines so far."""
    async with mesh_oauth_ingress(mcp_server.port, mcp_policy=REFERENCE) as ingress:
        yield ingress.url, ingress.issuer, ingress.lines


def bearer(issuer: Issuer, resource: str, roles: list[str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {issuer.token(aud=resource, roles=roles)}"}


@pytest.mark.parametrize(
    ("roles", "visible", "allowed", "denied"),
    [(["admin"], ["echo"], "echo", "get_time"), (["user"], ["get_time"], "get_time", "echo")],
)
async def test_roles_from_token_claims(
    oauth_ingress: tuple[str, Issuer, Callable[[], list[str]]],
    mcp_server: McpServerHandle,
    roles: list[str],
    visible: list[str],
    allowed: str,
    denied: str,
) -> None:
    resource, issuer, log_so_far = oauth_ingress
    headers = bearer(issuer, resource, roles)
    assert await mcp_client.list_tool_names(resource, headers) == visible
    arguments = {"text": "hi"} if allowed == "echo" else {}
    result = await mcp_client.call_tool(resource, allowed, arguments, headers)
    assert not result.is_error
    with pytest.raises(MCPError, match="Forbidden by policy: no rule allows"):
        await mcp_client.call_tool(resource, denied, {"text": "x"}, headers)
    # tools/list was answered over SSE by the real server and filtered on the way.
    lists = [r for r in mcp_server.requests if r.method == "POST" and r.status == 200]
    assert any((r.content_type or "").startswith("text/event-stream") for r in lists)
    audits = [json.loads(line) for line in log_so_far() if '"mcp_audit"' in line]
    deny = [a for a in audits if a["decision"] == "deny"]
    assert deny and deny[-1]["tool"] == denied and deny[-1]["rule"] is None
    assert deny[-1]["principal"]["roles"] == roles


async def test_denial_is_a_jsonrpc_error_naming_the_rule(
    oauth_ingress: tuple[str, Issuer, Callable[[], list[str]]], mcp_server: McpServerHandle
) -> None:
    resource, issuer, _ = oauth_ingress
    headers = bearer(issuer, resource, ["user"])
    raw = await mcp_client.post_raw(
        resource,
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}},
        headers,
    )
    assert raw.status == 403
    body = json.loads(raw.body)
    assert body["id"] == 7 and body["error"]["code"] == -32001
    assert "no rule allows" in body["error"]["message"]
    assert not any(r.method == "POST" for r in mcp_server.requests)  # never reached the server


async def test_agent_spiffe_id_may_add_but_not_multiply(mcp_server: McpServerHandle) -> None:
    async with local_mesh(upstream_port=mcp_server.port, inbound={"mcp_policy": REFERENCE}) as mesh:
        url = f"{mesh.outbound_url}/math{MCP_PATH}"
        assert await mcp_client.list_tool_names(url) == ["add"]
        assert (await mcp_client.call_tool(url, "add", {"a": 2, "b": 3})).structured == {
            "result": 5
        }
        with pytest.raises(MCPError, match="Forbidden by policy"):
            await mcp_client.call_tool(url, "multiply", {"a": 6, "b": 7})
        metrics = mesh.server.metrics.render()[0].decode()
        assert (
            'mcp_sidecar_mcp_requests_total{decision="deny",method="tools/call",tool="multiply"}'
            in metrics
        )


async def test_rate_limit_returns_429_with_retry_after(client: aiohttp.ClientSession) -> None:
    async with local_mesh(
        inbound={"rate_limits": [{"per": "principal", "rate": "1/m", "burst": 3}]}
    ) as mesh:
        statuses = []
        for n in range(4):
            async with client.post(
                f"{mesh.outbound_url}/math/mcp",
                json={"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "add"}},
            ) as resp:
                statuses.append(resp.status)
                last = (resp.headers.get("Retry-After"), await resp.json())
        assert statuses == [200, 200, 200, 429]
        retry_after, body = last
        assert retry_after is not None and int(retry_after) >= 1
        assert body["error"]["code"] == -32029 and body["id"] == 3
        assert len(mesh.upstream.requests) == 3


async def test_policy_reload_during_load(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    policy_file = tmp_path / "policy.yaml"

    def write(policy: object) -> None:
        staging = tmp_path / "policy.tmp"
        staging.write_text(policy if isinstance(policy, str) else yaml.safe_dump(policy))
        os.replace(staging, policy_file)  # atomic, like a ConfigMap update

    write({"default": "deny", "rules": [{"name": "add-only", "tools": ["add"]}]})
    inbound = {"mcp_policy": {"file": str(policy_file), "reload_interval": "50ms"}}
    async with local_mesh(inbound=inbound) as mesh:
        url = f"{mesh.outbound_url}/math/mcp"
        failures: list[int] = []
        stop = asyncio.Event()

        async def call(tool: str) -> int:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}}
            async with client.post(url, json=body) as resp:
                await resp.read()
                return resp.status

        async def allows(tool: str) -> bool:
            return await call(tool) == 200

        def reload_errors() -> float:
            value = mesh.server.metrics.registry.get_sample_value(
                "mcp_sidecar_policy_reload_errors_total"
            )
            return value or 0.0

        async def load() -> int:
            count = 0
            while not stop.is_set():
                status = await call("add")
                count += 1
                if status != 200:
                    failures.append(status)
            return count

        loader = asyncio.create_task(load())
        assert await call("multiply") == 403
        write({"default": "deny", "rules": [{"name": "math", "tools": ["add", "multiply"]}]})
        await until(lambda: allows("multiply"), "the new policy to allow multiply")
        errors_before = reload_errors()
        write("default: deny\nrules: [{name: broken, tools: 42}]\n")
        await until(lambda: reload_errors() > errors_before, "the broken policy to be counted")
        assert await call("multiply") == 200  # the old (valid) policy stayed in force
        stop.set()
        requests = await asyncio.wait_for(loader, WAIT)
        assert requests > 0 and failures == []


async def test_stream_resumption_is_not_replayed_under_a_policy(
    client: aiohttp.ClientSession,
) -> None:
    async with local_mesh(inbound={"mcp_policy": REFERENCE}) as mesh:
        mesh.upstream.gate.set()
        async with client.get(
            f"{mesh.outbound_url}/math/sse", headers={"Last-Event-ID": "41"}
        ) as resp:
            assert resp.status == 200
            await resp.read()
        assert "last-event-id" not in mesh.upstream.requests[0].headers


async def test_audit_of_a_denied_batch_records_each_elements_own_decision(
    client: aiohttp.ClientSession,
) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "multiply"}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ]
    async with local_mesh(inbound={"mcp_policy": REFERENCE}) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/mcp", json=batch) as resp:
            assert resp.status == 403
            answers = await resp.json()
        assert [a["error"]["data"]["reason"] for a in answers] == ["batch_denied", "no rule allows"]
        audits = [json.loads(x) for x in mesh.server_lines() if '"mcp_audit"' in x]
        assert [(a["tool"], a["decision"], a["rule"], a["batch"]) for a in audits] == [
            ("add", "allow", "agents-add", "deny"),
            ("multiply", "deny", None, "deny"),
            (None, "allow", None, "deny"),
        ]
        assert all(a["status"] == 403 for a in audits)
        # Metrics count what happened: the allowed element was refused with its batch.
        metrics = mesh.server.metrics.render()[0].decode()
        assert (
            'mcp_sidecar_mcp_requests_total{decision="deny",method="tools/call",tool="other"} 2.0'
            in metrics
        )
        async with client.post(f"{mesh.outbound_url}/math/mcp", json=batch[0]) as resp:
            assert resp.status == 200
        lone = json.loads([x for x in mesh.server_lines() if '"mcp_audit"' in x][-1])
        assert (lone["decision"], lone["rule"], lone["batch"]) == ("allow", "agents-add", None)
