"""Inbound: mTLS from other workloads' sidecars -> plain HTTP to the local MCP server.

Order of checks (cheapest first, fail closed): TLS handshake + SPIFFE verification + allowlist
(once per connection, in ``proxy.connection``) -> strict head and framing (``http1``) -> method,
body and path (``ProxyHandler.admit``) -> Origin -> token layer (JWT-SVID / OAuth,
``tokens.gate``) -> body size -> forward. A refused peer gets a 403 JSON body naming the reason,
a missing or bad token a 401/403 with ``WWW-Authenticate``; not one byte reaches the upstream.
With ``mtls: off`` the listener is plain HTTP and the OAuth layer is mandatory (config-checked).
An absolute-form target (``https://math.mcp.svc:8443/mcp``) is served like its origin-form path:
the Host sent upstream is the local server's either way.
An edge gateway (``inbound.targets``) multiplexes several MCP servers (``proxy.mux``) after the
same checks, so policy, rate limits and list filtering see the multiplexed names.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

from multidict import CIMultiDict

from sidecar.config import InboundConfig
from sidecar.errors import SidecarError
from sidecar.mcp.filter import ListRewrite
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger
from sidecar.proxy.errors import Forbidden
from sidecar.proxy.exchange import Forward
from sidecar.proxy.forward import forward, forwardable_headers
from sidecar.proxy.handler import ProxyHandler, RequestInfo
from sidecar.proxy.mcp_guard import McpGuard, Verdict
from sidecar.proxy.messages import PeerInfo, Request, Response, json_response
from sidecar.proxy.mux import MuxEndpoint, session_owner
from sidecar.proxy.upstream import UpstreamPool, encode_request, pool_for
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import NotReady
from sidecar.tokens.errors import TokenError
from sidecar.tokens.gate import TokenGate

XFCC = "X-Forwarded-Client-Cert"
UNFILTERABLE = "unfilterable_list_response"
LOCAL_IDLE_REUSE = 4.0  # seconds an idle connection to the local MCP server is reused
LOCAL_ROUTE = "local"  # the ``route`` label of the local MCP server in metrics


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
        tokens: TokenGate,
        guard: McpGuard,
        mux: MuxEndpoint | None = None,
    ) -> None:
        super().__init__(config.limits, config.allowed_origins, metrics, access_log)
        self.config = config
        self.our_id = our_id
        self.tokens = tokens
        self.guard = guard
        self.mux = mux
        """Edge-gateway mode (``inbound.targets``): the MCP servers this listener multiplexes."""
        # Idle connections to the local MCP server are dropped before common servers drop them
        # (uvicorn: 5 s), so a request rarely meets a connection the server is just closing.
        self.pool: UpstreamPool | None = None
        self.upstream_host = ""
        if config.upstream is not None:
            self.pool, self.upstream_host = pool_for(
                config.upstream,
                config.limits,
                keepalive_timeout=LOCAL_IDLE_REUSE,
                breakers=config.circuit_breakers,
                on_overflow=functools.partial(metrics.upstream_overflowed, "inbound", LOCAL_ROUTE),
            )
        self.drop_headers = ("x-forwarded-client-cert",) + (
            () if config.forward_authorization else ("authorization",)
        )
        if config.api_keys is not None:  # a credential for us, never for the server
            self.drop_headers += (config.api_keys.header.lower(),)

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.mux is not None:
            await self.mux.close()
        await self.tokens.close()

    def refusal(self, exc: SidecarError, info: RequestInfo) -> Response:
        response = super().refusal(exc, info)
        if isinstance(exc, TokenError):
            self.metrics.token_rejection(exc.layer, exc.reason)
            if exc.status in (401, 403):
                response.headers["WWW-Authenticate"] = self.tokens.challenge(exc)
        return response

    def _identities(
        self, request: Request, info: RequestInfo
    ) -> tuple[SpiffeId | None, SpiffeId | None]:
        """Our SPIFFE ID and the connection's verified peer (with ``mtls: required``)."""
        if self.config.mtls != "required":
            return None, None
        try:
            our_id = self.our_id()
        except NotReady:
            # Our SVID expired (Workload API outage) while this connection was open: it
            # was accepted with an identity we may no longer claim, so it serves nothing
            # more (503 svid_expired) and is closed; new handshakes are refused until a
            # valid SVID arrives.
            info.close_connection = True
            raise
        return our_id, self._verified_peer(request.conn, info)

    async def proxy(self, request: Request, info: RequestInfo) -> Response:
        conn = request.conn
        our_id, peer = self._identities(request, info)
        if request.path in self.tokens.metadata_paths and request.method in ("GET", "HEAD"):
            return json_response(self.tokens.metadata)
        principal = await self.tokens.authenticate(
            request.headers.getall("Authorization", []),
            peer,
            conn.peer_cert_sha256,
            header_values=lambda name: request.headers.getall(name, []),
        )
        info.principal = principal
        info.upstream = self.config.upstream
        body = await request.read_body()
        info.bytes_in = len(body)
        started = time.perf_counter()
        verdict = self.guard.inspect(request, principal, body)
        assert verdict is not None  # answers may be rewritten here
        if request.trace is not None:
            request.trace.mcp(body, verdict.audits)
        if verdict.refusal is not None:
            info.reason = "mcp_refused"
            self.guard.record(request, principal, verdict, verdict.refusal.status, started)
            return verdict.refusal
        info.tool = self._tool_label(verdict)
        if self.mux is not None:  # an edge gateway: the guard judged the multiplexed names
            response = await self.mux.handle(
                request,
                body,
                request.target,
                info,
                owner=session_owner(principal),
                rewrite=verdict.rewrite,
            )
            self.guard.record(request, principal, verdict, response.status, started)
            return response
        rewrite, observe = verdict.rewrite, verdict.observe
        headers = self._upstream_headers(
            request, our_id, peer, read=rewrite is not None or observe is not None
        )
        assert self.pool is not None  # an edge gateway (mux) was served above
        try:
            response = await forward(
                request,
                self.pool,
                request.target,
                headers,
                body,
                self.limits,
                rewrite=rewrite,
                observe=observe,
            )
        except SidecarError as exc:
            self.guard.record(request, principal, verdict, exc.status, started)
            raise
        self.guard.record(request, principal, verdict, response.status, started)
        if rewrite is not None:
            _log_rewrite_failure(response, rewrite, info)
        if observe is not None:
            _when_sent(
                response,
                lambda: self.guard.record_observed(request, principal, verdict, response.status),
            )
        return response

    def prepare_proxy(
        self, request: Request, info: RequestInfo, body: bytes
    ) -> Response | Forward | None:
        if self.mux is not None:  # an edge gateway: its own coroutines
            return None
        conn = request.conn
        our_id, peer = self._identities(request, info)
        if request.path in self.tokens.metadata_paths and request.method in ("GET", "HEAD"):
            return json_response(self.tokens.metadata)
        principal = self.tokens.authenticate_now(
            request.headers.getall("Authorization", []),
            peer,
            conn.peer_cert_sha256,
            header_values=lambda name: request.headers.getall(name, []),
        )
        if principal is None:  # the token layer must wait for something
            return None
        info.principal = principal
        info.upstream = self.config.upstream
        info.bytes_in = len(body)
        started = time.perf_counter()
        headers = self._upstream_headers(request, our_id, peer)
        pool = self.pool
        assert pool is not None  # no edge gateway
        data = encode_request(request.method, request.target, headers.items(), body)
        upstream = pool.take_now()  # before the guard counts anything (rate limits)
        if upstream is None:
            return None
        verdict = self.guard.inspect(request, principal, body, rewrite_ok=False)
        if verdict is None or verdict.refusal is not None:
            pool.give_back(upstream)
            if verdict is None:  # the answer must be read: ``proxy`` reads it
                return None
            assert verdict.refusal is not None
            info.reason = "mcp_refused"
            self.guard.record(request, principal, verdict, verdict.refusal.status, started)
            return verdict.refusal
        info.tool = self._tool_label(verdict)
        answered = None
        if verdict.audits:
            guard = self.guard

            def answered(status: int) -> None:
                guard.record(request, principal, verdict, status, started)

        return Forward(pool, upstream, data, answered)

    def _upstream_headers(
        self,
        request: Request,
        our_id: SpiffeId | None,
        peer: SpiffeId | None,
        *,
        read: bool = False,
    ) -> CIMultiDict[str]:
        """The request's headers as the local MCP server gets them; ``read``: the answer
        will be read (rewritten, or watched by a dry-run policy)."""
        headers = forwardable_headers(request.headers, drop=self.drop_headers)
        if self.guard.filters_lists and request.method == "GET":
            # A resumed stream would replay responses (e.g. a tools/list result) whose requests
            # we never saw, so they could not be filtered: under a policy, fail closed and let
            # the server start a fresh stream instead of replaying.
            headers.popall("Last-Event-ID", None)
        if read:
            # The local hop gains nothing from compression, so ask for none (a server that
            # compresses anyway is decoded).
            headers["Accept-Encoding"] = "identity"
        if peer is not None and our_id is not None:
            headers[XFCC] = xfcc_value(our_id, peer, request.conn.peer_cert_sha256)
        headers["Host"] = self.upstream_host
        headers["X-Forwarded-Proto"] = "https" if peer is not None else request.scheme
        return headers

    def _tool_label(self, verdict: Verdict) -> str | None:
        """The tool of a body that is one ``tools/call``, as ``mcp_requests_total`` labels it
        (a name the server listed, else ``other``); ``None`` for anything else."""
        if len(verdict.audits) != 1:
            return None
        message = verdict.audits[0][0]
        if message.method != "tools/call" or message.target is None:
            return None
        return message.target if message.target in self.guard.known_tools else "other"

    def _verified_peer(self, conn: PeerInfo, info: RequestInfo) -> SpiffeId:
        """The connection's SPIFFE peer, verified and allowlisted at the handshake."""
        if conn.rejection is not None:
            info.peer = str(conn.rejection.peer) if conn.rejection.peer else None
            info.close_connection = True
            raise Forbidden(conn.rejection.message, reason=conn.rejection.reason)
        if conn.peer is None:
            info.close_connection = True
            raise Forbidden("no verified SPIFFE identity on this connection", reason="no_peer")
        info.peer = str(conn.peer)
        return conn.peer


def _when_sent(response: Response, done: Callable[[], None]) -> None:
    """``done()`` now for a whole answer, or when a streamed one has been sent (before the
    access-log line, which ``release`` writes)."""
    if response.stream is None:
        done()
        return
    release = response.release

    def released() -> None:
        done()
        if release is not None:
            release()

    response.release = released


def _log_rewrite_failure(response: Response, rewrite: ListRewrite, info: RequestInfo) -> None:
    """Name a list answer (or part of one) replaced by the error in the access log: at once for
    a whole body, when the stream ends for SSE."""

    def note() -> None:
        if rewrite.failure is not None and info.reason is None:
            info.reason = UNFILTERABLE

    _when_sent(response, note)
