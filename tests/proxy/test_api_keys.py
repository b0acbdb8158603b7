"""API keys through real sidecars: with mTLS (the agent sends its key through its outbound) and
without (a plain-HTTP ingress for the official MCP SDK client); the policy sees the key's name
and roles; unknown keys and keys removed from the file are refused, and keys never reach the
server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, McpServerHandle
from sidecar.tokens.apikeys import hash_key, new_key
from tests.proxy.mesh import local_mesh, start_sidecar

POLICY = {
    "default": "deny",
    "rules": [{"name": "deployers-add", "when": {"roles": ["deployer"]}, "tools": ["add"]}],
}


def write_keys(path: Path, *keys: tuple[str, str, str, list[str]]) -> None:
    entries = [
        {"id": key_id, "name": name, "hash": str(hash_key(key, ln=10))}
        | ({"roles": roles} if roles else {})
        for key_id, key, name, roles in keys
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))


async def test_api_key_over_mtls_through_the_outbound(
    client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    key_id, key = new_key()
    path = tmp_path / "keys.yaml"
    write_keys(path, (key_id, key, "ci-bot", ["deployer"]))
    inbound = {"api_keys": {"file": str(path), "header": "X-API-Key", "reload_interval": 3600}}
    async with local_mesh(inbound=inbound) as mesh:
        url = f"{mesh.outbound_url}/math/mcp"
        async with client.post(url, data=b"{}", headers={"X-API-Key": key}) as resp:
            assert resp.status == 200
            echoed = await resp.json()
        assert "x-api-key" not in echoed["headers"]  # a credential for the sidecar only
        principal = json.loads(mesh.server_lines()[-1])["principal"]
        assert principal["token_layer"] == "api_key" and principal["sub"] == "ci-bot"
        assert principal["spiffe_id"] is not None  # mTLS still holds as well
        async with client.post(url, data=b"{}", headers={"X-API-Key": new_key()[1]}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "unknown_api_key"
            assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="api_key"')
        async with client.post(url, data=b"{}") as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "missing_token"
        # the key is removed from the file: refused once the file was reloaded
        write_keys(path)
        assert mesh.server.api_keys is not None and mesh.server.api_keys.check_now()
        async with client.post(url, data=b"{}", headers={"X-API-Key": key}) as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "unknown_api_key"
        assert len(mesh.upstream.requests) == 1


async def test_api_key_ingress_without_mtls_for_the_mcp_sdk(
    mcp_server: McpServerHandle, tmp_path: Path
) -> None:
    (deployer_id, deployer), (reader_id, reader) = new_key(), new_key()
    path = tmp_path / "keys.yaml"
    write_keys(path, (deployer_id, deployer, "ci-bot", ["deployer"]), (reader_id, reader, "r", []))
    config: dict[str, Any] = {
        "trust_domain": "example.org",
        "admin": {"listen": "127.0.0.1:0"},
        "inbound": {
            "listen": "127.0.0.1:0",
            "upstream": f"http://127.0.0.1:{mcp_server.port}",
            "mtls": "off",
            "api_keys": {"file": str(path)},
            "mcp_policy": POLICY,
        },
    }
    sidecar = await start_sidecar(config)
    try:
        assert sidecar.source is None  # no SPIFFE needed
        url = f"http://127.0.0.1:{sidecar.port('inbound')}{MCP_PATH}"
        headers = {"Authorization": f"Bearer {deployer}"}
        assert await mcp_client.list_tool_names(url, headers) == ["add"]
        result = await mcp_client.call_tool(url, "add", {"a": 1, "b": 2}, headers)
        assert result.structured == {"result": 3}
        with pytest.raises(MCPError, match="Forbidden by policy"):  # the key's roles decide
            await mcp_client.call_tool(
                url, "add", {"a": 1, "b": 2}, {"Authorization": f"Bearer {reader}"}
            )
        for record in mcp_server.requests:
            assert not any(name == "authorization" for name, _ in record.headers)
    finally:
        await sidecar.stop()
