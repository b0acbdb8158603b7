"""The token layer in the data path: JWT-SVIDs bound to the mTLS peer, OAuth access tokens
(MCP authorization spec) with RFC 9728 metadata and challenges, JWKS rotation without storms."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import re
from typing import Any

import aiohttp
import pytest

from sidecar.spiffe.ids import SpiffeId
from tests.proxy.issuer import Issuer
from tests.proxy.mesh import AGENT, ROGUE, SERVER, Mesh, local_mesh
from tests.tokens.jwtkit import b64, b64json, tamper_payload

RESOURCE = "https://mcp.example.com/mcp"
METADATA_URL = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"


def challenge_params(value: str) -> dict[str, str]:
    assert value.startswith("Bearer ")
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', value))


def last_log(mesh: Mesh) -> dict[str, Any]:
    line: dict[str, Any] = json.loads(mesh.server_lines()[-1])
    return line


# -- JWT-SVID --------------------------------------------------------------------------------


async def test_jwt_svid_from_outbound_is_accepted_and_not_forwarded(
    client: aiohttp.ClientSession,
) -> None:
    async with local_mesh(
        inbound={"jwt_svid": {"audiences": [SERVER]}}, route={"jwt_svid_audience": SERVER}
    ) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"{}") as resp:
            assert resp.status == 200
            echoed = await resp.json()
        assert "authorization" not in echoed["headers"]
        principal = last_log(mesh)["principal"]
        assert principal["spiffe_id"] == AGENT and principal["sub"] == AGENT
        assert principal["token_layer"] == "jwt_svid"


async def test_missing_jwt_svid_is_401_with_challenge(client: aiohttp.ClientSession) -> None:
    async with local_mesh(inbound={"jwt_svid": {"audiences": [SERVER]}}) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"{}") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "missing_token"
            assert resp.headers["WWW-Authenticate"] == 'Bearer realm="spiffe"'
        assert mesh.upstream.requests == []


async def test_jwt_svid_of_another_workload_is_useless(client: aiohttp.ClientSession) -> None:
    """bind_to_peer: the agent presents a (stolen) valid JWT-SVID whose sub is the rogue."""
    async with local_mesh(inbound={"jwt_svid": {"audiences": [SERVER]}}) as mesh:
        stolen = mesh.api.ca.issue_jwt_svid(
            SpiffeId.parse(ROGUE), [SERVER], dt.timedelta(minutes=5)
        )
        async with client.post(
            f"{mesh.outbound_url}/math/mcp",
            data=b"{}",
            headers={"Authorization": f"Bearer {stolen}"},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "peer_mismatch"
            assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
        assert mesh.upstream.requests == []
        metrics = mesh.server.metrics.render()[0].decode()
        assert 'layer="jwt_svid",reason="peer_mismatch"} 1.0' in metrics


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ("alg_none", "bad_algorithm"),
        ("wrong_audience", "wrong_audience"),
        ("tampered", "bad_signature"),
    ],
)
async def test_forged_jwt_svids_are_refused_end_to_end(
    client: aiohttp.ClientSession, mutate: str, reason: str
) -> None:
    async with local_mesh(inbound={"jwt_svid": {"audiences": [SERVER]}}) as mesh:
        ca = mesh.api.ca
        agent = SpiffeId.parse(AGENT)
        if mutate == "alg_none":
            header = {"alg": "none", "typ": "JWT", "kid": ca.jwt_kid}
            payload = {"sub": AGENT, "aud": [SERVER], "exp": 4_000_000_000}
            token = f"{b64json(header)}.{b64json(payload)}."
        elif mutate == "wrong_audience":
            token = ca.issue_jwt_svid(
                agent, ["spiffe://example.org/other"], dt.timedelta(minutes=5)
            )
        else:  # a real JWT-SVID whose payload was changed after signing
            genuine = ca.issue_jwt_svid(agent, [SERVER], dt.timedelta(minutes=5))
            token = tamper_payload(genuine, aud=[SERVER, "spiffe://example.org/extra"])
        async with client.post(
            f"{mesh.outbound_url}/math/mcp",
            data=b"{}",
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == reason
        assert mesh.upstream.requests == []


# -- OAuth (MCP authorization) ---------------------------------------------------------------


def oauth_inbound(issuer: Issuer, **oauth: Any) -> dict[str, Any]:
    return {
        "oauth": {
            "issuer": issuer.url,
            "audience": RESOURCE,
            "jwks_uri": f"{issuer.url}/jwks",
            "required_scopes": ["mcp:tools"],
            "typ": "at+jwt",
            "jwks_refresh_interval": "1h",
            **oauth,
        }
    }


async def test_oauth_challenge_and_metadata_document(
    client: aiohttp.ClientSession, issuer: Issuer
) -> None:
    async with local_mesh(inbound=oauth_inbound(issuer)) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"{}") as resp:
            assert resp.status == 401
            params = challenge_params(resp.headers["WWW-Authenticate"])
        assert params == {"resource_metadata": METADATA_URL}  # no error code without a token
        path = "/.well-known/oauth-protected-resource/mcp"
        for url in (
            f"{mesh.outbound_url}/math{path}",
            f"{mesh.outbound_url}/math/.well-known/oauth-protected-resource",
        ):
            async with client.get(url) as resp:
                assert resp.status == 200
                document = await resp.json()
            assert document == {
                "resource": RESOURCE,
                "authorization_servers": [issuer.url],
                "scopes_supported": ["mcp:tools"],
                "bearer_methods_supported": ["header"],
            }
        assert mesh.upstream.requests == []


@pytest.mark.parametrize(
    ("claims", "status", "reason"),
    [
        ({"aud": RESOURCE, "scope": "mcp:tools openid"}, 200, None),
        ({"aud": [RESOURCE], "scp": ["mcp:tools"]}, 200, None),
        ({"aud": "https://other.example.com/mcp", "scope": "mcp:tools"}, 401, "wrong_audience"),
        (
            {"aud": RESOURCE, "scope": "mcp:tools", "iss": "https://evil.example"},
            401,
            "wrong_issuer",
        ),
        ({"aud": RESOURCE, "scope": "openid"}, 403, "insufficient_scope"),
    ],
)
async def test_oauth_tokens(
    client: aiohttp.ClientSession,
    issuer: Issuer,
    claims: dict[str, Any],
    status: int,
    reason: str | None,
) -> None:
    async with local_mesh(inbound=oauth_inbound(issuer)) as mesh:
        async with client.post(
            f"{mesh.outbound_url}/math/mcp",
            data=b"{}",
            headers={"Authorization": f"Bearer {issuer.token(**claims)}"},
        ) as resp:
            assert resp.status == status
            body = await resp.json()
            if status == 200:
                assert "authorization" not in body["headers"]  # never passed upstream
                assert last_log(mesh)["principal"]["sub"] == "user-1"
                return
            assert body["error"] == reason
            params = challenge_params(resp.headers["WWW-Authenticate"])
        assert params["resource_metadata"] == METADATA_URL
        assert params["error"] == ("insufficient_scope" if status == 403 else "invalid_token")
        if status == 403:
            assert params["scope"] == "mcp:tools"
        assert mesh.upstream.requests == []


async def test_jwks_rotation_and_no_refresh_storm(
    client: aiohttp.ClientSession, issuer: Issuer
) -> None:
    async with local_mesh(inbound=oauth_inbound(issuer, jwks_refresh_interval="1h")) as mesh:
        url = f"{mesh.outbound_url}/math/mcp"

        async def call(token: str) -> int:
            async with client.post(
                url, data=b"{}", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                await resp.read()
                return resp.status

        assert await call(issuer.token(aud=RESOURCE, scope="mcp:tools")) == 200
        assert issuer.jwks_fetches == 1
        # A flood of tokens with a kid nobody knows: no fetch at all, because the last one was
        # less than jwks_refresh_interval (1 h) ago — at most one fetch per interval.
        unknown = [
            issuer.token(aud=RESOURCE, scope="mcp:tools", kid=f"nope-{i}") for i in range(30)
        ]
        statuses = await asyncio.gather(*(call(t) for t in unknown))
        assert set(statuses) == {401}
        assert issuer.jwks_fetches == 1


async def test_new_kid_accepted_after_one_refresh(
    client: aiohttp.ClientSession, issuer: Issuer
) -> None:
    async with local_mesh(inbound=oauth_inbound(issuer, jwks_refresh_interval="10ms")) as mesh:
        url = f"{mesh.outbound_url}/math/mcp"
        first = issuer.token(aud=RESOURCE, scope="mcp:tools")
        async with client.post(url, data=b"{}", headers={"Authorization": f"Bearer {first}"}) as r:
            assert r.status == 200
        issuer.rotate("k2")
        await asyncio.sleep(0.05)  # let the 10 ms refresh interval pass
        rotated = issuer.token(aud=RESOURCE, scope="mcp:tools")
        async with client.post(
            url, data=b"{}", headers={"Authorization": f"Bearer {rotated}"}
        ) as r:
            assert r.status == 200
        assert issuer.jwks_fetches == 2


async def test_certificate_bound_token_must_match_the_client_cert(
    client: aiohttp.ClientSession, issuer: Issuer
) -> None:
    async with local_mesh(inbound=oauth_inbound(issuer, require_cnf=True)) as mesh:
        url = f"{mesh.outbound_url}/math/mcp"
        leaf = mesh.api.current_svid(AGENT).leaf
        from cryptography.hazmat.primitives.serialization import Encoding

        thumb = b64(hashlib.sha256(leaf.public_bytes(Encoding.DER)).digest())
        cases = {
            "bound": (issuer.token(aud=RESOURCE, scope="mcp:tools", cnf={"x5t#S256": thumb}), 200),
            "other_cert": (
                issuer.token(aud=RESOURCE, scope="mcp:tools", cnf={"x5t#S256": b64(b"x" * 32)}),
                401,
            ),
            "unbound": (issuer.token(aud=RESOURCE, scope="mcp:tools"), 401),
        }
        for name, (token, status) in cases.items():
            async with client.post(
                url, data=b"{}", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == status, name
        assert len(mesh.upstream.requests) == 1


async def test_resource_metadata_url_follows_the_public_url(
    client: aiohttp.ClientSession, issuer: Issuer
) -> None:
    inbound = oauth_inbound(issuer)
    inbound["public_url"] = "https://gateway.example.net"
    async with (
        local_mesh(inbound=inbound) as mesh,
        client.post(f"{mesh.outbound_url}/math/mcp", data=b"{}") as resp,
    ):
        assert resp.status == 401
        params = challenge_params(resp.headers["WWW-Authenticate"])
    assert params == {
        "resource_metadata": "https://gateway.example.net/.well-known/oauth-protected-resource/mcp"
    }
