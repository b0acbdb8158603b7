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

An answer a policy must rewrite (``rewrite``: MCP list filtering) goes through
``sidecar.proxy.rewrite``'s one rule instead: read and rewritten, or replaced; one a policy in
dry run only watches (``observe``) is passed on unchanged while a copy is read the same way
(``AnswerTap``); every other answer is passed on without being looked at.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable

from multidict import CIMultiDict

from sidecar.config import Limits
from sidecar.errors import SidecarError
from sidecar.http1.parse import Framing, ResponseHead
from sidecar.proxy.errors import Forbidden, UpstreamTimeout, UpstreamUnavailable
from sidecar.proxy.messages import Request, Response, json_response
from sidecar.proxy.rewrite import (
    MAX_REWRITTEN_BODY,
    AnswerRewrite,
    AnswerTap,
    Shape,
    StreamRewriter,
    decoding_stream,
    plan_rewrite,
    rewrite_json,
    rewritten_headers,
)
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
# A header line of a validated head (a line starts right after CRLF with its name, which
# the colon follows at once) whose name is hop-by-hop.
_has_hop_by_hop_line = re.compile(
    b"\r\n(?:" + b"|".join(n.encode() for n in sorted(HOP_BY_HOP)) + b"):", re.IGNORECASE
).search
# Framing and routing headers the proxy sets itself.
_REWRITTEN = frozenset({"host", "content-length"})
_NOT_FORWARDED = tuple(HOP_BY_HOP | _REWRITTEN)
_NOT_FORWARDED_BACK = tuple(HOP_BY_HOP | {"content-length"})
SSE_HEARTBEAT = b": keepalive\n\n"
SMALL_BODY = 256 * 1024  # answered in one write when the upstream declared its length


def check_origin(headers: CIMultiDict[str], allowed: tuple[str, ...]) -> None:
    """DNS-rebinding protection: a browser-sent ``Origin`` must be listed (when a list is set)."""
    if not allowed:
        return
    origin = headers.get("Origin")
    if origin is not None and origin.lower().rstrip("/") not in allowed:
        raise Forbidden(f"origin {origin!r} is not allowed", reason="origin_not_allowed")


def _connection_options(headers: CIMultiDict[str]) -> set[str]:
    """The lower-cased header names a message's ``Connection`` header lists: hop-by-hop too."""
    return {t.strip(" \t").lower() for v in headers.getall("Connection") for t in v.split(",")}


def _end_to_end(headers: CIMultiDict[str], not_forwarded: Iterable[str]) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers: the fixed ones, and those ``Connection`` names
    (RFC 9110 §7.6.1). Copy-then-pop costs about half of filtering pair by pair."""
    out = headers.copy()
    if "Connection" in headers:
        for name in _connection_options(headers):
            out.popall(name, None)
    for name in not_forwarded:
        out.popall(name, None)
    return out


def forwardable_headers(headers: CIMultiDict[str], *, drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """Copy a request's end-to-end headers, without Host and Content-Length and ``drop``."""
    out = _end_to_end(headers, _NOT_FORWARDED)
    for name in drop:
        out.popall(name, None)
    return out


def answer_headers(headers: CIMultiDict[str]) -> CIMultiDict[str]:
    """Copy an upstream answer's end-to-end headers, without Content-Length (the engine frames
    the answer)."""
    return _end_to_end(headers, _NOT_FORWARDED_BACK)


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
    rewrite: AnswerRewrite | None = None,
    observe: AnswerRewrite | None = None,
) -> Response:
    """Send the request upstream; answer with its response, streamed unless small.

    ``rewrite`` is applied to the answer under ``sidecar.proxy.rewrite``'s rule (the result is
    then sent chunked, or whole for JSON); ``observe`` is shown a copy of the answer that way,
    which itself passes unchanged (the copy is read whole once the answer was sent, or as it
    streams). Raises ``ProxyError`` only before the response has
    started; a failure mid-stream makes the stream raise, and the engine aborts the client
    connection (a truncated body must not look complete).
    """
    if request.trace is not None:  # tracing on: our span's context goes upstream
        request.trace.upstream(headers, body)
    upstream = await pool.request(
        request.method,
        target,
        headers.items(),
        body,
        head_timeout=head_timeout(limits),
    )
    return await respond(upstream, limits, rewrite=rewrite, observe=observe)


def head_timeout(limits: Limits) -> float:
    """How long an upstream may take to start its answer."""
    return min(limits.idle_timeout, limits.total_timeout)


def is_small(head: ResponseHead) -> bool:
    """An answer read whole and sent in one write: a known, small length, and not SSE (an
    event stream is streamed whatever its length)."""
    return (
        head.framing is Framing.LENGTH
        and head.length <= SMALL_BODY
        and not _is_event_stream(head.headers)
    )


def _is_event_stream(headers: CIMultiDict[str]) -> bool:
    content_type = headers.get("Content-Type")
    if content_type is None:
        return False
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


def whole_answer(head: ResponseHead, raw_head: bytes, body: bytes) -> Response:
    """The client's answer to a small upstream answer read whole (``is_small``).

    When nothing in the head must change (HTTP/1.1, framed by Content-Length, no hop-by-hop
    header and so none that ``Connection`` lists) it keeps the upstream's head bytes, which the
    engine sends unchanged unless its answer to the client needs a ``Connection`` header
    (``Response.raw_head``); otherwise the head is rebuilt from the end-to-end headers."""
    if head.version == 1 and _has_hop_by_hop_line(raw_head) is None:
        response = Response(head.status, head.headers, body, reason=head.reason)
        response.raw_head = raw_head
        return response
    return Response(head.status, answer_headers(head.headers), body, reason=head.reason)


