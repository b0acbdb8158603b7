"""Outbound: plain HTTP from the local agent (loopback only) -> mTLS to the route's upstream.

The upstream must present exactly the route's ``server_spiffe_id`` (never a hostname check,
never system CAs). That is checked right after the TLS handshake, inside the connector, so a
wrong server never receives a single byte of the request.

The agent may also use the outbound as its HTTP proxy (``HTTP_PROXY``): an absolute-form
``http://math.local/mcp`` target is routed by its authority (which the parser made the ``Host``)
and path like any other request, and upgraded to mTLS. ``https://`` targets are refused: the
agent would expect a TLS session with the server itself, which we neither give nor can inspect.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from sidecar.config import OutboundConfig, RouteConfig
from sidecar.errors import SidecarError
from sidecar.identity.snapshot import JwtSvid
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger
from sidecar.proxy.errors import BadRequest, NoRoute
from sidecar.proxy.exchange import Forward
from sidecar.proxy.forward import forward, forwardable_headers
from sidecar.proxy.handler import ProxyHandler, RequestInfo
from sidecar.proxy.messages import Request, Response
from sidecar.proxy.mux import MuxEndpoint, build_endpoint
from sidecar.proxy.mux_target import server_verifier
from sidecar.proxy.routing import RouteMatch, select_route
from sidecar.proxy.svid_header import JwtSvidHeaders
from sidecar.proxy.token_exchange import TokenExchanger
from sidecar.proxy.upstream import UpstreamPool, encode_request, pool_for
from sidecar.tls.contexts import PeerRejected, RotatingTls
from sidecar.tokens.exchange import ExchangeCache, ExchangeError


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
                    breakers=route.circuit_breakers,
                )
                continue
            assert route.upstream is not None and route.server_spiffe_id is not None
            self.pools[route.name], self.upstream_hosts[route.name] = pool_for(
                route.upstream,
                config.limits,
                context=tls.client_context,
                verify=server_verifier(tls, route.server_spiffe_id, on_identity_rejected),
                server_name=route.sni,
                breakers=route.circuit_breakers,
                on_overflow=functools.partial(metrics.upstream_overflowed, "outbound", route.name),
            )
        exchanged = ExchangeCache()  # one bound for every route's exchanged tokens
        self.exchangers: dict[str, TokenExchanger] = {
            route.name: TokenExchanger(route.token_exchange, jwt_svid, exchanged)
            for route in config.routes
            if route.token_exchange is not None
        }

    async def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        for exchanger in self.exchangers.values():
            await exchanger.close()
        for mux in self.muxes.values():
            await mux.close()

    def refusal(self, exc: SidecarError, info: RequestInfo) -> Response:
        response = super().refusal(exc, info)
        if isinstance(exc, ExchangeError) and exc.www_authenticate is not None:
            response.headers["WWW-Authenticate"] = exc.www_authenticate
        return response

    def _route(self, request: Request, info: RequestInfo) -> RouteMatch[RouteConfig]:
        if request.target_scheme == "https":
            raise BadRequest(
                "https:// proxy requests are not supported: send http:// (e.g. "
                "http://math.mcp.svc/mcp); the outbound upgrades the request to mTLS",
                reason="https_proxy_request",
            )
        target = request.target
        match = select_route(self.config.routes, request.headers.get("Host"), target)
        if match is None:
            raise NoRoute(f"no route for {target!r}")
        info.route = match.route.name
        return match

    def prepare_proxy(
        self, request: Request, info: RequestInfo, body: bytes
    ) -> Response | Forward | None:
        match = self._route(request, info)
        route = match.route
        if route.name in self.muxes or route.name in self.exchangers:
            return None  # multiplexing, token exchange: their own coroutines
        info.peer = str(route.server_spiffe_id)
        info.upstream = route.upstream
        info.bytes_in = len(body)
        headers = forwardable_headers(request.headers, drop=("x-forwarded-client-cert",))
        headers["Host"] = self.upstream_hosts[route.name]
        if route.jwt_svid_audience is not None:
            svid_header = self.svid_headers.header_now(route.jwt_svid_audience)
            if svid_header is None:  # to be fetched
                return None
            headers["Authorization"] = svid_header
        data = encode_request(request.method, match.upstream_path, headers.items(), body)
        pool = self.pools[route.name]
        conn = pool.take_now()  # NotReady (our SVID expired) as in ``proxy``
        if conn is None:
            return None
        return Forward(pool, conn, data)

    async def proxy(self, request: Request, info: RequestInfo) -> Response:
        match = self._route(request, info)
        route = match.route
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
        exchanger = self.exchangers.get(route.name)
        if exchanger is not None:  # the user's token is exchanged, never forwarded itself
            headers.popall(exchanger.subject_header, None)
            headers["Authorization"] = await exchanger.authorization(request.headers)
        return await forward(
            request, self.pools[route.name], match.upstream_path, headers, body, self.limits
        )
