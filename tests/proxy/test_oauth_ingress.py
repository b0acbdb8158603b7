"""An OAuth-only ingress (``mtls: off``, e.g. for a desktop MCP client): the official MCP SDK
client with a bearer token gets through; without one it gets the MCP authorization challenge,
whose resource_metadata URL really serves the RFC 9728 document."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sidecar.config import parse_config
from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, TOOL_NAMES, McpServerHandle, serve_mcp
from sidecar.runtime import Sidecar
from tests.proxy.issuer import Issuer
from tests.proxy.loopback import free_port


@pytest.fixture
async def stack() -> AsyncIterator[tuple[Sidecar, Issuer, McpServerHandle, str]]:
    issuer = await Issuer().start()
    server = await serve_mcp("127.0.0.1", 0)
    port = free_port()
    resource = f"http://127.0.0.1:{port}{MCP_PATH}"
    sidecar = Sidecar(
        parse_config(
            {
                "trust_domain": "example.org",
                "admin": {"listen": "127.0.0.1:0"},
                "inbound": {
                    "listen": f"127.0.0.1:{port}",
                    "upstream": f"http://127.0.0.1:{server.port}",
                    "mtls": "off",
                    "oauth": {
                        "issuer": issuer.url,
                        "audience": resource,
                        "required_scopes": ["mcp:tools"],
                    },
                },
            }
        ),
        access_stream=io.StringIO(),
    )
    await sidecar.start(svid_timeout=10)
    try:
        yield sidecar, issuer, server, resource
    finally:
        await sidecar.stop()
        await server.close()
        await issuer.close()


async def test_sdk_client_with_bearer_token(
    stack: tuple[Sidecar, Issuer, McpServerHandle, str],
) -> None:
    sidecar, issuer, server, resource = stack
    assert sidecar.source is None  # no SPIFFE needed for an OAuth-only ingress
    token = issuer.token(aud=resource, scope="mcp:tools")
    headers = {"Authorization": f"Bearer {token}"}
    assert set(await mcp_client.list_tool_names(resource, headers)) == set(TOOL_NAMES)
    result = await mcp_client.call_tool(resource, "multiply", {"a": 6, "b": 7}, headers)
    assert result.structured == {"result": 42}
    assert server.requests  # the MCP server was reached


async def test_without_token_the_challenge_leads_to_the_metadata(
    stack: tuple[Sidecar, Issuer, McpServerHandle, str],
) -> None:
    _, issuer, server, resource = stack
    with pytest.raises(ExceptionGroup):  # the SDK client fails on the 401
        await mcp_client.list_tool_names(resource, timeout=10)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            resource,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Accept": "application/json, text/event-stream"},
        ) as resp:
            assert resp.status == 401
            challenge = resp.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        metadata_url = params["resource_metadata"]
        assert metadata_url == resource.replace(
            MCP_PATH, "/.well-known/oauth-protected-resource" + MCP_PATH
        )
        async with session.get(metadata_url) as resp:
            assert resp.status == 200
            document = await resp.json()
    assert document["resource"] == resource
    assert document["authorization_servers"] == [issuer.url]
    assert document["scopes_supported"] == ["mcp:tools"]
    assert document["bearer_methods_supported"] == ["header"]
    assert server.requests == []  # never reached without a valid token
