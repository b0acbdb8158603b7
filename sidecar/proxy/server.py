"""Listening sockets: aiohttp's HTTP/1.1 server with TLS done by us, once per connection.

We accept plain TCP and put the TLS layer on ourselves instead of handing asyncio an SSL
context, because that is the only way to *see* handshake failures (asyncio swallows them) and to
SPIFFE-verify the peer exactly once per connection, before the first request is parsed. The
verdict is kept on the connection's protocol object: the HTTP handler only reads it.

Also adds what aiohttp lacks: a request-head timeout. A client must deliver a complete request
head within ``header_timeout`` of connecting (or of its first byte after a finished request);
otherwise the connection is closed — slowloris protection. Idle keep-alive connections are
bounded by ``keepalive_timeout``.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

# OpenSSL verify codes -> stable metric reasons.
_VERIFY_REASONS = {
    9: "certificate_not_yet_valid",
    10: "certificate_expired",
    18: "self_signed_certificate",
    19: "self_signed_certificate_in_chain",
    20: "unknown_ca",
    21: "unknown_ca",
    26: "unsupported_certificate_purpose",
}


def handshake_failure_reason(exc: BaseException) -> str:
    """A short label for why a TLS handshake failed (metric label, log field)."""
    if isinstance(exc, TimeoutError):
        return "handshake_timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "certificate_verify_failed")
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower()
    if isinstance(exc, ConnectionError | ssl.SSLEOFError):
        return "connection_closed"
    return type(exc).__name__.lower()


@dataclass
class TlsPolicy:
    """How a listener speaks TLS and judges peers (``verify`` raises ``PeerRejected``)."""

    context: Callable[[], ssl.SSLContext]
    verify: Callable[[Any], SpiffeId]
    handshake_timeout: float = 10.0
    on_failure: Callable[[str], None] = field(default=lambda reason: None)
    on_rejected: Callable[[PeerRejected], None] = field(default=lambda exc: None)


def _ssl_protocol_class(loop: asyncio.AbstractEventLoop) -> Any:
    """uvloop's (Cython) SSL protocol on a uvloop loop, asyncio's otherwise: same constructor."""
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        return getattr(uvloop.loop, "SSLProtocol")  # noqa: B009 - absent from uvloop's stubs
    return asyncio.sslproto.SSLProtocol


class ConnectionHandler(RequestHandler):
    """aiohttp's request handler + TLS done by us, a per-connection peer verdict, head timeout."""

    def __init__(
        self,
        manager: ListenerServer,
        *,
        tls: TlsPolicy | None,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._tls = tls
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._body: Any = None
        self._http_started = False
        self._early: list[bytes] = []
        self._early_eof = False
        self._handshake_task: asyncio.Task[None] | None = None
        #: The verified peer of this connection (TLS listeners), or why it was refused.
        self.peer: SpiffeId | None = None
        self.rejection: PeerRejected | None = None
        self.peer_cert_sha256: str | None = None

    # -- connection lifecycle --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._tls is None:
            self._start_http(transport)
            return
        # Put the TLS layer in place *synchronously*, as ``loop.start_tls`` would, but without
        # its window between accept and the coroutine's first step: uvloop starts reading right
        # after ``connection_made`` returns (ignoring a pause), and a ClientHello arriving in
        # that window would otherwise be taken for decrypted data and the handshake would stall.
        tls = self._tls
        waiter: asyncio.Future[None] = self._loop.create_future()
        ssl_protocol = _ssl_protocol_class(self._loop)(
            self._loop,
            self,
            tls.context(),
            waiter,
            server_side=True,
            server_hostname=None,
            call_connection_made=False,
            ssl_handshake_timeout=tls.handshake_timeout,
        )
        transport.set_protocol(ssl_protocol)
        ssl_protocol.connection_made(transport)
        self._handshake_task = self._loop.create_task(
            self._handshake(transport, ssl_protocol, waiter)
        )

    async def _handshake(self, raw: Any, ssl_protocol: Any, waiter: asyncio.Future[None]) -> None:
        assert self._tls is not None
        tls = self._tls
        try:
            await asyncio.wait_for(waiter, tls.handshake_timeout + 1.0)
        except asyncio.CancelledError:
            raw.abort()
            raise
        except Exception as exc:
            reason = handshake_failure_reason(exc)
            log.info("TLS handshake failed: %s (%s)", reason, exc)
            tls.on_failure(reason)
            raw.abort()
            return
        transport = ssl_protocol._get_app_transport()
        ssl_object = transport.get_extra_info("ssl_object")
        leaf = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.peer_cert_sha256 = hashlib.sha256(leaf).hexdigest() if leaf else None
        try:
            self.peer = tls.verify(ssl_object)
        except PeerRejected as exc:
            self.rejection = exc
            tls.on_rejected(exc)
        self._start_http(transport)

    def _start_http(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._http_started = True
        self._arm_head_timer()
        early, self._early = self._early, []
        for chunk in early:
            self.data_received(chunk)
        if self._early_eof:
            self.eof_received()

    def data_received(self, data: bytes) -> None:
        if not self._http_started:  # decrypted bytes that beat our handshake coroutine
            self._early.append(data)
            return
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a request head completed
            self._cancel_head_timer()
            self._body = self._messages[-1][1] if self._messages else None
        elif data and (self._body is None or self._body.is_eof()):
            self._arm_head_timer()  # bytes of a new head are trickling in

    def eof_received(self) -> None:
        if not self._http_started:
            self._early_eof = True
            return
        super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        # A connection lost during the handshake resolves the waiter; ``_handshake`` records it.
        self._cancel_head_timer()
        if self._http_started:
            super().connection_lost(exc)

    # -- protocol errors -------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed requests (smuggling shapes, oversized heads) and unexpected handler errors
        get a JSON body like every other refusal, and the connection is closed."""
        if isinstance(exc, LineTooLong):
            status, reason = 431, "header_too_large"
        elif status == 400:
            reason = "malformed_request"
        else:
            reason = "internal_error"
        if status >= 500:
            log.error("error handling request", exc_info=exc)
        else:
            log.info("refused malformed request: %s", exc)
        detail = str(getattr(exc, "message", "") or message or "").splitlines()
        body = {"error": reason, "message": detail[0] if detail else reason, "status": status}
        response = web.json_response(body, status=status)
        response.force_close()
        return response

    # -- request head timeout -------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self._header_timeout > 0:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        log.info("closing connection: request head not complete within %ss", self._header_timeout)
        self.force_close()


class ListenerServer(web.Server):
    """``web.Server`` that builds ``ConnectionHandler``s; handlers are cancelled when the client
    disconnects, which cancels the upstream request in turn."""

    def __init__(
        self,
        handler: Handler,
        *,
        tls: TlsPolicy | None,
        header_timeout: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, handler_cancellation=True, **kwargs)
        self._tls = tls
        self._header_timeout = header_timeout

    def __call__(self) -> ConnectionHandler:
        return ConnectionHandler(
            self,
            tls=self._tls,
            header_timeout=self._header_timeout,
            loop=self._loop,
            **self._kwargs,
        )


@dataclass
class Listener:
    """A bound listening socket serving one handler; ``close`` drains in-flight requests."""

    name: str
    server: ListenerServer
    sockets: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.sockets.sockets[0].getsockname()[1])

    async def close(self, drain_timeout: float) -> None:
        """Stop accepting; let in-flight requests finish for up to ``drain_timeout`` (idle
        keep-alive connections close at once, busy ones after their response); then cancel."""
        self.sockets.close()
        await self.server.shutdown(drain_timeout)


async def start_listener(
    name: str,
    handler: Handler,
    host: str,
    port: int,
    *,
    tls: TlsPolicy | None,
    header_timeout: float,
    keepalive_timeout: float,
    max_header_size: int,
) -> Listener:
    server = ListenerServer(
        handler,
        tls=tls,
        header_timeout=header_timeout,
        keepalive_timeout=keepalive_timeout,
        max_line_size=max_header_size,
        max_field_size=max_header_size,
        access_log=None,
    )
    loop = asyncio.get_running_loop()
    sockets = await loop.create_server(server, host, port, reuse_address=True, backlog=1024)
    log.info("%s listening on %s:%s", name, host, sockets.sockets[0].getsockname()[1])
    return Listener(name, server, sockets)
