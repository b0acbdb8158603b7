"""Token exchange (RFC 8693) through real sidecars: the agent's outbound trades the user's token
at an STS over loopback HTTPS (``tests.proxy.sts``) and the server's inbound validates the
delegated token (user = ``sub``, agent = ``act.sub``, bound to the mTLS peer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from mcp.shared.exceptions import MCPError

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, serve_mcp
from sidecar.demo.sts import DemoIdp, Sts, decode_unverified
from tests.proxy.issuer import Issuer
from tests.proxy.mesh import AGENT, OTHER_AGENT, TD, Mesh, local_mesh, outbound_config

RESOURCE = "https://math.example.com/mcp"


@pytest.fixture
async def sts(issuer: Issuer, tmp_path: Path) -> AsyncIterator[Sts]:
    # the dev STS checks users' tokens with ES256 only: the issuer's keys, as the EC keys they are
    keys = {k: key for k, key in issuer.keys.items() if isinstance(key, ec.EllipticCurvePrivateKey)}
    assert keys.keys() == issuer.keys.keys()
    server = await Sts(DemoIdp(issuer.url, keys), tmp_path).start()
    yield server
    await server.close()


def exchange(sts: Sts, **overrides: Any) -> dict[str, Any]:
    """An outbound route's ``token_exchange`` at ``sts`` for the math server (an override
    ``None`` removes the key)."""
    settings = {
        "issuer": sts.url,
        "ca_file": str(sts.ca_file),
        "resource": RESOURCE,
        "scopes": ["mcp:tools"],
        **overrides,
    }
    return {"token_exchange": {k: v for k, v in settings.items() if v is not None}}


def oauth_inbound(sts: Sts, **extra: Any) -> dict[str, Any]:
    """The server's inbound accepts the STS's tokens for itself (keys inline: the test STS's
    CA is not among the system's)."""
    return {
        "oauth": {"issuer": sts.url, "audience": RESOURCE, "jwks": {"keys": [sts.jwk]}},
        **extra,
    }


@contextlib.asynccontextmanager
async def delegation_mesh(sts: Sts, **route: Any) -> AsyncIterator[Mesh]:
    async with local_mesh(inbound=oauth_inbound(sts), route=exchange(sts, **route)) as mesh:
        sts.spiffe_jwks = lambda: json.loads(mesh.api.ca.jwt_bundle_json())
        yield mesh


def user_token(issuer: Issuer, sub: str = "bob", **claims: Any) -> str:
    return issuer.token(sub=sub, aud="agent-app", scope="mcp:tools mcp:admin", **claims)


async def post(
    client: aiohttp.ClientSession, mesh: Mesh, headers: dict[str, str]
) -> tuple[int, dict[str, Any], Any]:
    async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"{}", headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


def last_principal(mesh: Mesh) -> dict[str, Any]:
    principal: dict[str, Any] = json.loads(mesh.server_lines()[-1])["principal"]
    return principal


async def test_user_token_is_exchanged_and_never_forwarded(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    user = user_token(issuer)
    async with delegation_mesh(sts) as mesh:
        status, echoed, _ = await post(client, mesh, {"Authorization": f"Bearer {user}"})
        assert status == 200
        # What the server side saw: a delegated token for bob, acted on by the agent, from the
        # agent's own mTLS connection.
        principal = last_principal(mesh)
        assert principal["token_layer"] == "oauth" and principal["sub"] == "bob"
        assert principal["actor"] == AGENT and principal["actor_chain"] == [AGENT]
        assert principal["spiffe_id"] == AGENT
        # The user's token never got past the agent's sidecar (except to the STS).
        seen = mesh.upstream.requests[-1]
        assert user not in json.dumps(seen.headers) and user.encode() not in seen.body
        assert "authorization" not in echoed["headers"]
    # The STS got the RFC 8693 request: user token as subject, the agent's JWT-SVID as actor
    # and client assertion, the server as resource.
    (form,) = sts.forms
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token"] == user
    assert decode_unverified(form["actor_token"])["sub"] == AGENT
    assert decode_unverified(form["client_assertion"])["aud"] == [sts.url]
    assert form["resource"] == RESOURCE and form["scope"] == "mcp:tools"
    issued = decode_unverified(sts.issued[0])
    assert issued["sub"] == "bob" and issued["act"] == {"sub": AGENT}


async def test_exchanges_are_cached_per_user_and_coalesced(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    bob, carol = user_token(issuer), user_token(issuer, sub="carol")
    async with delegation_mesh(sts) as mesh:
        results = await asyncio.gather(
            *(post(client, mesh, {"Authorization": f"Bearer {bob}"}) for _ in range(6))
        )
        assert [r[0] for r in results] == [200] * 6
        assert len(sts.forms) == 1  # six concurrent requests, one exchange
        assert (await post(client, mesh, {"Authorization": f"Bearer {bob}"}))[0] == 200
        assert len(sts.forms) == 1  # cached
        assert (await post(client, mesh, {"Authorization": f"Bearer {carol}"}))[0] == 200
        assert len(sts.forms) == 2  # another user, another exchange
        assert last_principal(mesh)["sub"] == "carol"


async def test_replayed_exchanged_token_from_another_peer_is_refused(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    """The other agent is allowlisted and its request well-formed: only the actor binding
    (act.sub must be the mTLS peer) can refuse the token it copied."""
    async with delegation_mesh(sts) as mesh:
        assert (await post(client, mesh, {"Authorization": f"Bearer {user_token(issuer)}"}))[
            0
        ] == 200
        stolen = sts.issued[-1]
        forwarded = len(mesh.upstream.requests)
        other = await mesh.sidecar(outbound_config(mesh.sockets["other"], mesh.inbound_port))
        async with client.post(
            f"http://127.0.0.1:{other.port('outbound')}/math/mcp",
            data=b"{}",
            headers={"Authorization": f"Bearer {stolen}"},
        ) as resp:
            assert resp.status == 401
            body = await resp.json()
        assert body["error"] == "actor_mismatch"
        assert len(mesh.upstream.requests) == forwarded
        assert json.loads(mesh.server_lines()[-1])["peer"] == OTHER_AGENT


async def test_sts_down_is_a_clear_error_and_nothing_is_forwarded(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    sts.down = True
    async with delegation_mesh(sts, issuer=None, token_endpoint=f"{sts.url}/token") as mesh:
        status, body, _ = await post(
            client, mesh, {"Authorization": f"Bearer {user_token(issuer)}"}
        )
        assert status == 502 and body["error"] == "sts_unavailable"
        assert "HTTP 503" in body["message"]
        # and with discovery: the metadata is unreachable too
        assert mesh.upstream.requests == []
        assert json.loads(mesh.agent_lines()[-1])["reason"] == "sts_unavailable"


async def test_sts_discovery_failure_is_a_clear_error(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    sts.down = True
    async with delegation_mesh(sts) as mesh:
        status, body, _ = await post(
            client, mesh, {"Authorization": f"Bearer {user_token(issuer)}"}
        )
        assert status == 502 and body["error"] == "sts_unavailable"
        assert "could not be discovered" in body["message"]
        sts.down = False  # the STS comes back: discovered and exchanged on the next request
        assert (await post(client, mesh, {"Authorization": f"Bearer {user_token(issuer)}"}))[
            0
        ] == 200
        assert len(mesh.upstream.requests) == 1


async def test_sts_certificate_is_verified(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    """Without the STS's CA (system CAs only) the handshake fails: the user's token is never
    sent to an STS we cannot authenticate."""
    async with delegation_mesh(sts, ca_file=None) as mesh:
        status, body, _ = await post(
            client, mesh, {"Authorization": f"Bearer {user_token(issuer)}"}
        )
        assert status == 502 and body["error"] == "sts_unavailable"
        assert sts.forms == [] and mesh.upstream.requests == []


async def test_expired_user_token_is_401_with_the_sts_error(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    expired = user_token(issuer, exp=int(time.time()) - 60)
    async with delegation_mesh(sts) as mesh:
        status, body, headers = await post(client, mesh, {"Authorization": f"Bearer {expired}"})
        assert status == 401
        assert body["error"] == "subject_token_rejected" and body["sts_error"] == "invalid_grant"
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert mesh.upstream.requests == []


async def test_missing_user_token_is_refused_before_the_sts(
    client: aiohttp.ClientSession, sts: Sts
) -> None:
    async with delegation_mesh(sts) as mesh:
        status, body, headers = await post(client, mesh, {})
        assert status == 401 and body["error"] == "missing_subject_token"
        assert headers["WWW-Authenticate"] == 'Bearer realm="token_exchange"'
        assert sts.forms == [] and mesh.upstream.requests == []


async def test_token_for_another_server_is_refused_by_the_server(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts
) -> None:
    """Wrong audience: the route asks for a token for another resource; the server's sidecar
    refuses it (its inbound.oauth.audience is RESOURCE)."""
    async with delegation_mesh(sts, resource="https://files.example.com/mcp") as mesh:
        status, body, _ = await post(
            client, mesh, {"Authorization": f"Bearer {user_token(issuer)}"}
        )
        assert status == 401 and body["error"] == "wrong_audience"
        assert decode_unverified(sts.issued[0])["aud"] == "https://files.example.com/mcp"
        assert mesh.upstream.requests == []


async def test_custom_subject_header_and_client_secret(
    client: aiohttp.ClientSession, issuer: Issuer, sts: Sts, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("s3cr:t/é\n")
    sts.client_secrets["math-agent"] = "s3cr:t/é"
    sts.client_actors["math-agent"] = AGENT
    user = user_token(issuer)
    async with delegation_mesh(
        sts,
        subject_token_header="X-User-Token",
        client_auth="client_secret",
        client_id="math-agent",
        client_secret_file=str(secret_file),
    ) as mesh:
        status, echoed, _ = await post(
            client, mesh, {"X-User-Token": user, "Authorization": "Bearer agent-junk"}
        )
        assert status == 200, echoed
        assert "x-user-token" not in echoed["headers"] and "authorization" not in echoed["headers"]
        assert last_principal(mesh)["actor"] == AGENT
        (form,) = sts.forms
        assert "client_assertion" not in form and form["subject_token"] == user
        # a rotated secret is read again from the file
        secret_file.write_text("rotated")
        sts.client_secrets["math-agent"] = "rotated"
        other_user = user_token(issuer, sub="carol")
        status, _, _ = await post(client, mesh, {"X-User-Token": other_user})
        assert status == 200 and last_principal(mesh)["sub"] == "carol"


async def test_official_mcp_client_and_server_through_delegation(issuer: Issuer, sts: Sts) -> None:
    """The MCP SDK client sends the user's token to its sidecar; the MCP SDK server behind the
    other sidecar is reached on the user's behalf, the policy deciding on user and agent."""
    policy = {
        "default": "deny",
        "rules": [
            {"name": "bob-via-agent", "when": {"sub": ["bob"], "actor": [AGENT]}, "tools": ["add"]},
            {
                "name": "no-foreign",
                "effect": "deny",
                "when": {"actors_outside": [f"spiffe://{TD}"]},
            },
        ],
    }
    server = await serve_mcp("127.0.0.1", 0)
    user = user_token(issuer)
    try:
        async with local_mesh(
            upstream_port=server.port,
            inbound=oauth_inbound(sts, mcp_policy=policy),
            route=exchange(sts),
        ) as mesh:
            sts.spiffe_jwks = lambda: json.loads(mesh.api.ca.jwt_bundle_json())
            url = f"{mesh.outbound_url}/math{MCP_PATH}"
            headers = {"Authorization": f"Bearer {user}"}
            assert await mcp_client.list_tool_names(url, headers) == ["add"]
            result = await mcp_client.call_tool(url, "add", {"a": 20, "b": 22}, headers)
            assert result.structured == {"result": 42}
            carol = {"Authorization": f"Bearer {user_token(issuer, sub='carol')}"}
            with pytest.raises(MCPError, match="Forbidden by policy"):
                await mcp_client.call_tool(url, "add", {"a": 1, "b": 1}, carol)
            audits = [json.loads(line) for line in mesh.server_lines()]
            calls = [a for a in audits if a.get("kind") == "mcp_audit" and a["tool"] == "add"]
            assert [(a["principal"]["sub"], a["decision"]) for a in calls] == [
                ("bob", "allow"),
                ("carol", "deny"),
            ]
            assert {a["principal"]["actor"] for a in calls} == {AGENT}
        # What the MCP server received: neither the user's token nor any token at all.
        assert server.requests
        for record in server.requests:
            assert user not in json.dumps(record.headers)
            assert not any(name == "authorization" for name, _ in record.headers)
        assert len(sts.forms) == 2  # bob once (cached across the session), carol once
    finally:
        await server.close()
