"""The request and response objects proxy handlers work with (no I/O here).

Our HTTP/1.1 engine (``proxy.connection``) builds a ``Request`` per parsed head; handlers answer
with a ``Response``: either a complete body (sent in one write, head included) or a ``stream`` of
body pieces (SSE, large or filtered answers) that the engine frames and sends as they come.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from multidict import CIMultiDict

from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected

if TYPE_CHECKING:
    from sidecar.tracing.spans import RequestTrace

JSON_TYPE = "application/json; charset=utf-8"

REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}


class PeerInfo(Protocol):
    """What the connection knows about its TLS peer (verified once, at the handshake)."""

    peer: SpiffeId | None
    rejection: PeerRejected | None
    peer_cert_sha256: str | None


class Request:
    """One parsed request; the body is read on demand (``read_body``), bounded by the listener.

    ``raw_path`` is the origin-form target as received (logged); ``path`` starts as its path
    and is replaced by the normalised path before routing (``ProxyHandler``); ``target`` is
    what is routed and forwarded. ``target_scheme`` is the scheme of an absolute-form target
    (a client using us as its HTTP proxy), None otherwise."""

    __slots__ = (
        "_body",
        "conn",
        "headers",
        "method",
        "path",
        "raw_path",
        "scheme",
        "target_scheme",
        "trace",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        version: int,
        headers: CIMultiDict[str],
        scheme: str,
        conn: PeerInfo,
        body: Callable[[], Awaitable[bytes]],
        target_scheme: str | None = None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = raw_path.partition("?")[0]
        self.version = version
        self.headers = headers
        self.scheme = scheme
        self.conn = conn
        self._body = body
        self.target_scheme = target_scheme
        #: the request's spans when tracing is on (set by the proxy handler), else None
        self.trace: RequestTrace | None = None

    @property
    def target(self) -> str:
        """``path`` and the query exactly as received."""
        query = self.raw_path.find("?")
        return self.path if query < 0 else self.path + self.raw_path[query:]

    async def read_body(self) -> bytes:
        """The whole body (``PayloadTooLarge`` beyond the listener's ``max_request_body``)."""
        return await self._body()


class Response:
    """A status, headers and either ``body`` or ``stream`` (never both).

    Framing headers (Content-Length, Transfer-Encoding, Connection) are the engine's business:
    handlers never set them. ``content_length`` declares a streamed body's length when known (an
    upstream's answer passed through unchanged); otherwise a stream is sent chunked."""

    __slots__ = (
        "body",
        "close",
        "content_length",
        "failed",
        "headers",
        "raw_head",
        "reason",
        "release",
        "sent",
        "status",
        "stream",
    )

    def __init__(
        self,
        status: int,
        headers: CIMultiDict[str] | None = None,
        body: bytes = b"",
        *,
        reason: str | None = None,
        stream: AsyncIterator[bytes] | None = None,
        content_length: int | None = None,
        close: bool = False,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason if reason is not None else REASONS.get(status, "Unknown")
        self.headers: CIMultiDict[str] = headers if headers is not None else CIMultiDict()
        self.body = body
        self.stream = stream
        self.content_length = content_length
        self.close = close
        #: called by the engine once the stream is over or will not be sent (frees resources
        #: an unstarted stream would otherwise hold, e.g. a pooled upstream connection)
        self.release = release
        #: an upstream's head to send unchanged instead of one built from ``headers`` (which
        #: must then be that head's, left alone); the engine uses it only when its answer needs
        #: no ``Connection`` header (``proxy.forward.whole_answer`` says when it may be set)
        self.raw_head: bytes | None = None
        #: set by the engine while streaming: body bytes written, and what broke the stream
        self.sent = 0
        self.failed: BaseException | None = None


def json_response(data: Any, *, status: int = 200, close: bool = False) -> Response:
    """A JSON answer (refusals, JSON-RPC errors, metadata documents)."""
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(status, CIMultiDict(((("Content-Type", JSON_TYPE)),)), body, close=close)


def json_error(status: int, reason: str, message: str, *, close: bool = False) -> Response:
    """A refusal in the shape every answer of ours uses (``SidecarError.to_json``'s)."""
    body = {"error": reason, "message": message, "status": status}
    return json_response(body, status=status, close=close)
