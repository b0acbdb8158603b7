"""Outbound: plain HTTP from the local agent (loopback only) -> mTLS to the route's upstream.

The upstream must present exactly the route's ``server_spiffe_id`` (never a hostname check,
never system CAs). That is checked right after the TLS handshake, inside the connector, so a
wrong server never receives a single byte of the request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from sidecar.config import OutboundConfig, RouteConfig
from sidecar.identity.snapshot import JwtSvid
from sidecar.identity.workload_api import WorkloadApiError
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger
from sidecar.proxy.errors import JwtSvidUnavailable, NoRoute
from sidecar.proxy.forward import UpstreamIdentityError, forward, forwardable_headers, read_body
from sidecar.proxy.handler import ProxyHandler, RequestInfo
from sidecar.proxy.routing import select_route
from sidecar.tls.contexts import PeerRejected, RotatingTls


class SpiffeConnector(aiohttp.TCPConnector):
    """A pooled connector that SPIFFE-verifies every new connection before it is used."""

    def __init__(self, verify: Callable[[Any], object], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._verify = verify

    async def _wrap_create_connection(self, *args: Any, req: Any, **kwargs: Any) -> tuple[Any, Any]:
        transport, protocol = await super()._wrap_create_connection(*args, req=req, **kwargs)
        try:
            self._verify(transport.get_extra_info("ssl_object"))
        except PeerRejected as exc:
            transport.abort()
            raise UpstreamIdentityError(req.connection_key, exc) from exc
        return transport, protocol


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
        self.jwt_svid = jwt_svid
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.upstream_hosts: dict[str, str] = {}
        for route in config.routes:
            self.sessions[route.name] = aiohttp.ClientSession(
                connector=SpiffeConnector(
                    self._verifier(route, on_identity_rejected), limit=0, keepalive_timeout=30
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
            self.upstream_hosts[route.name] = URL(route.upstream).raw_authority

    def _verifier(
        self, route: RouteConfig, on_rejected: Callable[[PeerRejected], None]
    ) -> Callable[[Any], object]:
        def verify(ssl_object: Any) -> object:
            try:
                return self.tls.verify_server(ssl_object, route.server_spiffe_id)
            except PeerRejected as exc:
                on_rejected(exc)
                raise

        return verify

    async def _token(self, audience: str) -> str:
        """Our JWT-SVID for ``audience`` (cached by the source, refreshed before expiry); it
        replaces whatever Authorization header the local agent sent."""
        if self.jwt_svid is None:  # pragma: no cover - wiring error
            raise JwtSvidUnavailable("no Workload API source for JWT-SVIDs")
        try:
            svid = await self.jwt_svid(audience)
        except WorkloadApiError as exc:
            raise JwtSvidUnavailable(exc.message) from exc
        return svid.token

    async def close(self) -> None:
        for session in self.sessions.values():
            await session.close()

    async def proxy(self, request: web.BaseRequest, info: RequestInfo) -> web.StreamResponse:
        match = select_route(self.config.routes, request.headers.get("Host"), request.raw_path)
        if match is None:
            raise NoRoute(f"no route for {request.raw_path!r}")
        route = match.route
        info.route = route.name
        info.peer = str(route.server_spiffe_id)
        info.upstream = route.upstream
        body = await read_body(request, self.limits.max_request_body)
        info.bytes_in = len(body)
        headers = forwardable_headers(request.headers, drop=("x-forwarded-client-cert",))
        headers["Host"] = self.upstream_hosts[route.name]
        if route.jwt_svid_audience is not None:
            headers["Authorization"] = f"Bearer {await self._token(route.jwt_svid_audience)}"
        url = route.upstream.rstrip("/") + match.upstream_path
        response, info.bytes_out = await forward(
            request,
            self.sessions[route.name],
            url,
            headers,
            body,
            self.limits,
            ssl=self.tls.client_context(),
        )
        return response
