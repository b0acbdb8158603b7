"""Pooled HTTP/1.1 connections to one upstream, on raw asyncio protocols (no client framework).

One exchange at a time per connection (no pipelining); idle connections are reused newest first
and dropped when the upstream closed them, when idle longer than ``keepalive_timeout``, or — for
TLS — when they were made with an older TLS context (after an SVID rotation new exchanges go over
connections that present the new certificate). A TLS upstream is checked by ``verify`` right after
the handshake, before a single byte of a request is written.

Only a failure to connect is retried (once): a request that may have reached the upstream is
never sent twice.

Circuit breakers (Envoy's cluster thresholds, ``config.CircuitBreakers``): at most
``max_requests`` requests in flight (from ``request`` until the answer is released), at most
``max_connections`` connections (busy, idle or being opened); a request finding every connection
busy waits for one - at most ``max_pending_requests`` of them, each at most ``connect_timeout``,
first come first served - and past any of these is refused at once with ``UpstreamOverflow``
(503), nothing sent. Every slot is given back on every path: answer released, upstream failure,
the waiting client going away (cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol
from urllib.parse import urlsplit

from multidict import CIMultiDict

from sidecar.config import CircuitBreakers, Limits
from sidecar.errors import SidecarError
from sidecar.http1.chunked import ChunkedDecoder
from sidecar.http1.errors import HttpParseError
from sidecar.http1.parse import (
    HEAD_END,
    Framing,
    ResponseHead,
    parse_response_head,
    serialize_headers,
)
from sidecar.proxy.errors import UpstreamOverflow, UpstreamTimeout, UpstreamUnavailable
from sidecar.proxy.flow import WriteFlow
from sidecar.tls.alerts import CERTIFICATE_ALERTS, received_alert
from sidecar.tls.contexts import PeerRejected

log = logging.getLogger(__name__)

MAX_RESPONSE_HEAD = 256 * 1024
HIGH_WATER = 256 * 1024  # buffered body bytes at which we stop reading from the upstream
LOW_WATER = 64 * 1024


DEFAULT_BREAKERS = CircuitBreakers()

SMALL_WRITE = 64 * 1024  # a request this small is taken by the kernel at once: no drain wait
TIMER_SLACK = 0.001  # uvloop's clock counts whole milliseconds: its timers may fire that early


def encode_request(
    method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
) -> bytes:
    """The bytes of a request sent upstream: head (a Content-Length for a body, and for POST,
    PUT and PATCH even without one) and body. ``ValueError`` on header injection."""
    head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + serialize_headers(headers)
    if body or method in ("POST", "PUT", "PATCH"):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def head_timed_out(head_timeout: float) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"upstream sent no response head within {head_timeout}s", reason="upstream_timeout"
    )


def reset_error(exc: BaseException) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"upstream failed: {exc}", reason="upstream_reset")


def tls_refusal(alert: str) -> UpstreamUnavailable:
    """The upstream ended TLS with ``alert``: named as such (a refused identity is no crash)."""
    what = (
        "refused our client certificate (SVID)"
        if alert in CERTIFICATE_ALERTS
        else "refused the TLS connection"
    )
    log.warning("the upstream %s: TLS alert %s", what, alert)
    return UpstreamUnavailable(
        f"the upstream {what}: TLS alert {alert}", reason=f"upstream_tls_refused_{alert}"
    )


async def _take_pending_input() -> None:
    """Let the loop read what already arrived on a fresh TLS connection before we write on it.

    TLS 1.3: a server refusing our certificate does so after our side of the handshake is
    complete, with an alert; a server that then closes without reading the rest of our flight
    makes its kernel answer with a reset. If both are in before our request is written, the
    write fails on the reset and the alert, still unread, is lost: the refusal would look like
    a crash. Two turns of the loop (asyncio runs I/O callbacks after the tasks already ready,
    uvloop before) read it first, so the alert names the refusal. Once per connection."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class ExchangeListener(Protocol):
    """Who is told, on callbacks, that an exchange's response head (or its failure) arrived:
    the proxy's callback path (``sidecar.proxy.exchange``), instead of a coroutine waiting."""

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        """The head arrived (with whatever of the body came along), or the exchange failed
        before it (``conn.error``)."""

    def upstream_timeout(self, conn: UpstreamConnection) -> None:
        """No head before the deadline given to ``expect``."""


