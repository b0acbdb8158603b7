"""Our HTTP/1.1 server engine: one ``HttpConnection`` protocol per accepted connection.

Raw asyncio protocol instead of a web framework: the data path is parse head -> handler ->
one write, with no per-request framework objects, which is most of what makes a Python proxy
fast. TLS is put on by us, synchronously at accept, so that handshake failures are seen (and
counted by reason) and the peer is SPIFFE-verified exactly once per connection, before the first
request is parsed; the verdict stays on the connection for the handler to read.

Requests on a connection are handled one at a time, in order (pipelined requests wait in the
buffer). Deadlines, checked by one sweeper per listener rather than a timer per request: a
request head must be complete within ``header_timeout`` of connecting or of its first byte, a
request body may not go quiet for longer than that, and an idle keep-alive connection is closed
after ``keepalive_timeout``. Malformed requests get a JSON 400/431/501/505 and the connection is
closed; so does a request whose body was not completely read when its answer went out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDict

from sidecar.compat import server_tls_protocol, tls_app_transport
from sidecar.config import Limits
from sidecar.http1.chunked import ChunkedDecoder
from sidecar.http1.errors import HttpParseError
from sidecar.http1.parse import (
    HEAD_END,
    Framing,
    RequestHead,
    parse_request_head,
    serialize_headers,
)
from sidecar.proxy.errors import BadRequest, PayloadTooLarge
from sidecar.proxy.flow import WriteFlow
from sidecar.proxy.messages import Request, Response, json_error
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.alerts import AlertingSSLObject, arm, disarm
from sidecar.tls.contexts import NotReady, PeerRejected

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class Pending(Protocol):
    """A request forwarded on callbacks (``proxy.exchange.Exchange``)."""

    def start(self, client: HttpConnection) -> Response | None:
        """Send it upstream; the answer comes back through ``client.respond`` or
        ``client.resume``. A complete answer if it failed at once."""

    def cancel(self) -> None:
        """The client went away."""


Prepare = Callable[[Request, bytes], "Response | Pending | None"]
"""A handler's callback path (``ProxyHandler.prepare``)."""

MAX_HEAD_LINES = 100
PIPELINE_LIMIT = 256 * 1024  # buffered bytes of requests waiting behind the current one
FAST_REQUEST = 48 * 1024  # a request (head and body) this small may be served on callbacks
LINGER = 2.0  # seconds to keep reading (and dropping) a refused body before closing
CLOCK_SLACK = 0.005  # uvloop's clock counts whole milliseconds: its timers fire "early" by that

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
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
# A CR not followed by LF, or an LF not preceded by CR: a head with one can never end in CRLFCRLF
# (``GET / HTTP/1.1\nHost: x\n\n``), so it is refused at once instead of at ``header_timeout``.
_find_bare_cr_or_lf = re.compile(b"\r[^\n]|(?<!\r)\n").search


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


