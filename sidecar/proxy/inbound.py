"""Inbound: mTLS from other workloads' sidecars -> plain HTTP to the local MCP server.

Order of checks (cheapest first, fail closed): TLS handshake + SPIFFE verification + allowlist
(once per connection, in ``proxy.server``) -> framing/Origin -> body size -> forward. A refused
peer gets a 403 JSON body naming the reason and not one byte reaches the upstream.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web
from yarl import URL

from sidecar.config import InboundConfig
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger
from sidecar.proxy.errors import Forbidden
from sidecar.proxy.forward import forward, forwardable_headers, read_body
from sidecar.proxy.handler import ProxyHandler, RequestInfo
from sidecar.proxy.server import ConnectionHandler
from sidecar.spiffe.ids import SpiffeId

XFCC = "X-Forwarded-Client-Cert"


def xfcc_value(our_id: SpiffeId, peer: SpiffeId, cert_sha256: str | None) -> str:
    """Envoy's XFCC element for a verified peer: ``By=<us>;Hash=<cert sha256>;URI=<peer>``."""
    parts = [f"By={our_id}"]
    if cert_sha256:
        parts.append(f"Hash={cert_sha256}")
    parts.append(f"URI={peer}")
    return ";".join(parts)


class InboundProxy(ProxyHandler):
    direction = "inbound"

    def __init__(
        self,
        config: InboundConfig,
        our_id: Callable[[], SpiffeId],
        metrics: Metrics,
        access_log: AccessLogger,
    ) -> None:
        super().__init__(config.limits, config.allowed_origins, metrics, access_log)
        self.config = config
        self.our_id = our_id
        upstream = URL(config.upstream)
        self.upstream_base = str(upstream.with_path("").with_query(None)).rstrip("/")
        self.upstream_host = upstream.raw_authority
        self.upstream_path = upstream.raw_path.rstrip("/")
        self.drop_headers = ("x-forwarded-client-cert",) + (
            () if config.forward_authorization else ("authorization",)
        )
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def close(self) -> None:
        await self.session.close()

    async def proxy(self, request: web.BaseRequest, info: RequestInfo) -> web.StreamResponse:
        conn = request.protocol
        if not isinstance(conn, ConnectionHandler):  # pragma: no cover - wiring error
            raise Forbidden("connection was not accepted by a SPIFFE listener", reason="no_peer")
        if conn.rejection is not None:
            info.peer = str(conn.rejection.peer) if conn.rejection.peer else None
            info.close_connection = True
            raise Forbidden(conn.rejection.message, reason=conn.rejection.reason)
        if conn.peer is None:
            info.close_connection = True
            raise Forbidden("no verified SPIFFE identity on this connection", reason="no_peer")
        info.peer = str(conn.peer)
        info.upstream = self.config.upstream
        body = await read_body(request, self.limits.max_request_body)
        info.bytes_in = len(body)
        headers = forwardable_headers(request.headers, drop=self.drop_headers)
        headers[XFCC] = xfcc_value(self.our_id(), conn.peer, conn.peer_cert_sha256)
        headers["Host"] = self.upstream_host
        headers["X-Forwarded-Proto"] = "https"
        url = self.upstream_base + self.upstream_path + request.raw_path
        response, info.bytes_out = await forward(
            request, self.session, url, headers, body, self.limits
        )
        return response
