"""Outbound JWT-SVID injection: the route's audience, fetched once and cached, replacing the
agent's own Authorization header."""

from __future__ import annotations

import datetime as dt

import aiohttp
import jwt

from sidecar.config import parse_config
from sidecar.identity.snapshot import JwtSvid
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger
from sidecar.proxy.outbound import OutboundProxy
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import RotatingTls
from tests.proxy.mesh import AGENT, local_mesh

AUDIENCE = "spiffe://example.org/ns/mcp/sa/math"


async def test_upstream_sees_a_cached_jwt_svid_for_the_route_audience(
    client: aiohttp.ClientSession,
) -> None:
    async with local_mesh(
        inbound={"forward_authorization": True},  # no token layer here: let us see it
        route={"jwt_svid_audience": AUDIENCE},
    ) as mesh:
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


class CountingSource:
    """A JWT-SVID source that counts fetches and hands out SVIDs expiring ``ttl`` from now."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.fetches = 0

    async def __call__(self, audience: str) -> JwtSvid:
        self.fetches += 1
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.ttl)
        return JwtSvid(f"token-{self.fetches}", SpiffeId.parse(AGENT), (audience,), expiry)


def outbound(source: CountingSource) -> OutboundProxy:
    config = parse_config(
        {
            "trust_domain": "example.org",
            "workload_api": "unix:///tmp/unused.sock",
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [
                    {
                        "name": "math",
                        "path_prefix": "/math",
                        "upstream": "https://127.0.0.1:1",
                        "server_spiffe_id": AUDIENCE,
                        "jwt_svid_audience": AUDIENCE,
                    }
                ],
            },
        }
    )
    assert config.outbound is not None
    no_identity = RotatingTls()  # no SVID yet: these tests never connect
    return OutboundProxy(
        config.outbound, no_identity, Metrics(), AccessLogger(enabled=False), jwt_svid=source
    )


async def test_authorization_header_is_reused_briefly() -> None:
    source = CountingSource(ttl=3600)
    proxy = outbound(source)
    first = await proxy.svid_headers.header(AUDIENCE)
    assert await proxy.svid_headers.header(AUDIENCE) == first == "Bearer token-1"
    assert source.fetches == 1


async def test_authorization_header_is_never_reused_near_the_svid_expiry() -> None:
    # An SVID that expires within the reuse window is asked for again on every request, so an
    # expired token is never sent from the header cache.
    source = CountingSource(ttl=0.5)
    proxy = outbound(source)
    await proxy.svid_headers.header(AUDIENCE)
    assert await proxy.svid_headers.header(AUDIENCE) == "Bearer token-2"
    assert source.fetches == 2