async def respond(
    upstream: UpstreamResponse,
    limits: Limits,
    *,
    rewrite: AnswerRewrite | None = None,
    observe: AnswerRewrite | None = None,
) -> Response:
    """The client's answer to an upstream answer whose head has arrived (see ``forward``)."""
    released = False
    try:
        if rewrite is not None:
            out_headers = answer_headers(upstream.headers)
            plan = plan_rewrite(upstream.status, upstream.headers)
            if plan.shape is not Shape.NO_BODY:
                reason = upstream.head.reason
                headers = rewritten_headers(out_headers, plan.media_type)
                if plan.shape is Shape.REPLACE:  # the body is not read: the connection closes
                    data = rewrite.replacement(plan.reason)
                    return Response(upstream.status, headers, data, reason=reason)
                if plan.shape is Shape.JSON:
                    raw = await _read_whole(upstream, limits, MAX_REWRITTEN_BODY)
                    data = rewrite_json(raw, plan.coding, rewrite)
                    return Response(upstream.status, headers, data, reason=reason)
                stream = _sse_body(
                    upstream, limits.sse_heartbeat, decoding_stream(plan.coding, rewrite.sse())
                )
                released = True  # the stream releases the connection when it ends
                return Response(
                    upstream.status, headers, reason=reason, stream=stream, release=upstream.release
                )
        tap = None if observe is None else AnswerTap(upstream.status, upstream.headers, observe)
        if is_small(upstream.head):
            data = await _read_small(upstream, limits)
            if tap is not None:
                tap.feed(data)
                tap.finish()
            return whole_answer(upstream.head, upstream.raw_head(), data)
        length = upstream.content_length
        is_sse = upstream.content_type == "text/event-stream"
        if is_sse:
            stream = _sse_body(upstream, limits.sse_heartbeat, None, tap)
        else:
            stream = _body(upstream, limits, tap)
        released = True  # the stream releases the connection when it ends
        return Response(
            upstream.status,
            answer_headers(upstream.headers),
            reason=upstream.head.reason,
            stream=stream,
            content_length=length,
            release=upstream.release,
        )
    finally:
        if not released:
            upstream.release()


async def _read_small(upstream: UpstreamResponse, limits: Limits) -> bytes:
    """A small body of known length (the common MCP JSON answer) is read whole and answered in
    one write, head and body together."""
    return await _read_whole(upstream, limits, SMALL_BODY)


async def _read_whole(upstream: UpstreamResponse, limits: Limits, cap: int) -> bytes:
    """The whole body, each silence bounded by ``idle_timeout`` and the whole by
    ``total_timeout``; reading stops once more than ``cap`` bytes came (the caller sees that
    from the length and the connection is not reused)."""
    whole = upstream.take_body()  # usually the whole body has arrived with the head
    if whole is not None:
        return whole
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_timeout
    wait = min(limits.idle_timeout, limits.total_timeout)
    pieces: list[bytes] = []
    size = 0
    try:
        while size <= cap and (piece := await upstream.read(wait)):
            if loop.time() > deadline:
                raise UpstreamTimeout(
                    "upstream body exceeded total_timeout", reason="upstream_timeout"
                )
            pieces.append(piece)
            size += len(piece)
    except (ConnectionError, UpstreamUnavailable) as exc:
        raise UpstreamUnavailable(
            f"upstream failed while sending its body: {exc!r}", reason="upstream_reset"
        ) from exc
    if piece is None:
        raise UpstreamTimeout(f"upstream body stalled for {wait}s", reason="upstream_timeout")
    return b"".join(pieces)


async def _body(
    upstream: UpstreamResponse, limits: Limits, tap: AnswerTap | None = None
) -> AsyncIterator[bytes]:
    """A non-SSE body: each silence bounded by ``idle_timeout``; ``total_timeout`` is checked
    at every piece and every silence (so a silent body overruns it by ``idle_timeout`` at most).
    ``tap`` is fed what the upstream sent, and finished at its end."""
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
                if tap is not None:
                    tap.finish()
                break
            if tap is not None:
                tap.feed(chunk)
            yield chunk
    finally:
        upstream.release()


async def _sse_body(
    upstream: UpstreamResponse,
    heartbeat: float,
    rewriter: StreamRewriter | None,
    tap: AnswerTap | None = None,
) -> AsyncIterator[bytes]:
    """An SSE stream: no idle/total timeout; a heartbeat comment after ``heartbeat`` seconds of
    upstream silence, only between events. A ``rewriter`` that is ``done`` ends the stream (the
    rest of the upstream's is not read); ``tap`` is fed what the upstream sent."""
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
                if tap is not None:
                    tap.finish()
                break
            if tap is not None:
                tap.feed(chunk)
            if rewriter is not None:
                chunk = rewriter.feed(chunk)  # emits whole events only
                if rewriter.done:
                    if chunk:
                        yield chunk
                    return
                if not chunk:
                    continue
            yield chunk
            at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
        if rewriter is not None and (tail := rewriter.finish()):
            yield tail
    finally:
        upstream.release()