class UpstreamConnection(WriteFlow, asyncio.Protocol):
    """Parses one response at a time and hands its body over piece by piece.

    A coroutine waits for the head with ``read_head``; the callback path instead registers a
    listener with ``expect``, told once (``ExchangeListener``). Its deadline needs no timer per
    exchange: one timer per connection is re-armed only when it fires before the current
    exchange's deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.context: ssl.SSLContext | None = None
        self.idle_since = 0.0
        self.closed = False
        self.counted = False  # holds one of the pool's ``max_connections`` slots
        self._method = "GET"
        self._buf = bytearray()
        self._head: ResponseHead | None = None
        self._head_waiter: asyncio.Future[ResponseHead] | None = None
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._body_waiter: asyncio.Future[None] | None = None
        self._remaining = 0
        self._chunked: ChunkedDecoder | None = None
        self.body_done = False
        self._error: BaseException | None = None
        self._last_data = 0.0
        self._quiet = False
        self._quiet_after = 0.0
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._head_data = b""  # the bytes the head was parsed from, and where it ends in them
        self._head_end = 0
        self.listener: ExchangeListener | None = None
        self._deadline = 0.0
        self._deadline_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an ``asyncio.Transport`` subclass, but has its methods
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._receive(data)
        if self.listener is not None and (self._head is not None or self._error is not None):
            self._notify()

    def _receive(self, data: bytes) -> None:
        if self._head is None:
            if self._buf:  # the rest of a head that came in pieces
                self._buf += data
                data = bytes(self._buf)
                self._buf.clear()
            self._take_head(data)
        elif not self.body_done:
            self._feed_body(data)
        elif data:
            self._fail(UpstreamUnavailable("upstream sent bytes after its response"))

    def eof_received(self) -> bool | None:
        if (
            self._head is not None
            and not self.body_done
            and self._head.framing is Framing.UNTIL_CLOSE
        ):
            self._finish_body()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._head is not None and not self.body_done:
            if self._head.framing is Framing.UNTIL_CLOSE and exc is None:
                self._finish_body()
            else:
                self._fail(ConnectionResetError("upstream closed the connection mid-body"))
        elif self._head is None:
            # TLS 1.3: a server refusing our certificate says so after our handshake completed,
            # so its alert arrives here, in place of the response head
            alert = received_alert(exc)
            self._fail(
                tls_refusal(alert)
                if alert is not None
                else ConnectionResetError("upstream closed the connection")
            )
        self.drain_lost("upstream closed the connection")
        if self.listener is not None:
            self._notify()

    # -- parsing ---------------------------------------------------------------------------

    def _take_head(self, data: bytes) -> None:
        while True:
            end = data.find(HEAD_END)
            if end < 0:
                if len(data) > MAX_RESPONSE_HEAD:
                    self._fail(UpstreamUnavailable("upstream response head too large"))
                else:
                    self._buf += data
                return
            try:
                head = parse_response_head(data[:end], request_method=self._method)
            except HttpParseError as exc:
                self._fail(UpstreamUnavailable(f"malformed upstream response: {exc.message}"))
                return
            if 100 <= head.status < 200:
                if head.status == 101:
                    self._fail(UpstreamUnavailable("upstream switched protocols unasked"))
                    return
                data = data[end + 4 :]
                continue  # interim answer (100 Continue, 103 Early Hints): not forwarded
            break
        self._head = head
        self._head_data, self._head_end = data, end + 4
        self._last_data = self._loop.time()
        if head.framing is Framing.LENGTH:
            self._remaining = head.length
            self.body_done = head.length == 0
        elif head.framing is Framing.CHUNKED:
            self._chunked = ChunkedDecoder()
        elif head.framing is Framing.NONE:
            self.body_done = True
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(head)
        if len(data) > end + 4:
            self._receive(data[end + 4 :])

    def _feed_body(self, data: bytes) -> None:
        head = self._head
        assert head is not None
        if head.framing is Framing.LENGTH:
            if len(data) >= self._remaining:
                piece, extra = data[: self._remaining], data[self._remaining :]
                self._push(piece)
                self._remaining = 0
                self._finish_body()
                if extra:
                    self._fail(UpstreamUnavailable("upstream sent bytes after its response"))
                return
            self._remaining -= len(data)
            self._push(data)
        elif head.framing is Framing.CHUNKED:
            assert self._chunked is not None
            try:
                pieces, used = self._chunked.feed(data)
            except HttpParseError as exc:
                self._fail(UpstreamUnavailable(f"malformed chunked body: {exc.message}"))
                return
            if pieces:  # several chunks in one read go on as one piece (one write downstream)
                self._push(pieces[0] if len(pieces) == 1 else b"".join(pieces))
            if self._chunked.done:
                self._finish_body()
                if used < len(data):
                    self._fail(UpstreamUnavailable("upstream sent bytes after its response"))
        else:
            self._push(data)

    def _push(self, piece: bytes) -> None:
        if not piece:
            return
        self._last_data = self._loop.time()
        self._pieces.append(piece)
        self._buffered += len(piece)
        if self._buffered >= HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _finish_body(self) -> None:
        self.body_done = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        for waiter in (self._head_waiter, self._body_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    # -- the exchange ----------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def begin(self, method: str) -> None:
        """Reset for a new exchange (the previous one was completely read)."""
        self._method = method
        self._head = None
        self._head_waiter = None
        self._pieces.clear()
        self._buffered = 0
        self._chunked = None
        self._remaining = 0
        self.body_done = False

    def expect(self, listener: ExchangeListener, timeout: float) -> None:
        """Tell ``listener`` when the head of the exchange just begun arrives or the exchange
        fails, or after ``timeout`` seconds without a head."""
        self.listener = listener
        self._deadline = deadline = self._loop.time() + timeout
        if self._deadline_timer is None:
            self._deadline_timer = self._loop.call_at(deadline, self._check_deadline)

    def _notify(self) -> None:
        listener, self.listener = self.listener, None
        assert listener is not None
        listener.upstream_ready(self)  # last: the listener may begin the next exchange on us

    def _check_deadline(self) -> None:
        self._deadline_timer = None
        listener = self.listener
        if listener is None:
            return  # the exchange is over: the next one arms the timer again
        due = self._deadline
        if self._loop.time() + TIMER_SLACK >= due:
            self.listener = None
            listener.upstream_timeout(self)
        else:
            self._deadline_timer = self._loop.call_at(due, self._check_deadline)

    def cancel_deadline(self) -> None:
        self.listener = None
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    @property
    def head(self) -> ResponseHead | None:
        return self._head

    @property
    def error(self) -> BaseException | None:
        return self._error

    def raw_head(self) -> bytes:
        """The response head exactly as received, blank line included."""
        return self._head_data[: self._head_end]

    async def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)
        await self.drain()  # a large request body: wait until the kernel took it

    async def read_head(self, timeout: float) -> ResponseHead:
        """The response head, or ``TimeoutError`` after ``timeout`` seconds (a timer handle on
        the waiter: much cheaper per request than an ``asyncio.timeout`` scope)."""
        if self._error is not None:
            raise self._error
        if self._head is not None:
            return self._head
        waiter: asyncio.Future[ResponseHead] = self._loop.create_future()
        self._head_waiter = waiter
        timer = self._loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    async def read_piece(self, timeout: float | None = None) -> bytes | None:
        """The next piece of the body, ``b""`` at its end, ``None`` if nothing came within
        ``timeout`` seconds (nothing is lost: the next call goes on where this one stopped)."""
        while True:
            if self._pieces:
                if len(self._pieces) == 1:
                    piece = self._pieces.popleft()
                else:  # everything that arrived since the last read, in one piece
                    piece = b"".join(self._pieces)
                    self._pieces.clear()
                self._buffered -= len(piece)
                if self._paused and self._buffered <= LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return piece
            if self._error is not None:
                raise self._error
            if self.body_done:
                return b""
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._body_waiter = waiter
            if timeout is not None and self._quiet_timer is None:
                self._quiet_after = timeout
                self._quiet_timer = self._loop.call_at(self._last_data + timeout, self._check_quiet)
            try:
                await waiter
            finally:
                self._body_waiter = None
            if self._quiet:
                self._quiet = False
                if not self._pieces and not self.body_done and self._error is None:
                    self._last_data = self._loop.time()  # the next silence counts from now
                    return None

    def _check_quiet(self) -> None:
        """One timer per exchange, not per read: it fires at most once per quiet period and
        wakes a waiting reader only if nothing arrived for ``_quiet_after`` seconds."""
        self._quiet_timer = None
        waiter = self._body_waiter
        if waiter is None or waiter.done():
            return  # nobody waiting: the next wait re-arms it from the last data
        due = self._last_data + self._quiet_after
        if self._loop.time() >= due:
            self._quiet = True
            waiter.set_result(None)
        else:
            self._quiet_timer = self._loop.call_at(due, self._check_quiet)

    def stop_timers(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None

    def take_body(self) -> bytes | None:
        """The whole body at once if it has completely arrived (the common small answer),
        else ``None``: the caller then reads it piece by piece."""
        if not self.body_done or self._error is not None:
            return None
        data = b"".join(self._pieces)
        self._pieces.clear()
        self._buffered = 0
        return data

    def keep_alive(self) -> bool:
        return self.body_done and self._head is not None and self._head.keep_alive


class UpstreamResponse:
    """The head of an upstream answer and its body, read with ``read``; ``release`` at the end
    returns the connection to the pool (only when its body was completely read)."""

    __slots__ = ("_conn", "_pool", "_released", "head")

    def __init__(self, head: ResponseHead, conn: UpstreamConnection, pool: UpstreamPool) -> None:
        self.head = head
        self._conn = conn
        self._pool = pool
        self._released = False

    @property
    def status(self) -> int:
        return self.head.status

    @property
    def headers(self) -> CIMultiDict[str]:
        return self.head.headers

    @property
    def content_type(self) -> str:
        return self.head.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        return self.head.length if self.head.framing is Framing.LENGTH else None

    async def read(self, timeout: float | None = None) -> bytes | None:
        """The next body piece; ``b""`` at the end; ``None`` after ``timeout`` s of silence."""
        return await self._conn.read_piece(timeout)

    def take_body(self) -> bytes | None:
        return self._conn.take_body()

    def raw_head(self) -> bytes:
        return self._conn.raw_head()

    def release(self) -> None:
        """Idempotent: the connection goes back (or is closed) exactly once."""
        if not self._released:
            self._released = True
            self._pool.release(self._conn)


Handed = UpstreamConnection | None
"""What a waiting request is handed: a free connection, or (None) a slot to open one in."""


class UpstreamPool:
    """Connections to ``host:port``; TLS when ``context`` gives a context (called per connect),
    sending ``server_name`` as SNI (none when ``None``). The name only lets the server side pick
    its listener: who the server is, ``verify`` decides (the context checks no host name).

    ``on_overflow(limit)`` is told of every request a circuit breaker refused (for the metric).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        context: Callable[[], ssl.SSLContext] | None = None,
        verify: Callable[[Any], object] | None = None,
        server_name: str | None = None,
        connect_timeout: float = 5.0,
        keepalive_timeout: float = 30.0,
        max_idle: int = 256,
        breakers: CircuitBreakers = DEFAULT_BREAKERS,
        on_overflow: Callable[[str], None] = lambda limit: None,
    ) -> None:
        self.host = host
        self.port = port
        self._context = context
        self._verify = verify
        self.server_name = server_name
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle
        self.max_connections = breakers.max_connections
        self.max_pending = breakers.max_pending_requests
        self.max_requests = breakers.max_requests
        self._on_overflow = on_overflow
        self._idle: deque[UpstreamConnection] = deque()
        self._busy: set[UpstreamConnection] = set()
        self._pending: deque[asyncio.Future[Handed]] = deque()
        self.connections = 0
        """Connections counted against ``max_connections`` (open, or being opened)."""
        self.requests = 0
        """Requests in flight (waiting ones included), counted against ``max_requests``."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting = 0

    # -- state for the metrics (read at scrape time) -----------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._idle) + len(self._busy)

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def pending_connections(self) -> int:
        """Connections being opened (each for a request waiting on it)."""
        return self._connecting

    @property
    def pending(self) -> int:
        """Requests waiting for a connection."""
        return len(self._pending)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        head_timeout: float,
    ) -> UpstreamResponse:
        """Send one request (body with Content-Length) and wait for the response head.

        Raises ``UpstreamUnavailable`` / ``UpstreamTimeout`` with the reasons of the data path."""
        data = encode_request(method, target, headers, body)
        if self.requests >= self.max_requests:
            raise self._overflow(
                "max_requests", f"{self.max_requests} requests to the upstream already in flight"
            )
        self.requests += 1
        try:
            conn = await self._acquire()
        except BaseException:
            self.requests -= 1
            raise
        try:
            conn.begin(method)
            if len(data) > SMALL_WRITE:  # may have to wait for the kernel to take it
                loop = self._loop
                assert loop is not None  # set by _take_idle
                started = loop.time()
                async with asyncio.timeout(head_timeout):
                    await conn.send(data)
                head_timeout = max(0.0, head_timeout - (loop.time() - started))
            else:
                assert conn.transport is not None
                conn.transport.write(data)
            response_head = await conn.read_head(head_timeout)
        except TimeoutError as exc:
            self.discard(conn)
            raise head_timed_out(head_timeout) from exc
        except (ConnectionError, OSError) as exc:
            self.discard(conn)
            raise reset_error(exc) from exc
        except BaseException:  # our own refusals (malformed answer...) and cancellation
            self.discard(conn)
            raise
        return UpstreamResponse(response_head, conn, self)

    def take_now(self) -> UpstreamConnection | None:
        """An idle connection for an exchange started at once on callbacks, counted as a request
        in flight (``release``/``failed`` end it, ``give_back`` undoes it); None when the
        request would have to be refused, wait, or open a connection: ``request`` does that."""
        if self.requests >= self.max_requests:
            return None
        conn = self._take_idle()
        if conn is not None:
            self.requests += 1
        return conn

    def give_back(self, conn: UpstreamConnection) -> None:
        """Undo ``take_now`` for an exchange that was not started: the connection goes back
        where it was, as if never taken."""
        self.requests -= 1
        self._busy.discard(conn)
        self._idle.append(conn)

    def failed(self, conn: UpstreamConnection, exc: BaseException) -> BaseException:
        """The end of an exchange that failed before its response head (``conn.error``): the
        connection is closed; what ``request`` would have raised is returned."""
        self.discard(conn)
        if isinstance(exc, ConnectionError | OSError):
            return reset_error(exc)
        return exc

    def timed_out(self, conn: UpstreamConnection, head_timeout: float) -> SidecarError:
        """The end of an exchange without a response head within ``head_timeout``."""
        self.discard(conn)
        return head_timed_out(head_timeout)

    def release(self, conn: UpstreamConnection) -> None:
        """The end of a request: its connection goes to the first waiting request, or back to
        the idle list, if the exchange completed cleanly; else it is closed."""
        self.requests -= 1
        self._busy.discard(conn)
        conn.stop_timers()
        if conn.keep_alive() and conn.reusable:
            self._reuse(conn)
        else:
            self._close(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """The end of a failed request: its connection is closed."""
        self.requests -= 1
        self._busy.discard(conn)
        self._close(conn)

    def _reuse(self, conn: UpstreamConnection) -> None:
        """A connection free for a new exchange: handed to the first waiting request (if it is
        still good for the current TLS context), else kept idle (up to ``max_idle``)."""
        if self._pending:
            if conn.context is not (self._context() if self._context is not None else None):
                self._close(conn)  # made with an older SVID: its slot goes to the waiter
                return
            while self._pending:
                waiter = self._pending.popleft()
                if not waiter.done():
                    self._busy.add(conn)
                    waiter.set_result(conn)
                    return
        if len(self._idle) < self.max_idle:
            assert self._loop is not None
            conn.idle_since = self._loop.time()
            self._idle.append(conn)
        else:
            self._close(conn)

    def _close(self, conn: UpstreamConnection) -> None:
        conn.stop_timers()
        conn.cancel_deadline()
        conn.closed = True
        if conn.transport is not None:
            conn.transport.abort() if not conn.body_done else conn.transport.close()
        if conn.counted:
            conn.counted = False
            self._free_slot()

    def _free_slot(self) -> None:
        """A connection slot became free: the first waiting request may open a connection in
        it (the slot stays counted, so nobody else takes it meanwhile)."""
        while self._pending:
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.connections -= 1

    def _overflow(self, limit: str, message: str) -> UpstreamOverflow:
        self._on_overflow(limit)
        return UpstreamOverflow(f"circuit breaker {limit}: {message}", limit=limit)

    async def _acquire(self) -> UpstreamConnection:
        """A connection for one exchange: idle, new (within ``max_connections``), or the next
        one freed while this request waits (within ``max_pending_requests``)."""
        conn = self._take_idle()
        if conn is not None:
            return conn
        if self.connections < self.max_connections:
            self.connections += 1
            return await self._open()
        if len(self._pending) >= self.max_pending:
            raise self._overflow(
                "max_pending_requests",
                f"all {self.max_connections} connections busy and {self.max_pending} requests "
                "already waiting",
            )
        handed = await self._wait()
        return handed if handed is not None else await self._open()

    async def _wait(self) -> Handed:
        """Wait, at most ``connect_timeout``, to be handed a connection or a slot."""
        loop = self._loop
        assert loop is not None  # set by _take_idle
        waiter: asyncio.Future[Handed] = loop.create_future()
        self._pending.append(waiter)
        timer = loop.call_later(self.connect_timeout, _expire, waiter)
        try:
            return await waiter
        except TimeoutError:
            raise self._overflow(
                "max_connections",
                f"all {self.max_connections} connections stayed busy for "
                f"{self.connect_timeout}s (connect_timeout)",
            ) from None
        except BaseException:  # cancelled (the client went away), or the pool closed
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())  # handed over just as we were cancelled
            raise
        finally:
            timer.cancel()
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                with contextlib.suppress(ValueError):  # not handed: still queued
                    self._pending.remove(waiter)

    def _pass_on(self, handed: Handed) -> None:
        """What a request that no longer wants it was handed goes to the next one."""
        if handed is None:
            self._free_slot()
        else:
            self._busy.discard(handed)
            self._reuse(handed)

    def _take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still good for the current TLS
        context, or None (stale ones are closed on the way)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        context = self._context() if self._context is not None else None
        now = loop.time()
        while self._idle:
            conn = self._idle.pop()
            if (
                conn.reusable
                and conn.context is context
                and now - conn.idle_since < self.keepalive_timeout
            ):
                self._busy.add(conn)
                return conn
            self._close(conn)
        return None

    async def _open(self) -> UpstreamConnection:
        """A new connection (TLS handshake and identity check included) in the slot the caller
        holds, which is freed if none can be made; a refused connect is retried once, since
        nothing can have been sent."""
        loop = asyncio.get_running_loop()
        context = self._context() if self._context is not None else None
        try:
            for attempt in (1, 2):
                self._connecting += 1
                try:
                    conn = await self._connect(loop, context)
                except UpstreamUnavailable as exc:
                    if exc.reason == "upstream_connect_failed" and attempt == 1:
                        log.info("upstream connect failed (%s); retrying once", exc.message)
                        continue
                    raise
                finally:
                    self._connecting -= 1
                conn.counted = True
                self._busy.add(conn)
                return conn
        except BaseException:
            self._free_slot()
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, context: ssl.SSLContext | None
    ) -> UpstreamConnection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(loop),
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=(self.server_name or "") if context is not None else None,
                    ssl_handshake_timeout=self.connect_timeout if context is not None else None,
                )
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to upstream timed out after {self.connect_timeout}s",
                reason="upstream_connect_timeout",
            ) from exc
        except ssl.SSLError as exc:
            alert = received_alert(exc)
            if alert is not None:  # TLS 1.2: the server's refusal is part of the handshake
                raise tls_refusal(alert) from exc
            raise UpstreamUnavailable(
                f"TLS to upstream failed: {exc}", reason="upstream_tls_failed"
            ) from exc
        except OSError as exc:
            raise UpstreamUnavailable(
                f"upstream connection failed: {exc}", reason="upstream_connect_failed"
            ) from exc
        conn.context = context
        if context is not None and self._verify is not None:
            assert conn.transport is not None
            try:
                self._verify(conn.transport.get_extra_info("ssl_object"))
            except BaseException as exc:
                conn.transport.abort()  # not one byte to a server we did not accept
                if not isinstance(exc, PeerRejected):
                    raise  # e.g. our own SVID expired meanwhile (NotReady, 503)
                raise UpstreamUnavailable(
                    f"upstream identity rejected: {exc.message}",
                    reason="upstream_identity_mismatch",
                ) from exc
        if context is not None:
            await _take_pending_input()
        return conn

    def close(self) -> None:
        while self._pending:  # nothing will be freed for them any more
            waiter = self._pending.popleft()
            if not waiter.done():
                waiter.set_exception(
                    UpstreamUnavailable("the sidecar is stopping", reason="upstream_closed")
                )
        for conn in (*self._idle, *self._busy):
            self._close(conn)
        self._idle.clear()
        self._busy.clear()


def pool_for(
    url: str,
    limits: Limits,
    *,
    context: Callable[[], ssl.SSLContext] | None = None,
    verify: Callable[[Any], object] | None = None,
    server_name: str | None = None,
    keepalive_timeout: float = 30.0,
    breakers: CircuitBreakers = DEFAULT_BREAKERS,
    on_overflow: Callable[[str], None] = lambda limit: None,
) -> tuple[UpstreamPool, str]:
    """A pool for a configured ``scheme://host:port`` upstream, and its ``Host`` header value."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None  # normalised by the config
    pool = UpstreamPool(
        parts.hostname,
        parts.port,
        context=context,
        verify=verify,
        server_name=server_name,
        connect_timeout=limits.connect_timeout,
        keepalive_timeout=keepalive_timeout,
        breakers=breakers,
        on_overflow=on_overflow,
    )
    return pool, parts.netloc