class HttpConnection(WriteFlow, asyncio.Protocol):
    """One client connection: TLS (optional), head parsing, body collection, handler, answer."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._settings = server.settings
        self._tls = server.tls
        self.scheme = "https" if server.tls is not None else "http"
        self.transport: asyncio.Transport | None = None
        self._raw: asyncio.BaseTransport | None = None
        self._started = False
        self._early: list[bytes] = []
        self._early_eof = False
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._exchange: Pending | None = None  # a request forwarded on callbacks
        self._closing = False
        self._lost = False
        self._dropped = False  # we closed it before its TLS handshake completed (drain)
        self._alerting: AlertingSSLObject | None = None
        self._paused = False
        #: the monotonic time after which the sweeper closes this connection (0: no deadline)
        self.deadline = 0.0
        # the body of the request being handled
        self._head: RequestHead | None = None
        self._body = bytearray()
        self._body_remaining = 0
        self._chunked: ChunkedDecoder | None = None
        self._body_done = True
        self._body_error: BaseException | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._expect_continue = False
        self._head_started = False
        self._head_scanned = 0  # bytes of an incomplete head already searched (but the last)
        self._lingering = False
        #: The verified peer of this connection (TLS listeners), or why it was refused.
        self.peer: SpiffeId | None = None
        self.rejection: PeerRejected | None = None
        self.peer_cert_sha256: str | None = None

    # -- connection lifecycle --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = transport
        self._server.connections.add(self)
        if self._tls is None:
            self._start_http(transport)  # type: ignore[arg-type]  # uvloop's: not a subclass
            return
        # Put the TLS layer in place *synchronously*, as ``loop.start_tls`` would, but without
        # its window between accept and the coroutine's first step: uvloop starts reading right
        # after ``connection_made`` returns, and a ClientHello arriving in that window would
        # otherwise be taken for decrypted data and the handshake would stall.
        tls = self._tls
        started = self._loop.time()  # when the SSL protocol's own handshake timer starts
        try:
            context = tls.context()
        except NotReady as exc:  # our own SVID expired (or none yet): present nothing
            log.info("refusing a TLS connection: %s", exc.message)
            tls.on_failure(exc.reason)
            transport.abort()  # type: ignore[attr-defined]  # then connection_lost untracks
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        ssl_protocol = server_tls_protocol(
            self._loop, self, context, waiter, handshake_timeout=tls.handshake_timeout
        )
        transport.set_protocol(ssl_protocol)
        ssl_protocol.connection_made(transport)
        # a refused client gets OpenSSL's alert, which the SSL protocol would drop
        self._alerting = arm(context, transport.write)  # type: ignore[attr-defined]
        self._task = self._loop.create_task(
            self._handshake(transport, ssl_protocol, waiter, started)
        )

    async def _handshake(
        self, raw: Any, ssl_protocol: Any, waiter: asyncio.Future[None], started: float
    ) -> None:
        """Wait for the TLS handshake, judge the peer, start HTTP; or end the connection.

        A connection that dies mid-handshake (reset, timeout, refusal) is never announced to us
        by the SSL protocol — neither asyncio's nor uvloop's calls ``connection_lost`` of its
        application protocol before the handshake completed — so every way out of here that
        does not start HTTP goes through ``connection_lost`` itself (see ``_end``)."""
        assert self._tls is not None
        tls = self._tls
        try:
            try:
                await asyncio.wait_for(waiter, tls.handshake_timeout + 1.0)
            finally:
                self._task = None
                disarm(self._alerting)  # the handshake is over: no transport kept by it
                self._alerting = None
            if raw.is_closing():
                # the waiter also resolves without an error when the connection is closed
                # mid-handshake (``connection_lost(None)``): that is no handshake
                raise ConnectionResetError("connection closed during the TLS handshake")
            transport = tls_app_transport(ssl_protocol)
            ssl_object = transport.get_extra_info("ssl_object")
            assert ssl_object is not None  # the handshake completed on an open connection
        except asyncio.CancelledError:
            self._end(raw, None)
            raise
        except Exception as exc:
            reason = handshake_failure_reason(exc)
            if (
                isinstance(exc, ConnectionAbortedError)
                and self._loop.time() - started >= tls.handshake_timeout - CLOCK_SLACK
            ):  # the SSL protocol's own handshake timer fired (it aborts with this error)
                reason = "handshake_timeout"
            if not self._dropped:  # not our own doing (a drain closing pending handshakes)
                log.info("TLS handshake failed: %s (%s)", reason, exc)
                tls.on_failure(reason)
            exc.__traceback__ = None  # no frame (and with it this connection) kept alive by it
            self._end(raw, None)
            return
        leaf = ssl_object.getpeercert(binary_form=True)
        self.peer_cert_sha256 = hashlib.sha256(leaf).hexdigest() if leaf else None
        try:
            self.peer = tls.verify(ssl_object)
        except PeerRejected as exc:
            self.rejection = exc
            tls.on_rejected(exc)
        except NotReady as exc:  # our SVID expired during the handshake: serve nothing
            log.info("closing a TLS connection: %s", exc.message)
            tls.on_failure(exc.reason)
            self._end(raw, None)
            return
        except Exception:  # a verifier bug: fail closed, never serve an unjudged peer
            log.exception("peer verification failed unexpectedly; closing the connection")
            tls.on_failure("verify_error")
            self._end(raw, None)
            return
        self._start_http(transport)

    def _end(self, raw: asyncio.BaseTransport, exc: BaseException | None) -> None:
        """A connection that never got to HTTP: close it and forget it, now."""
        self._closing = True
        raw.abort()  # type: ignore[attr-defined]  # every stream transport has it
        self.connection_lost(exc)

    def _start_http(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._started = True
        self.deadline = self._loop.time() + self._settings.header_timeout
        self._head_started = True
        if self._closing:
            transport.close()
            return
        early, self._early = self._early, []
        for chunk in early:
            self.data_received(chunk)
        if self._early_eof:
            self.eof_received()

    def data_received(self, data: bytes) -> None:
        if not self._started:  # decrypted bytes that beat our handshake coroutine
            self._early.append(data)
            return
        if not self._body_done:
            self._feed_body(data)
            return
        if self._head is None and not self._buf:
            self._next_request(data)  # the common case: a whole head in one read, no copying
            return
        self._buf += data
        if self._head is None:
            self._next_request()
        elif len(self._buf) > PIPELINE_LIMIT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if not self._started:
            self._early_eof = True
            return None
        if not self._body_done:
            self._body_failed(ConnectionResetError("client closed the connection mid-body"))
        if self._head is None and self.transport is not None:
            self.transport.close()
        else:
            # Returning None closes the transport: a half-closed client is taken for gone, so
            # the request in flight is cancelled (as aiohttp does; HTTP clients don't half-close)
            self._closing = True
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """The one place a connection ends: untracked and its state released, exactly once,
        whether the transport reports it or the handshake found it dead (``_end``)."""
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._server.connections.discard(self)
        self._server.ended += 1
        self._early.clear()
        if not self._body_done:
            self._body_failed(ConnectionResetError("client went away"))
        self.drain_lost("client went away")
        if self._task is not None and self._started:
            self._task.cancel()  # the client is gone: so is the upstream exchange
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            exchange.cancel()

    # -- requests --------------------------------------------------------------------------

    def _next_request(self, data: bytes | None = None) -> None:
        """Start the next request if its head is complete: from ``data`` (fresh bytes, nothing
        buffered) or else from the buffer; and the one after it, as long as each is answered
        at once (a loop, not a recursion, whatever the client pipelined)."""
        while self._start_request(data):
            data = None

    def _start_request(self, data: bytes | None) -> bool:
        """Start one request; True if it was answered at once and the next may start."""
        buf = self._buf
        if data is not None:
            end = data.find(HEAD_END)
            if end < 0:
                buf += data
        else:  # what was searched before is searched again only where a HEAD_END could start
            end = buf.find(HEAD_END, max(0, self._head_scanned - 2))
        if end < 0:
            if not buf:  # idle between requests
                if self.deadline == 0.0:
                    self.deadline = self._loop.time() + self._settings.keepalive_timeout
                return False
            if not self._head_started:  # first bytes of a new head: the head clock starts
                self._head_started = True
                self.deadline = self._loop.time() + self._settings.header_timeout
            if _find_bare_cr_or_lf(buf, self._head_scanned):
                self._refuse(400, "malformed_request", "bare CR or LF (lines must end with CRLF)")
                return False
            self._head_scanned = len(buf) - 1  # a final CR is judged with the byte after it
            limit = self._settings.max_header_size
            if len(buf) > limit * 4 or (buf.find(b"\r\n") < 0 and len(buf) > limit):
                self._refuse(431, "header_too_large", "request head too large")
            return False
        self._head_scanned = 0
        if data is None:
            data = bytes(buf)
            buf.clear()
        try:
            head = parse_request_head(
                data[:end],
                max_field_size=self._settings.max_header_size,
                max_headers=MAX_HEAD_LINES,
            )
        except HttpParseError as exc:
            log.info("refused malformed request: %s", exc.message)
            self._refuse(exc.status, exc.reason, exc.message)
            return False
        self.deadline = 0.0
        self._head = head
        self._head_started = False
        self._expect_continue = head.expect_continue and head.version == 1  # never to 1.0
        self._body.clear()
        self._body_error = None
        prepare = self._server.prepare if self._server.fast_path else None
        if prepare is not None and head.framing is not Framing.CHUNKED:
            start = end + 4
            stop = start + head.length
            if (
                len(data) >= stop
                and stop <= FAST_REQUEST
                and head.length <= self._settings.max_request_body
                and not self._closing
            ):
                # the whole request is here: it may be served on callbacks
                if len(data) > stop:
                    buf += data[stop:]  # a pipelined request: it waits for this one's answer
                body = data[start:stop] if stop > start else b""
                return self._prepared(prepare, head, body)
        rest = data[end + 4 :]
        if head.framing is Framing.LENGTH and head.length > 0:
            self._body_done = False
            self._body_remaining = head.length
            if head.length > self._settings.max_request_body:
                self._body_error = PayloadTooLarge(
                    f"request body of {head.length} bytes exceeds the limit of "
                    f"{self._settings.max_request_body}"
                )
        elif head.framing is Framing.CHUNKED:
            self._body_done = False
            self._chunked = ChunkedDecoder()
        else:
            self._body_done = True
        self._task = self._loop.create_task(self._handle(head, self._request(head)))
        if rest:
            if self._body_done:
                buf += rest  # a pipelined request: it waits for this one's answer
            else:
                self._feed_body(rest)
        if not self._body_done and self.deadline == 0.0 and not self._expect_continue:
            # the body's first bytes are due (after a 100 Continue: from when it is sent)
            self.deadline = self._loop.time() + self._settings.header_timeout
        return False

    def _request(self, head: RequestHead) -> Request:
        return Request(
            head.method,
            head.target,
            head.version,
            head.headers,
            self.scheme,
            self,
            self._read_body,
            head.scheme,
        )

    def _prepared(self, prepare: Prepare, head: RequestHead, body: bytes) -> bool:
        """A request whose body has arrived with its head, served on callbacks if the handler
        can (``ProxyHandler.prepare``): answered at once (True: the next may start), forwarded
        (the answer comes back on callbacks: ``respond`` or ``resume``), or handed to the
        coroutine path exactly as if this had not been tried."""
        self._body_done = True
        self._body_remaining = 0
        request = self._request(head)
        outcome: Response | Pending | None
        try:
            outcome = prepare(request, body)
        except HttpParseError as exc:
            outcome = json_error(exc.status, exc.reason, exc.message, close=True)
        except Exception as exc:  # a bug must not leave the client hanging
            log.error("error handling request", exc_info=exc)
            outcome = json_error(500, "internal_error", "internal error", close=True)
        if outcome is None:
            self._body += body
            self._task = self._loop.create_task(self._handle(head, request))
            return False
        self._server.on_callbacks += 1
        if not isinstance(outcome, Response):
            self._exchange = outcome
            failed = outcome.start(self)
            if failed is None:
                return False
            self._exchange = None
            outcome = failed
        return self._respond_now(head, outcome)

    def _feed_body(self, data: bytes) -> None:
        if self._body_error is not None:  # refused already: discard what is still coming
            self._discard(data)
            return
        settings = self._settings
        if self._chunked is not None:
            try:
                pieces, used = self._chunked.feed(data)
            except HttpParseError as exc:
                self._body_failed(exc)
                return
            for piece in pieces:
                self._body += piece
            if len(self._body) > settings.max_request_body:
                self._body_failed(
                    PayloadTooLarge(
                        f"request body exceeds the limit of {settings.max_request_body} bytes"
                    )
                )
                return
            if self._chunked.done:
                self._chunked = None
                self._body_complete(data[used:])
            else:
                self.deadline = self._loop.time() + settings.header_timeout
            return
        remaining = self._body_remaining
        if len(data) >= remaining:
            self._body += data[:remaining]
            self._body_remaining = 0
            self._body_complete(data[remaining:])
        else:
            self._body += data
            self._body_remaining = remaining - len(data)
            self.deadline = self._loop.time() + settings.header_timeout

    def _discard(self, data: bytes) -> None:
        """Drop the rest of a refused body; once a lingering connection has seen all of it (or
        the linger deadline passes, see ``expire``), it is closed."""
        if self._chunked is None:
            self._body_remaining = max(0, self._body_remaining - len(data))
            if self._body_remaining == 0 and self._lingering and self.transport is not None:
                self.transport.close()

    def _body_complete(self, rest: bytes) -> None:
        self._body_done = True
        self.deadline = 0.0
        if rest:
            self._buf += rest
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _body_failed(self, exc: BaseException) -> None:
        self._body_error = exc
        self._closing = True
        self.deadline = 0.0
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def _read_body(self) -> bytes:
        if self._expect_continue and not self._body_done:
            self._expect_continue = False
            if self._body_error is None and self.transport is not None:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if self.deadline == 0.0:
                    self.deadline = self._loop.time() + self._settings.header_timeout
        while True:
            if isinstance(self._body_error, HttpParseError):
                error = self._body_error
                raise BadRequest(error.message, reason=error.reason)
            if self._body_error is not None:
                raise self._body_error
            if self._body_done:
                return bytes(self._body)
            self._body_waiter = self._loop.create_future()
            try:
                await self._body_waiter
            finally:
                self._body_waiter = None

    async def _handle(
        self, head: RequestHead, request: Request | Coroutine[Any, Any, Response]
    ) -> None:
        """Serve ``request`` with the handler, or answer with what ``request`` (the rest of an
        exchange begun on callbacks) produces."""
        try:
            try:
                if isinstance(request, Request):
                    response = await self._server.handler(request)
                else:
                    response = await request
            except HttpParseError as exc:
                response = json_error(exc.status, exc.reason, exc.message, close=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not leave the client hanging
                log.error("error handling request", exc_info=exc)
                response = json_error(500, "internal_error", "internal error", close=True)
            if response.stream is None and response.release is None:
                self._write_whole(head, response)  # the common case: one write, no await
            else:
                await self._send(head, response)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # the answer broke off midway: a truncated body must not
            # look complete, so the connection is aborted rather than closed
            if self._lost:
                log.debug("client went away mid-response (%s)", exc)
            else:
                log.info("answer failed mid-response (%r): aborting the client connection", exc)
            self._abort()
            return
        finally:
            self._task = None
        if self._finished(head, response):
            self._next_request()

    def _finished(self, head: RequestHead, response: Response) -> bool:
        """After an answer: keep the connection for the next request (True: the caller starts
        it), or close it."""
        keep = not self._must_close(head, response)
        self._head = None
        self._body.clear()
        transport = self.transport
        if transport is None or self._lost:
            return False
        if not keep:
            if self._body_done or (self._body_remaining == 0 and self._chunked is None):
                transport.close()
            else:
                # Lingering close: the client may still be sending the body we refused; closing
                # now would reset the connection and could destroy our answer in its buffers.
                self._lingering = True
                self._body_error = self._body_error or ConnectionResetError("answered early")
                self.deadline = self._loop.time() + LINGER
            return False
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self.deadline = 0.0
        return True

    # -- answers on callbacks (``proxy.exchange``) ---------------------------------------------

    def _respond_now(self, head: RequestHead, response: Response) -> bool:
        """A complete answer, written at once (as ``_handle`` writes one); True if the next
        request may start."""
        try:
            self._write_whole(head, response)
        except Exception as exc:
            if self._lost:
                log.debug("client went away before its answer (%s)", exc)
            else:
                log.info("answer failed (%r): aborting the client connection", exc)
            self._abort()
            return False
        return self._finished(head, response)

    def respond(self, response: Response) -> None:
        """The answer of the exchange in flight, complete: sent, then the next request."""
        self._exchange = None
        head = self._head
        if head is None or self._lost:  # pragma: no cover - a cancelled exchange is silent
            return
        if self._respond_now(head, response):
            self._next_request()

    def resume(self, work: Coroutine[Any, Any, Response]) -> None:
        """The exchange in flight goes on in a task: ``work`` produces its answer."""
        self._exchange = None
        head = self._head
        assert head is not None
        self._server.handed_over += 1
        self._task = self._loop.create_task(self._handle(head, work))

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """A malformed head: JSON error, then close (what follows cannot be trusted)."""
        self._closing = True
        self._buf.clear()
        response = json_error(status, reason, message, close=True)
        if self.transport is not None:
            self.transport.write(_serialize(response, 1, close=True) + response.body)
            self.transport.close()

    def _abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abort()
        elif self._raw is not None:
            self._raw.close()

    def cut(self) -> None:
        """Abort the connection and cancel whatever it is doing (the end of a drain)."""
        self._dropped = not self._started
        self._abort()
        if self._task is not None:
            self._task.cancel()

    def close_idle(self) -> bool:
        """Close now if no request is in flight (drain); returns whether it was idle. A TLS
        handshake still in progress counts as idle: nothing was asked yet."""
        if not self._started and self._raw is not None:
            self._closing = self._dropped = True
            self._raw.abort()  # type: ignore[attr-defined]  # the handshake task then ends it
            return True
        if self._head is None and self._task is None:
            self._closing = True
            if self.transport is not None:
                self.transport.close()
            elif self._raw is not None:
                self._raw.close()
            return True
        return False

    def expire(self) -> None:
        """The sweeper found the deadline passed: slow head, stalled body or idle too long."""
        self.deadline = 0.0
        if self._lingering:
            if self.transport is not None:
                self.transport.close()
            return
        if self._head is None:
            log.info("closing connection: no complete request head in time (or idle)")
            self.close_idle()
        else:
            log.info("closing connection: request body stalled")
            self._abort()

    # -- answering -------------------------------------------------------------------------

    async def _send(self, head: RequestHead, response: Response) -> None:
        try:
            await self._write_response(head, response)
        except BaseException as exc:
            response.failed = exc
            raise
        finally:
            if response.stream is not None:
                aclose = getattr(response.stream, "aclose", None)
                if aclose is not None:
                    await aclose()
            if response.release is not None:
                response.release()

    def _must_close(self, head: RequestHead, response: Response) -> bool:
        return (
            response.close
            or self._closing
            or not head.keep_alive
            or not self._body_done  # answered before the body was read: linger, then close
            or self._body_error is not None
            or self._server.draining
        )

    def _write_whole(self, head: RequestHead, response: Response) -> None:
        """A complete answer (no stream): head and body in one write."""
        transport = self.transport
        if transport is None or self._lost:
            raise ConnectionResetError("client went away")
        close = self._must_close(head, response)
        raw = response.raw_head
        if raw is not None and not close and head.version == 1 and head.method != "HEAD":
            transport.write(raw + response.body)  # the upstream's head: nothing to change
            return
        no_length = response.status in (204, 304)
        head_bytes = _serialize(
            response,
            head.version,
            close=close,
            length=None if no_length else len(response.body),
        )
        if head.method == "HEAD" or no_length:
            transport.write(head_bytes)
        else:
            transport.write(head_bytes + response.body)

    async def _write_response(self, head: RequestHead, response: Response) -> None:
        transport = self.transport
        if transport is None or self._lost:
            raise ConnectionResetError("client went away")
        if response.stream is None:
            self._write_whole(head, response)
            return
        close = self._must_close(head, response)
        no_body = head.method == "HEAD" or response.status in (204, 304)
        stream = response.stream
        chunked = response.content_length is None and head.version == 1 and not no_body
        if response.content_length is None and not chunked and not no_body:
            close = True  # HTTP/1.0 client: the end of the body is the end of the connection
            response.close = True
        transport.write(
            _serialize(
                response,
                head.version,
                close=close,
                length=response.content_length,
                chunked=chunked,
            )
        )
        async for piece in stream:
            if no_body or not piece:
                continue
            if chunked:
                transport.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            else:
                transport.write(piece)
            response.sent += len(piece)
            await self.drain()
            if self._lost:
                raise ConnectionResetError("client went away")
        if chunked:
            transport.write(b"0\r\n\r\n")


def _serialize(
    response: Response,
    version: int,
    *,
    close: bool,
    length: int | None = None,
    chunked: bool = False,
) -> bytes:
    headers = response.headers
    if (
        "Content-Length" in headers
        or "Transfer-Encoding" in headers
        or "Connection" in headers
        or "Keep-Alive" in headers
    ):  # framing is ours alone
        headers = CIMultiDict(
            (k, v) for k, v in headers.items() if k.lower() not in _FRAMING_HEADERS
        )
    out = b"HTTP/1.1 %d %b\r\n" % (response.status, response.reason.encode("latin-1"))
    out += serialize_headers(headers.items())
    if length is not None:
        out += b"Content-Length: %d\r\n" % length
    elif chunked:
        out += b"Transfer-Encoding: chunked\r\n"
    if close:
        out += b"Connection: close\r\n"
    elif version == 0:
        out += b"Connection: keep-alive\r\n"
    return out + b"\r\n"


class HttpServer:
    """The connection factory of one listener: settings, the handler, live connections, drain."""

    def __init__(
        self,
        handler: Handler,
        settings: Limits,
        tls: TlsPolicy | None,
        loop: asyncio.AbstractEventLoop,
        *,
        fast_path: bool = True,
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.tls = tls
        self.loop = loop
        self.prepare: Prepare | None = getattr(handler, "prepare", None)
        #: serve what the handler can on callbacks (``prepare``); False: every request in a
        #: task (the engine's other path, kept selectable as the callback path's oracle)
        self.fast_path = fast_path
        self.on_callbacks = 0  # requests whose checks ran on callbacks (answered or forwarded)
        self.handed_over = 0  # of those: exchanges finished in a task (``resume``)
        self.connections: set[HttpConnection] = set()
        self.ended = 0  # connections released since start (``sidecar.heap`` trims after bursts)
        self.draining = False
        interval = min(settings.header_timeout, settings.keepalive_timeout) / 4
        self._interval = max(0.02, min(1.0, interval))
        self._sweeper = loop.create_task(self._sweep())

    def __call__(self) -> HttpConnection:
        return HttpConnection(self)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            now = self.loop.time()
            for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
                conn.expire()

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections now, let busy ones finish their answer (then they close), and
        abort whatever is left after ``timeout``."""
        self.draining = True
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            for conn in list(self.connections):
                conn.close_idle()
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.cut()
        self._sweeper.cancel()


@dataclass
class Listener:
    """A bound listening socket serving one handler; ``close`` drains in-flight requests."""

    name: str
    server: HttpServer
    sockets: asyncio.Server

    @property
    def port(self) -> int:
        return int(self.sockets.sockets[0].getsockname()[1])

    async def close(self, drain_timeout: float) -> None:
        self.sockets.close()
        await self.server.shutdown(drain_timeout)


async def start_listener(
    name: str,
    handler: Handler,
    host: str,
    port: int,
    *,
    tls: TlsPolicy | None,
    limits: Limits,
    fast_path: bool = True,
) -> Listener:
    loop = asyncio.get_running_loop()
    server = HttpServer(handler, limits, tls, loop, fast_path=fast_path)
    sockets = await loop.create_server(server, host, port, reuse_address=True, backlog=1024)
    log.info("%s listening on %s:%s", name, host, sockets.sockets[0].getsockname()[1])
    return Listener(name, server, sockets)
