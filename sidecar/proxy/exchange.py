"""A forwarded request served on protocol callbacks: the common exchange without a task.

The common MCP exchange — a small request whose body has arrived with its head, an idle pooled
connection upstream, a small answer framed by Content-Length that arrives in one read — needs
no coroutine: the client connection's ``data_received`` runs every check
(``ProxyHandler.prepare``) and writes the request upstream (``Exchange.start``), and the
upstream connection's ``data_received`` hands the answer back (``upstream_ready``), which is
logged, counted and written to the client right there. There is no task, no future and no timer
per request (the head deadline is the upstream connection's one lazily re-armed timer).

Whatever is not that common case takes the coroutine path of the same engine, deciding exactly
as it would have: ``prepare`` returns None before doing anything it could not do again (the
connection then runs ``ProxyHandler.__call__``), and an answer that is not small and complete
at its head (streamed, SSE, chunked, large, bodiless, failing after its head, still arriving)
is handed over mid-exchange to ``ProxyHandler.resume``, a task that goes on from the head as
``forward`` would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from sidecar.errors import SidecarError
from sidecar.proxy.forward import is_small, whole_answer
from sidecar.proxy.messages import Request, Response, json_error
from sidecar.proxy.upstream import UpstreamConnection, UpstreamPool, UpstreamResponse
from sidecar.tracing.correlation import Correlation, activate, deactivate

if TYPE_CHECKING:
    from sidecar.proxy.handler import ProxyHandler, RequestInfo

log = logging.getLogger(__name__)


class Client(Protocol):
    """The client connection an exchange answers (``proxy.connection.HttpConnection``)."""

    def respond(self, response: Response) -> None:
        """Send a complete answer now, then go on with the connection's next request."""

    def resume(self, work: Coroutine[Any, Any, Response]) -> None:
        """Go on in a task: ``work`` produces the answer (streamed, or read in pieces)."""


class Forward:
    """What a proxy's ``prepare_proxy`` decided to send upstream: the encoded request, on a
    connection already taken from ``pool`` (``UpstreamPool.take_now``). ``answered(status)``
    is told the upstream's status, or the status of the refusal an upstream failure became
    (the MCP audit of the inbound side)."""

    __slots__ = ("answered", "conn", "data", "pool")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: UpstreamConnection,
        data: bytes,
        answered: Callable[[int], None] | None = None,
    ) -> None:
        self.pool = pool
        self.conn = conn
        self.data = data
        self.answered = answered


class Exchange:
    """One request forwarded on callbacks (``sidecar.proxy.upstream.ExchangeListener``)."""

    __slots__ = (
        "_client",
        "_correlation",
        "_handler",
        "_head_timeout",
        "info",
        "plan",
        "request",
        "started",
    )

    def __init__(
        self,
        handler: ProxyHandler,
        request: Request,
        info: RequestInfo,
        started: float,
        correlation: Correlation,
        plan: Forward,
        head_timeout: float,
    ) -> None:
        self._handler = handler
        self.request = request
        self.info = info
        self.started = started
        self._correlation = correlation
        self.plan = plan
        self._head_timeout = head_timeout
        self._client: Client | None = None

    def start(self, client: Client) -> Response | None:
        """Write the request upstream; the answer comes back on callbacks (or at once, if
        the write failed)."""
        self._client = client
        plan = self.plan
        conn = plan.conn
        conn.begin(self.request.method)
        conn.expect(self, self._head_timeout)
        assert conn.transport is not None  # an idle connection the pool found open
        try:
            conn.transport.write(plan.data)
        except (ConnectionError, OSError) as exc:  # as ``UpstreamPool.request`` maps it
            conn.listener = None
            token = activate(self._correlation)
            try:
                return self._refused(plan.pool.failed(conn, exc))
            finally:
                deactivate(token)
        return None

    def cancel(self) -> None:
        """The client went away before the answer's head: the upstream connection is closed
        (never reused half-read) and the request logged as a cancelled coroutine logs it."""
        token = activate(self._correlation)
        try:
            self.plan.pool.discard(self.plan.conn)
            self._handler.record_cancelled(self.request, self.info, self.started)
        except Exception:  # a bug: logged, and the connection is gone anyway
            log.exception("error ending an exchange whose client went away")
        finally:
            deactivate(token)

    # -- ExchangeListener -------------------------------------------------------------------

    def upstream_ready(self, conn: UpstreamConnection) -> None:
        client = self._client
        assert client is not None
        plan = self.plan
        head, error = conn.head, conn.error
        ended = False  # the pool has had the connection back
        token = activate(self._correlation)
        try:
            if head is None:  # failed before its head
                assert error is not None
                failure = plan.pool.failed(conn, error)
                ended = True
                response = self._refused(failure)
            elif error is None and conn.body_done and is_small(head):
                body = conn.take_body()
                assert body is not None  # complete and unfailed
                response = whole_answer(head, conn.raw_head(), body)
                plan.pool.release(conn)
                ended = True
                response = self._answered(response)
            else:  # the coroutine path goes on from the head (its task keeps the correlation)
                upstream = UpstreamResponse(head, conn, plan.pool)
                ended = True  # the answer releases it
                client.resume(self._handler.resume(self, upstream))
                return
        except Exception as exc:  # a bug: never leave the client waiting
            if not ended:
                plan.pool.discard(conn)
            response = _crashed(exc)
        finally:
            deactivate(token)
        client.respond(response)

    def upstream_timeout(self, conn: UpstreamConnection) -> None:
        client = self._client
        assert client is not None
        token = activate(self._correlation)
        try:
            response = self._refused(self.plan.pool.timed_out(conn, self._head_timeout))
        except Exception as exc:
            response = _crashed(exc)
        finally:
            deactivate(token)
        client.respond(response)

    # -- the end of the exchange (the correlation is current) -------------------------------

    def _answered(self, response: Response) -> Response:
        if self.plan.answered is not None:
            self.plan.answered(response.status)
        info = self.info
        info.bytes_out = len(response.body)
        self._handler.record(self.request, info, response.status, self.started)
        return response

    def _refused(self, exc: BaseException) -> Response:
        if not isinstance(exc, SidecarError):
            raise exc
        if self.plan.answered is not None:
            self.plan.answered(exc.status)
        info = self.info
        response = self._handler.refused(exc, self.request, info)
        info.bytes_out = len(response.body)
        self._handler.record(self.request, info, response.status, self.started)
        return response


def _crashed(exc: BaseException) -> Response:
    log.error("error handling request", exc_info=exc)
    return json_error(500, "internal_error", "internal error", close=True)
