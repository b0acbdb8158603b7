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
from collections.abc import Callable, Iterable
from typing import Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import Limits
from sidecar.errors import SidecarError
from sidecar.proxy.errors import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sidecar.tls.contexts import PeerRejected

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
SSE_HEARTBEAT = b": keepalive\n\n"
SMALL_BODY = 256 * 1024  # answered in one write when the upstream declared its length


class RewriteError(Exception):
    """A body rewriter cannot continue safely (e.g. an oversized SSE event): abort the stream."""


class BodyRewriter(Protocol):
    """Transforms a response body chunk by chunk (``feed``), then ``finish`` flushes the rest."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class UpstreamIdentityError(aiohttp.ClientConnectorError):
    """The upstream's TLS peer is not the SPIFFE ID the route requires (nothing was sent)."""

    def __init__(self, connection_key: object, rejection: PeerRejected) -> None:
        super().__init__(connection_key, OSError(rejection.message))  # type: ignore[arg-type]
        self.rejection = rejection


def check_framing(request: web.BaseRequest) -> None:
    """Refuse request-smuggling shapes outright, whatever the HTTP parser tolerated."""
    headers = request.headers
    lengths = headers.getall("Content-Length", [])
    if len(lengths) > 1:
        raise BadRequest("duplicate Content-Length header", reason="duplicate_content_length")
    if lengths and "Transfer-Encoding" in headers:
        raise BadRequest(
            "both Content-Length and Transfer-Encoding", reason="content_length_with_chunked"
        )


def check_origin(request: web.BaseRequest, allowed: Iterable[str]) -> None:
    """DNS-rebinding protection: a browser-sent ``Origin`` must be listed (when a list is set)."""
    allowed = tuple(allowed)
    origin = request.headers.get("Origin")
    if allowed and origin is not None and origin.lower().rstrip("/") not in allowed:
        raise Forbidden(f"origin {origin!r} is not allowed", reason="origin_not_allowed")


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, or 413 as soon as it is known to exceed ``limit``."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


def forwardable_headers(
    headers: CIMultiDictProxy[str], *, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Copy end-to-end headers: no hop-by-hop ones (incl. those named in ``Connection``)."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", [])
        for token in value.split(",")
    }
    skip = HOP_BY_HOP | _REWRITTEN | named | {d.lower() for d in drop}
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        if key.lower() not in skip:
            out.add(key, value)
    return out


def error_response(exc: SidecarError, *, close: bool = False) -> web.Response:
    response = web.json_response(exc.to_json(), status=exc.status)
    if close:
        response.force_close()
    return response


async def forward(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    body: bytes,
    limits: Limits,
    *,
    ssl: object = True,
    rewriter: Callable[[str], BodyRewriter | None] | None = None,
) -> tuple[web.StreamResponse, int]:
    """Send the request upstream and stream the answer back; returns (response, bytes sent).

    ``rewriter(content_type)`` may return a ``BodyRewriter`` that transforms the response body
    on the way (MCP list filtering); the response is then sent without Content-Length.
    Raises ``ProxyError`` only before the response has started; a failure mid-stream aborts the
    client connection (a truncated body must not look complete).
    """
    upstream = await _send(request, session, url, headers, body, limits, ssl)
    try:
        body_rewriter = rewriter(upstream.content_type) if rewriter is not None else None
        length = upstream.content_length
        if (
            body_rewriter is None
            and length is not None
            and length <= SMALL_BODY
            and upstream.content_type != "text/event-stream"
        ):
            return await _small(upstream, limits, length)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        skip = HOP_BY_HOP | ({"content-length"} if body_rewriter is not None else set())
        for key, value in upstream.headers.items():
            if key.lower() not in skip:
                response.headers.add(key, value)
        is_sse = upstream.content_type == "text/event-stream"
        await response.prepare(request)
        try:
            if is_sse:
                sent = await _pump_sse(upstream, response, limits.sse_heartbeat, body_rewriter)
            else:
                sent = await _pump(upstream, response, limits, body_rewriter)
            await response.write_eof()
        except (aiohttp.ClientError, TimeoutError, ConnectionError, RewriteError) as exc:
            transport = request.transport
            if transport is None or transport.is_closing():
                log.debug("client went away mid-response (%s)", exc)
            else:
                log.info("upstream failed mid-response (%s): aborting the client connection", exc)
                transport.abort()
            return response, 0
        return response, sent
    finally:
        upstream.release()


