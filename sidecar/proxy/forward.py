"""Forwarding one HTTP exchange upstream, shared by the inbound and outbound proxies.

Request bodies are read whole (bounded by ``max_request_body``: MCP messages are small and later
layers inspect them); response bodies are always streamed chunk by chunk, never buffered, so SSE
events reach the client as they are produced.

Timeouts: ``connect_timeout`` bounds the upstream connect (+ TLS); ``idle_timeout`` bounds the
wait for the response head and each gap inside a non-SSE body; ``total_timeout`` bounds a non-SSE
exchange. SSE responses are exempt from idle and total timeouts — an MCP stream may be quiet for
minutes — and instead get an SSE comment line (``: keepalive``) every ``sse_heartbeat`` seconds
of upstream silence, written only between events, which keeps intermediaries from reaping the
stream and makes a vanished client show up as a write error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from multidict import CIMultiDict

from sidecar.config import Limits
from sidecar.errors import SidecarError
from sidecar.proxy.errors import Forbidden, UpstreamTimeout, UpstreamUnavailable
from sidecar.proxy.messages import Request, Response, json_response
from sidecar.proxy.upstream import UpstreamPool, UpstreamResponse

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Framing and routing headers the proxy sets itself.
_REWRITTEN = frozenset({"host", "content-length"})
_NOT_FORWARDED = tuple(HOP_BY_HOP | _REWRITTEN)
_NOT_FORWARDED_BACK = HOP_BY_HOP | {"content-length"}
SSE_HEARTBEAT = b": keepalive\n\n"
SMALL_BODY = 256 * 1024  # answered in one write when the upstream declared its length


class RewriteError(Exception):
    """A body rewriter cannot continue safely (e.g. an oversized SSE event): abort the stream."""


class BodyRewriter(Protocol):
    """Transforms a response body chunk by chunk (``feed``), then ``finish`` flushes the rest."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


def check_origin(headers: CIMultiDict[str], allowed: tuple[str, ...]) -> None:
    """DNS-rebinding protection: a browser-sent ``Origin`` must be listed (when a list is set)."""
    if not allowed:
        return
    origin = headers.get("Origin")
    if origin is not None and origin.lower().rstrip("/") not in allowed:
        raise Forbidden(f"origin {origin!r} is not allowed", reason="origin_not_allowed")


def forwardable_headers(headers: CIMultiDict[str], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Copy end-to-end headers: no hop-by-hop ones (incl. those named in ``Connection``)."""
    out = headers.copy()
    if "Connection" in headers:
        for value in headers.getall("Connection"):
            for token in value.split(","):
                out.popall(token.strip(), None)
    for name in _NOT_FORWARDED:
        out.popall(name, None)
    for name in drop:
        out.popall(name, None)
    return out


def error_response(exc: SidecarError, *, close: bool = False) -> Response:
    return json_response(exc.to_json(), status=exc.status, close=close)


async def forward(
    request: Request,
    pool: UpstreamPool,
    target: str,
    headers: CIMultiDict[str],
    body: bytes,
    limits: Limits,
    *,
    rewriter: Callable[[str], BodyRewriter | None] | None = None,
) -> Response:
    """Send the request upstream; answer with its response, streamed unless small.

    ``rewriter(content_type)`` may return a ``BodyRewriter`` that transforms the response body
    on the way (MCP list filtering); the response is then sent chunked. Raises ``ProxyError``
    only before the response has started; a failure mid-stream makes the stream raise, and the
    engine aborts the client connection (a truncated body must not look complete).
    """
    if request.trace is not None:  # tracing on: our span's context goes upstream
        request.trace.upstream(headers, body)
    upstream = await pool.request(
        request.method,
        target,
        headers.items(),
        body,
        head_timeout=min(limits.idle_timeout, limits.total_timeout),
    )
    released = False
    try:
        content_type = upstream.content_type
        body_rewriter = rewriter(content_type) if rewriter is not None else None
        length = upstream.content_length
        is_sse = content_type == "text/event-stream"
        out_headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED_BACK
        )
        if body_rewriter is None and length is not None and length <= SMALL_BODY and not is_sse:
            data = await _read_small(upstream, limits)
            return Response(upstream.status, out_headers, data, reason=upstream.head.reason)
        if is_sse:
            stream = _sse_body(upstream, limits.sse_heartbeat, body_rewriter)
        else:
            stream = _body(upstream, limits, body_rewriter)
        released = True  # the stream releases the connection when it ends
        return Response(
            upstream.status,
            out_headers,
            reason=upstream.head.reason,
            stream=stream,
            content_length=length if body_rewriter is None else None,
            release=upstream.release,
        )
    finally:
        if not released:
            upstream.release()


async def _read_small(upstream: UpstreamResponse, limits: Limits) -> bytes:
    """A small body of known length (the common MCP JSON answer) is read whole and answered in
    one write, head and body together."""
    whole = upstream.take_body()  # usually the whole body has arrived with the head
    if whole is not None:
        return whole
    pieces: list[bytes] = []
    wait = min(limits.idle_timeout, limits.total_timeout)
    try:
        while piece := await upstream.read(wait):
            pieces.append(piece)
    except (ConnectionError, UpstreamUnavailable) as exc:
        raise UpstreamUnavailable(
            f"upstream failed while sending its body: {exc!r}", reason="upstream_reset"
        ) from exc
    if piece is None:
        raise UpstreamTimeout(f"upstream body stalled for {wait}s", reason="upstream_timeout")
    return b"".join(pieces)


async def _body(
    upstream: UpstreamResponse, limits: Limits, rewriter: BodyRewriter | None
) -> AsyncIterator[bytes]:
    """A non-SSE body: each silence bounded by ``idle_timeout``; ``total_timeout`` is checked
    at every piece and every silence (so a silent body overruns it by ``idle_timeout`` at most)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_timeout
    wait = min(limits.idle_timeout, limits.total_timeout)
    try:
        while True:
            chunk = await upstream.read(wait)
            if chunk is None:
                raise UpstreamTimeout("upstream body stalled", reason="upstream_timeout")
            if loop.time() > deadline:
                raise UpstreamTimeout(
                    "upstream body exceeded total_timeout", reason="upstream_timeout"
                )
            if not chunk:
                break
            if rewriter is not None:
                chunk = rewriter.feed(chunk)
            if chunk:
                yield chunk
        if rewriter is not None and (tail := rewriter.finish()):
            yield tail
    finally:
        upstream.release()


async def _sse_body(
    upstream: UpstreamResponse, heartbeat: float, rewriter: BodyRewriter | None
) -> AsyncIterator[bytes]:
    """An SSE stream: no idle/total timeout; a heartbeat comment after ``heartbeat`` seconds of
    upstream silence, only between events."""
    at_boundary = True
    wait = heartbeat if heartbeat > 0 else None
    try:
        while True:
            chunk = await upstream.read(wait)
            if chunk is None:  # quiet for ``heartbeat`` seconds
                if at_boundary:
                    yield SSE_HEARTBEAT
                continue
            if not chunk:
                break
            if rewriter is not None:
                chunk = rewriter.feed(chunk)  # emits whole events only
                if not chunk:
                    continue
            yield chunk
            at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
        if rewriter is not None and (tail := rewriter.finish()):
            yield tail
    finally:
        upstream.release()
