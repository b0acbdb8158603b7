"""Edge-gateway mode: one OAuth-protected endpoint (``mtls: off``, RFC 9728 metadata, 401/403
challenges) in front of two MCP servers, each reached over mTLS with the gateway's own SVID;
role-based tool rules and rate limits on the prefixed names, as in the talk: an admin may use
echo, a user only get_time. (The identity provider is the test issuer: mocked, as no real one
runs here.)"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest
from mcp import MCPError
from yarl import URL

from sidecar.demo import mcp_client
from sidecar.demo import mesh as demo_mesh
from sidecar.demo.mcp_server import MCP_PATH
from sidecar.mcp.policy import FORBIDDEN_CODE
from sidecar.mcp.ratelimit import RATE_LIMITED_CODE
from sidecar.runtime import Sidecar
from tests.proxy.issuer import Issuer
from tests.proxy.loopback import free_port
from tests.proxy.muxmesh import IDENTITIES, MuxMesh, mux_mesh
from tests.proxy.scripted_mcp import ScriptedMcp

POLICY = {
    "default": "deny",
    "rules": [
        {"name": "admins-echo", "when": {"roles": ["admin"]}, "tools": ["*__echo"]},
        {
            "name": "everyone-time",
            "when": {"roles": ["admin", "user"]},
            "tools": ["clock__get_time"],
        },
    ],
}


@dataclass
class Gateway:
    mesh: MuxMesh
    issuer: Issuer
    url: str
    sidecar: Sidecar

    def headers(self, *roles: str, sub: str = "alice") -> dict[str, str]:
        token = self.issuer.token(aud=self.url, scope="mcp:tools", roles=list(roles), sub=sub)
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def gateway(issuer: Issuer) -> AsyncIterator[Gateway]:
    async with mux_mesh() as mesh:
        port = free_port()
        url = f"http://127.0.0.1:{port}{MCP_PATH}"
        sidecar = await mesh.gateway(
            listen=f"127.0.0.1:{port}",
            mtls="off",
            oauth={"issuer": issuer.url, "audience": url, "required_scopes": ["mcp:tools"]},
            mcp_policy=POLICY,
            rate_limits=[
                {"per": "principal_tool", "rate": "1/h", "burst": 1, "tools": ["clock__*"]}
            ],
        )
        yield Gateway(mesh, issuer, url, sidecar)


async def test_a_user_sees_and_may_call_only_what_the_rule_allows(gateway: Gateway) -> None:
    user = gateway.headers("user")
    assert await mcp_client.list_tool_names(gateway.url, user) == ["clock__get_time"]
    result = await mcp_client.call_tool(gateway.url, "clock__get_time", {}, user)
    assert result.structured == {"result": "12:00"}
    async with mcp_client.open_session(gateway.url, user) as s:
        with pytest.raises(MCPError) as denied:
            await s.client.call_tool("math__echo", {"text": "hi"})
        assert denied.value.error.code == FORBIDDEN_CODE
        assert "admins-echo" not in denied.value.error.message  # no rule allows it
        assert gateway.mesh.calls == ["clock.get_time"]  # the denied call never ran
        # the rate limit counts the prefixed name: the burst of 1 is spent
        with pytest.raises(MCPError) as limited:
            await s.client.call_tool("clock__get_time", {})
        assert limited.value.error.code == RATE_LIMITED_CODE


async def test_an_admin_sees_both_servers_echo(gateway: Gateway) -> None:
    admin = gateway.headers("admin", sub="root")
    names = await mcp_client.list_tool_names(gateway.url, admin)
    assert sorted(names) == ["clock__echo", "clock__get_time", "math__echo"]
    echoed = await mcp_client.call_tool(gateway.url, "math__echo", {"text": "hi"}, admin)
    assert echoed.text == "math: hi"


async def test_the_targets_are_asked_on_the_normalised_path(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway routes and forwards is the normalised path (as on a plain inbound),
    never the dot-segments the client sent."""
    mux = gateway.sidecar.inbound.mux if gateway.sidecar.inbound else None
    assert mux is not None
    paths: list[str] = []
    handle = mux.handle

    async def spy(request: Any, body: bytes, path: str, *args: Any, **kwargs: Any) -> Any:
        paths.append(path)
        return await handle(request, body, path, *args, **kwargs)

    monkeypatch.setattr(mux, "handle", spy)
    sneaky = gateway.url.replace(MCP_PATH, f"/x/..{MCP_PATH}/%2e/")
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            URL(sneaky, encoded=True),
            json=ping,
            headers={**gateway.headers("user"), "Accept": "application/json, text/event-stream"},
        ) as resp,
    ):
        await resp.read()
    assert paths == [f"{MCP_PATH}/"]


