"""Outbound: plain HTTP from the local agent (loopback only) -> mTLS to the route's upstream.

The upstream must present exactly the route's ``server_spiffe_id`` (never a hostname check,
never system CAs). That is checked right after the TLS handshake, inside the connector, so a
wrong server never receives a single byte of the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sidecar.config import OutboundConfig
from sidecar.identity.snapshot import JwtSvid
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger
from sidecar.proxy.errors import NoRoute
from sidecar.proxy.forward import forward, forwardable_headers
from sidecar.proxy.handler import ProxyHandler, RequestInfo
from sidecar.proxy.messages import Request, Response
from sidecar.proxy.mux import MuxEndpoint, build_endpoint
from sidecar.proxy.mux_target import server_verifier
from sidecar.proxy.routing import select_route
from sidecar.proxy.svid_header import JwtSvidHeaders
from sidecar.proxy.upstream import UpstreamPool, pool_for
from sidecar.tls.contexts import PeerRejected, RotatingTls


class OutboundProxy(ProxyHandler):
    direction = "outbound"

    def __init__(
        self,
        config: OutboundConfig,
        tls: RotatingTls,
        metrics: Metrics,
        access_log: AccessLogger,
        *,
        jwt_svid: Callable[[str], Awaitable[JwtSvid]] | None = None,
        on_identity_rejected: Callable[[PeerRejected], None] = lambda exc: None,
    ) -> None:
        super().__init__(config.limits, config.allowed_origins, metrics, access_log)
        self.config = config
        self.tls = tls
        self.svid_headers = JwtSvidHeaders(jwt_svid)
        self.pools: dict[str, UpstreamPool] = {}
        self.upstream_hosts: dict[str, str] = {}
        self.muxes: dict[str, MuxEndpoint] = {}
        for route in config.routes:
            if route.mux is not None:
                self.muxes[route.name] = build_endpoint(
                    route.name,
                    route.mux,
                    config.limits,
                    tls,
                    metrics,
                    self.svid_headers,
                    on_identity_rejected,
                )
                continue
            assert route.upstream is not None and route.server_spiffe_id is not None
            self.pools[route.name], self.upstream_hosts[route.name] = pool_for(
                route.upstream,
                config.limits,
                context=tls.client_context,
                verify=server_verifier(tls, route.server_spiffe_id, on_identity_rejected),
            )

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        for mux in self.muxes.values():
            await mux.close()

    async def proxy(self, request: Request, info: RequestInfo) -> Response:
        match = select_route(self.config.routes, request.headers.get("Host"), request.raw_path)
        if match is None:
            raise NoRoute(f"no route for {request.raw_path!r}")
        route = match.route
        info.route = route.name
        mux = self.muxes.get(route.name)
        if mux is not None:
            body = await request.read_body()
            info.bytes_in = len(body)
            return await mux.handle(request, body, match.upstream_path, info)
        info.peer = str(route.server_spiffe_id)
        info.upstream = route.upstream
        body = await request.read_body()
        info.bytes_in = len(body)
        headers = forwardable_headers(request.headers, drop=("x-forwarded-client-cert",))
        headers["Host"] = self.upstream_hosts[route.name]
        if route.jwt_svid_audience is not None:
            headers["Authorization"] = await self.svid_headers.header(route.jwt_svid_audience)
        return await forward(
            request, self.pools[route.name], match.upstream_path, headers, body, self.limits
        )
