"""Outbound JWT-SVID injection: the route's audience, fetched once and cached, replacing the
agent's own Authorization header."""

from __future__ import annotations

import aiohttp
import jwt

from tests.proxy.mesh import AGENT, local_mesh

AUDIENCE = "spiffe://example.org/ns/mcp/sa/math"


async def test_upstream_sees_a_cached_jwt_svid_for_the_route_audience() -> None:
    async with (
        local_mesh(
            inbound={"forward_authorization": True},  # no token layer here: let us see it
            route={"jwt_svid_audience": AUDIENCE},
        ) as mesh,
        aiohttp.ClientSession() as client,
    ):
        tokens = []
        for _ in range(5):
            async with client.post(
                f"{mesh.outbound_url}/math/mcp",
                data=b"{}",
                headers={"Authorization": "Bearer agent-made-this-up"},
            ) as resp:
                assert resp.status == 200
                echoed = await resp.json()
            (value,) = echoed["headers"]["authorization"]
            tokens.append(value.removeprefix("Bearer "))
        assert len(set(tokens)) == 1  # cached: one token for all five requests
        claims = jwt.decode(
            tokens[0],
            mesh.api.ca.jwt_keys()[jwt.get_unverified_header(tokens[0])["kid"]],
            algorithms=["ES256", "RS256"],
            audience=AUDIENCE,
        )
        assert claims["sub"] == AGENT
        assert mesh.api.jwt_svids_issued[AGENT] == 1