async def _small(
    upstream: aiohttp.ClientResponse, limits: Limits, length: int
) -> tuple[web.StreamResponse, int]:
    """A small body of known length (the common MCP JSON answer) is read whole and answered in
    one write, head and body together, instead of being streamed chunk by chunk."""
    try:
        async with asyncio.timeout(min(limits.idle_timeout, limits.total_timeout)):
            data = await upstream.content.readexactly(length)
    except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError) as exc:
        raise UpstreamUnavailable(
            f"upstream failed while sending its body: {exc!r}", reason="upstream_reset"
        ) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"upstream body stalled for {limits.idle_timeout}s", reason="upstream_timeout"
        ) from exc
    response = web.Response(status=upstream.status, reason=upstream.reason, body=data)
    for key, value in upstream.headers.items():
        if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
            response.headers.add(key, value)
    return response, len(data)


async def _send(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    url: str,
    headers: CIMultiDict[str],
    body: bytes,
    limits: Limits,
    ssl: object,
) -> aiohttp.ClientResponse:
    timeout = aiohttp.ClientTimeout(
        total=None, connect=limits.connect_timeout, sock_read=None, sock_connect=None
    )
    head_timeout = min(limits.idle_timeout, limits.total_timeout)
    for attempt in (1, 2):
        try:
            async with asyncio.timeout(head_timeout):
                return await session.request(
                    request.method,
                    url,
                    headers=headers,
                    data=body if body or request.method in ("POST", "PUT", "PATCH") else None,
                    allow_redirects=False,
                    timeout=timeout,
                    ssl=ssl,  # type: ignore[arg-type]
                )
        except UpstreamIdentityError as exc:
            raise UpstreamUnavailable(
                f"upstream identity rejected: {exc.rejection.message}",
                reason="upstream_identity_mismatch",
            ) from exc
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise UpstreamUnavailable(
                f"TLS to upstream failed: {exc}", reason="upstream_tls_failed"
            ) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise UpstreamTimeout(
                f"connecting to upstream timed out after {limits.connect_timeout}s",
                reason="upstream_connect_timeout",
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            # Failed before a single byte was sent: the only case that is safe to retry.
            if attempt == 1:
                log.info("upstream connect failed (%s); retrying once", exc)
                continue
            raise UpstreamUnavailable(
                f"upstream connection failed: {exc.os_error}", reason="upstream_connect_failed"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(
                f"upstream sent no response head within {head_timeout}s",
                reason="upstream_timeout",
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream failed: {exc}", reason="upstream_reset") from exc
    raise AssertionError("unreachable")  # pragma: no cover


async def _pump(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    limits: Limits,
    rewriter: BodyRewriter | None,
) -> int:
    sent = 0
    async with asyncio.timeout(limits.total_timeout):
        while True:
            async with asyncio.timeout(limits.idle_timeout):
                chunk = await upstream.content.readany()
            if not chunk:
                break
            if rewriter is not None:
                chunk = rewriter.feed(chunk)
            if chunk:
                await response.write(chunk)
                sent += len(chunk)
    if rewriter is not None and (tail := rewriter.finish()):
        await response.write(tail)
        sent += len(tail)
    return sent


async def _pump_sse(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    heartbeat: float,
    rewriter: BodyRewriter | None,
) -> int:
    sent = 0
    at_boundary = True
    reader = upstream.content
    while True:
        try:
            if heartbeat > 0:
                chunk = await asyncio.wait_for(reader.readany(), heartbeat)
            else:
                chunk = await reader.readany()
        except TimeoutError:
            if at_boundary:
                await response.write(SSE_HEARTBEAT)
            continue
        if not chunk:
            break
        if rewriter is not None:
            chunk = rewriter.feed(chunk)  # emits whole events only
            if not chunk:
                continue
        await response.write(chunk)
        sent += len(chunk)
        at_boundary = chunk.endswith((b"\n\n", b"\r\n\r\n", b"\r\r"))
    if rewriter is not None and (tail := rewriter.finish()):
        await response.write(tail)
        sent += len(tail)
    return sent
