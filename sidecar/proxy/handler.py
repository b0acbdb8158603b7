"""What every proxied request goes through, in either direction: the method, body and path
checks and the Origin check (framing was refused by the parser already), one JSON error body per
refusal, one access-log line and one metrics observation per request.

Methods are those of MCP's Streamable HTTP transport (POST, GET, DELETE) plus HEAD (RFC 9110
§9.1), and OPTIONS only where ``allowed_origins`` admits browser clients (CORS preflight); they
are case-sensitive. Only POST may carry a body: POST bodies are the JSON-RPC messages the MCP
guard inspects, so no other method can carry one past it. CONNECT is refused and the connection
closed: a tunnel could not be inspected. The path is normalised (``http1.target``) before any
decision, and only the normalised path is routed and forwarded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.config import Limits
from sidecar.errors import SidecarError
from sidecar.http1.errors import HttpParseError
from sidecar.http1.target import normalize_path
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger, AccessRecord, mcp_session_id
from sidecar.proxy.errors import BadRequest, MethodNotAllowed, ProxyError, UpstreamOverflow
from sidecar.proxy.exchange import Exchange, Forward
from sidecar.proxy.forward import check_origin, error_response, head_timeout, respond
from sidecar.proxy.messages import Request, Response
from sidecar.proxy.upstream import UpstreamResponse
from sidecar.tokens.claims import Principal
from sidecar.tracing.correlation import activate, begin_request, correlate, deactivate

if TYPE_CHECKING:
    from sidecar.tracing.sdk import Tracing

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the response
MCP_METHODS = ("POST", "GET", "DELETE", "HEAD")  # + OPTIONS with allowed_origins


@dataclass(slots=True)
class RequestInfo:
    """Facts gathered while handling one request, for the log line and metrics."""

    peer: str | None = None
    route: str | None = None
    upstream: str | None = None
    reason: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    close_connection: bool = False
    principal: Principal | None = None
    """Rendered for the log only when a line is written (``Principal.to_log``)."""
    tool: str | None = None
    """The metric label of a forwarded ``tools/call`` (inbound with a policy or rate limits)."""


class ProxyHandler:
    """Subclasses implement ``proxy``; this class does the bookkeeping around it."""

    direction = "inbound"
    tracing: Tracing | None = None
    """Set by the runtime when tracing is on; with it off, a request costs this one check."""

    def __init__(
        self,
        limits: Limits,
        allowed_origins: tuple[str, ...],
        metrics: Metrics,
        access_log: AccessLogger,
    ) -> None:
        self.limits = limits
        self.allowed_origins = allowed_origins
        self.metrics = metrics
        self.access_log = access_log
        methods = MCP_METHODS + (("OPTIONS",) if allowed_origins else ())
        self.methods = frozenset(methods)
        self._allow = ", ".join(methods)

    async def proxy(self, request: Request, info: RequestInfo) -> Response:
        raise NotImplementedError

    def prepare_proxy(
        self, request: Request, info: RequestInfo, body: bytes
    ) -> Response | Forward | None:
        """``proxy`` on the callback path, for a request whose ``body`` has arrived: the same
        checks in the same order, without awaiting; an answer, the request to forward on a
        connection taken from the pool, or None (``proxy`` must serve it) before anything was
        done that ``proxy`` would not do again the same way."""
        return None

    def refusal(self, exc: SidecarError, info: RequestInfo) -> Response:
        """The JSON answer for a refusal; subclasses add headers (e.g. WWW-Authenticate)."""
        response = error_response(exc, close=info.close_connection)
        if isinstance(exc, MethodNotAllowed):
            response.headers["Allow"] = exc.allow
        elif isinstance(exc, UpstreamOverflow):  # as Envoy: a retry would only add to the load
            response.headers["X-Envoy-Overloaded"] = "true"
        return response

    def admit(self, request: Request, info: RequestInfo) -> None:
        """Method, body and path checks; the path is replaced by its normalised form."""
        method = request.method
        if method not in self.methods:
            if method == "CONNECT":
                info.close_connection = True  # tunnel bytes may follow: none is read as HTTP
                raise MethodNotAllowed(
                    "CONNECT is not supported: the sidecar must see every request and opens no "
                    "tunnels; send plain http:// requests (the outbound upgrades them to mTLS)",
                    allow=self._allow,
                )
            raise MethodNotAllowed(
                f"method {method[:32]!r} is not allowed (methods are case-sensitive); "
                f"allowed: {self._allow}",
                allow=self._allow,
            )
        if method != "POST":
            headers = request.headers
            if "Transfer-Encoding" in headers or headers.get("Content-Length", "0") != "0":
                raise BadRequest(
                    f"a {method} request must not carry a body (only POST bodies, the MCP "
                    "messages, are accepted)",
                    reason="body_not_allowed",
                )
        path = request.path
        try:
            normal = normalize_path(path)
        except HttpParseError as exc:
            raise BadRequest(exc.message, reason=exc.reason) from None
        if normal is not path:
            request.path = normal

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        begin_request(request.headers)
        info = RequestInfo()
        if self.tracing is not None:
            self.tracing.start(request, self.direction)
        return await self._serve(request, info, started, self._admitted(request, info))

    async def _admitted(self, request: Request, info: RequestInfo) -> Response:
        self.admit(request, info)
        check_origin(request.headers, self.allowed_origins)
        return await self.proxy(request, info)

    async def _serve(
        self,
        request: Request,
        info: RequestInfo,
        started: float,
        work: Coroutine[Any, Any, Response],
    ) -> Response:
        """The answer ``work`` makes for ``request``, or its refusal; logged and counted (a
        streamed answer once the engine is done with it)."""
        status = CLIENT_CLOSED
        streaming = False
        try:
            try:
                response = await work
            except SidecarError as exc:
                response = self.refused(exc, request, info)
            status = response.status
            streaming = self._answered(response, request, info, started)
            return response
        except asyncio.CancelledError:
            info.reason = "client_closed"
            raise
        finally:
            if not streaming:
                self.record(request, info, status, started)

    def prepare(self, request: Request, body: bytes) -> Response | Exchange | None:
        """``__call__`` on the callback path (``proxy.exchange``), for a request whose ``body``
        has arrived: a complete answer (already logged and counted), an exchange to start, or
        None: then ``__call__`` must serve it, and nothing was done here that it would not do
        again the same way (the request id settled here is kept by it)."""
        if self.tracing is not None:
            return None
        started = time.perf_counter()
        correlation = correlate(request.headers)
        token = activate(correlation)
        info = RequestInfo()
        status = CLIENT_CLOSED
        record = True
        try:
            try:
                self.admit(request, info)
                check_origin(request.headers, self.allowed_origins)
                outcome = self.prepare_proxy(request, info, body)
                if outcome is None or type(outcome) is Forward:
                    record = False
                    if outcome is None:
                        return None
                    timeout = head_timeout(self.limits)
                    return Exchange(self, request, info, started, correlation, outcome, timeout)
                assert isinstance(outcome, Response) and outcome.stream is None
                response = outcome
            except SidecarError as exc:
                response = self.refused(exc, request, info)
            status = response.status
            info.bytes_out = len(response.body)
            return response
        finally:
            if record:
                self.record(request, info, status, started)
            deactivate(token)

    async def resume(self, exchange: Exchange, upstream: UpstreamResponse) -> Response:
        """The rest of an exchange begun on callbacks whose answer the coroutine path must
        take (``proxy.exchange``): from the head on, as ``__call__`` and ``forward`` go on."""
        work = self._rest(upstream, exchange.plan.answered)
        return await self._serve(exchange.request, exchange.info, exchange.started, work)

    async def _rest(
        self, upstream: UpstreamResponse, answered: Callable[[int], None] | None
    ) -> Response:
        try:
            response = await respond(upstream, self.limits)
        except SidecarError as exc:
            if answered is not None:
                answered(exc.status)
            raise
        if answered is not None:
            answered(response.status)
        return response

    def refused(self, exc: SidecarError, request: Request, info: RequestInfo) -> Response:
        """The answer to a refusal, counted (the access line is written by ``record``)."""
        info.reason = exc.reason
        if request.trace is not None:
            request.trace.refused(exc)
        if isinstance(exc, ProxyError) and exc.status in (502, 504):
            self.metrics.upstream_error(self.direction, exc.reason)
        return self.refusal(exc, info)

    def _answered(
        self, response: Response, request: Request, info: RequestInfo, started: float
    ) -> bool:
        """Note the answer's size; a streamed one (True) is logged when the engine is done
        with it (``release``), with what was really sent."""
        if response.stream is not None:
            response.release = self._on_release(response, request, info, started)
            return True
        info.bytes_out = len(response.body)
        return False

    def _on_release(
        self, response: Response, request: Request, info: RequestInfo, started: float
    ) -> Callable[[], None]:
        release = response.release

        def done() -> None:
            if release is not None:
                release()
            info.bytes_out = response.sent
            failed = response.failed
            if failed is not None and info.reason is None:
                info.reason = getattr(failed, "reason", None) or (
                    "client_closed"
                    if isinstance(failed, asyncio.CancelledError | ConnectionError)
                    else "upstream_reset"
                )
            self.record(request, info, response.status, started)

        return done

    def record_cancelled(self, request: Request, info: RequestInfo, started: float) -> None:
        """The client went away before its answer (as ``__call__`` records a cancellation)."""
        info.reason = "client_closed"
        self.record(request, info, CLIENT_CLOSED, started)

    def record(self, request: Request, info: RequestInfo, status: int, started: float) -> None:
        """The request's metrics and access line."""
        elapsed = time.perf_counter() - started
        self.metrics.observe_request(
            self.direction, info.peer, status, elapsed, info.bytes_in, info.bytes_out
        )
        if info.tool is not None:
            self.metrics.observe_tool_call(info.tool, elapsed)
        if request.trace is not None:
            request.trace.finish(status, info)
        if not self.access_log.enabled:
            return
        self.access_log.log(
            AccessRecord(
                direction=self.direction,
                peer=info.peer,
                method=request.method,
                path=request.raw_path,
                status=status,
                bytes_in=info.bytes_in,
                bytes_out=info.bytes_out,
                duration_ms=elapsed * 1000,
                mcp_session_id=mcp_session_id(request.headers),
                route=info.route,
                reason=info.reason,
                upstream=info.upstream,
                principal=info.principal.to_log() if info.principal is not None else None,
            )
        )