async def test_oauth_challenge_and_metadata(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gateway.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Accept": "application/json, text/event-stream"},
        ) as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
        metadata_url = dict(re.findall(r'(\w+)="([^"]*)"', challenge))["resource_metadata"]
        async with session.get(metadata_url) as resp:
            document = await resp.json()
        assert document["resource"] == gateway.url
        no_scope = gateway.issuer.token(aud=gateway.url, roles=["admin"])
        async with session.post(
            gateway.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Authorization": f"Bearer {no_scope}"},
        ) as resp:
            assert resp.status == 403
            assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]


async def test_the_targets_see_the_gateways_own_identity(gateway: Gateway) -> None:
    await mcp_client.list_tool_names(gateway.url, gateway.headers("user"))
    for name in ("math", "clock"):
        peers = {line.get("peer") for line in gateway.mesh.inbound_lines(name)}
        assert peers == {IDENTITIES["gateway"]}, name  # mTLS with the gateway's SVID


async def test_a_session_belongs_to_its_caller(gateway: Gateway) -> None:
    async with mcp_client.open_session(gateway.url, gateway.headers("user")) as s:
        stolen = s.session_id
        assert stolen is not None
        other = await mcp_client.post_raw(
            gateway.url,
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            gateway.headers("admin", sub="mallory"),
            session_id=stolen,
        )
        assert other.status == 404  # another caller cannot use it, even with the id


async def test_targets_get_the_gateways_jwt_svid_never_the_clients_token(
    issuer: Issuer, scripted: ScriptedMcp
) -> None:
    audience = "spiffe://example.org/ns/mcp/sa/scripted"
    seen: dict[str, list[str | None]] = {}
    tokens: list[str] = []
    # the scripted server's sidecar passes Authorization on, so the server sees what the
    # gateway sent: never the client's OAuth token; the gateway's JWT-SVID where configured
    async with mux_mesh(scripted.port, {"forward_authorization": True}) as mesh:
        for case in ("plain", "jwt_svid"):
            port = free_port()
            url = f"http://127.0.0.1:{port}{MCP_PATH}"
            targets = mesh.targets()
            if case == "jwt_svid":
                targets[-1]["jwt_svid_audience"] = audience
            await mesh.gateway(
                listen=f"127.0.0.1:{port}",
                mtls="off",
                oauth={"issuer": issuer.url, "audience": url},
                targets=targets,
            )
            tokens.append(issuer.token(aud=url))
            scripted.authorizations.clear()
            headers = {"Authorization": f"Bearer {tokens[-1]}"}
            assert "scripted__a1" in await mcp_client.list_tool_names(url, headers)
            seen[case] = list(scripted.authorizations)
    assert seen["plain"] and set(seen["plain"]) == {None}
    assert seen["jwt_svid"]
    for header in seen["jwt_svid"]:
        assert header is not None and all(token not in header for token in tokens)
        claims = jwt.decode(header.removeprefix("Bearer "), options={"verify_signature": False})
        assert claims["aud"] in (audience, [audience])
        assert claims["sub"] == IDENTITIES["gateway"]


async def test_an_mtls_gateway_serves_agents_of_the_mesh() -> None:
    """The gateway with mTLS in: an agent's sidecar reaches it by its SPIFFE ID; the gateway
    reaches the servers with its own."""
    async with mux_mesh() as mesh:
        gateway = await mesh.gateway(allow_spiffe_ids=[IDENTITIES["agent"]])
        agent = await mesh.sidecar(
            demo_mesh.outbound_config(
                mesh.sockets["agent"], gateway.port("inbound"), IDENTITIES["gateway"]
            )
        )
        url = f"http://127.0.0.1:{agent.port('outbound')}/math{MCP_PATH}"
        assert "clock__get_time" in await mcp_client.list_tool_names(url)
        assert (
            await mcp_client.call_tool(url, "math__add", {"a": 1, "b": 2}, None)
        ).structured == {"result": 3}
        for name in ("math", "clock"):
            peers = {line.get("peer") for line in mesh.inbound_lines(name)}
            assert IDENTITIES["gateway"] in peers
