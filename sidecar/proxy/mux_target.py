"""Talking to one target of a multiplexing endpoint: its pool (mTLS, its own expected SPIFFE
ID), its session headers, and reading its answers (JSON or SSE) as JSON-RPC messages.

Every failure becomes a ``TargetError`` naming the target and why (``reason``, a metric label):
the endpoint turns it into a JSON-RPC error for the client, or leaves the target out of a
merged answer. A ``404`` to a request that carried the target's session id is ``SessionGone``:
the target ended (or lost, e.g. restarted) that session, and the endpoint initializes it again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from multidict import CIMultiDict

from sidecar.config import Limits, TargetConfig
from sidecar.errors import SidecarError
from sidecar.mcp.jsonrpc import JsonRpcError, loads
from sidecar.mcp.mux.session import TargetSession
from sidecar.mcp.mux.sse import SseReader
from sidecar.proxy.upstream import UpstreamPool, UpstreamResponse
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected, RotatingTls

MAX_ANSWER: Final = 16 * 1024 * 1024
"""Largest JSON answer read whole (bytes)."""
MAX_ERROR_BODY: Final = 4096
"""Bytes of a refusal's body read to name its reason."""
JSON_MEDIA = "application/json"
SSE_MEDIA = "text/event-stream"


class TargetError(SidecarError):
    """The target could not be used for this message; ``target`` says which."""

    status = 502
    reason = "target_unavailable"

    def __init__(self, target: str, message: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.target = target


@dataclass(frozen=True, slots=True)
class Refused:
    """A non-2xx answer carrying a JSON-RPC message (e.g. the target's sidecar denying a tool
    by policy with 403, or rate-limiting it with 429): an answer to relay, not a failure."""

    status: int
    message: Any


class SessionGone(TargetError):
    """The target answered 404 to its own session id: initialize it again."""

    reason = "target_session_gone"


def server_verifier(
    tls: RotatingTls, expected: SpiffeId, on_rejected: Callable[[PeerRejected], None]
) -> Callable[[Any], object]:
    """Checks, right after the TLS handshake, that the server is exactly ``expected``."""

    def verify(ssl_object: Any) -> object:
        try:
            return tls.verify_server(ssl_object, expected)
        except PeerRejected as exc:
            on_rejected(exc)
            raise

    return verify


_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ASCII_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))
"""One encoder each (``json.dumps`` with options builds a new one per call)."""


def dumps(value: Any) -> bytes:
    """Compact JSON (no line breaks: it goes in one SSE ``data:`` line)."""
    try:
        return _ENCODER.encode(value).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (escaped in the input): keep it escaped
        return _ASCII_ENCODER.encode(value).encode("ascii")


@dataclass
class TargetLink:
    """One target: how to reach it and what to send it."""

    config: TargetConfig
    pool: UpstreamPool
    host: str
    """``Host`` header value (the target's ``host:port``)."""
    authorization: Callable[[str], Awaitable[str]] | None = None
    """``Bearer <JWT-SVID>`` for an audience (when the target has ``jwt_svid_audience``)."""

    @property
    def name(self) -> str:
        return self.config.name

    def path(self, request_path: str) -> str:
        return self.config.path or request_path

    async def _headers(
        self, state: TargetSession, base: CIMultiDict[str], accept: str, body: bool
    ) -> CIMultiDict[str]:
        headers = base.copy()
        headers["Host"] = self.host
        headers["Accept"] = accept
        if body:
            headers["Content-Type"] = JSON_MEDIA
        if state.session_id is not None:
            headers["Mcp-Session-Id"] = state.session_id
        if state.protocol_version is not None:
            headers["MCP-Protocol-Version"] = state.protocol_version
        audience = self.config.jwt_svid_audience
        if audience is not None and self.authorization is not None:
            try:
                headers["Authorization"] = await self.authorization(audience)
            except SidecarError as exc:
                raise TargetError(self.name, exc.message, reason=exc.reason) from exc
        return headers

    async def send(
        self,
        method: str,
        state: TargetSession,
        path: str,
        base: CIMultiDict[str],
        body: bytes,
        limits: Limits,
        *,
        accept: str = f"{JSON_MEDIA}, {SSE_MEDIA}",
    ) -> UpstreamResponse | Refused:
        """One request to the target: its 2xx answer, a JSON-RPC refusal (``Refused``), else
        ``TargetError`` (``SessionGone`` for a 404 to the target's own session)."""
        headers = await self._headers(state, base, accept, body=bool(body))
        try:
            response = await self.pool.request(
                method,
                path,
                headers.items(),
                body,
                head_timeout=min(limits.idle_timeout, limits.total_timeout),
            )
        except SidecarError as exc:
            raise TargetError(self.name, exc.message, reason=exc.reason) from exc
        if 200 <= response.status < 300:
            return response
        status = response.status
        body = await _refusal_body(response, limits)
        if status == 404 and state.session_id is not None:
            raise SessionGone(self.name, f"the target ended its session ({_detail(body)})")
        message = _json_rpc(body)
        if message is not None:
            return Refused(status, message)
        detail = _detail(body)
        raise TargetError(
            self.name,
            f"the target answered HTTP {status}{detail and ': ' + detail}",
            reason=f"target_http_{status}",
        )


async def _refusal_body(response: UpstreamResponse, limits: Limits) -> bytes:
    """The start of a refusal's body (the connection is released)."""
    try:
        return await read_whole("", response, limits, MAX_ERROR_BODY)
    except TargetError:
        return b""


def _json_rpc(body: bytes) -> Any:
    """The JSON-RPC response (or batch) a refusal carries, or None."""
    try:
        value = loads(body)
    except JsonRpcError:
        return None
    items = value if isinstance(value, list) else [value]
    if items and all(
        isinstance(m, dict) and m.get("jsonrpc") == "2.0" and ("error" in m or "result" in m)
        for m in items
    ):
        return value
    return None


def _detail(body: bytes) -> str:
    """A short reason from a refusal's body: our sidecars' ``{"error", "message"}``, a
    JSON-RPC error's message, or the text."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:200]
        message = data.get("message")
        if isinstance(error, str):
            return f"{error}: {message}" if isinstance(message, str) else error
    return ""


async def read_whole(
    target: str, response: UpstreamResponse, limits: Limits, limit: int = MAX_ANSWER
) -> bytes:
    """The whole body (bounded by ``limit`` and the timeouts); the connection is released."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_timeout
    wait = min(limits.idle_timeout, limits.total_timeout)
    pieces: list[bytes] = []
    size = 0
    try:
        whole = response.take_body()
        if whole is not None:
            if len(whole) > limit:
                raise TargetError(
                    target, f"answer larger than {limit} bytes", reason="answer_too_large"
                )
            return whole
        while True:
            try:
                piece = await response.read(wait)
            except (ConnectionError, SidecarError) as exc:
                raise TargetError(
                    target, f"the answer broke off: {exc}", reason="target_reset"
                ) from exc
            if piece is None or loop.time() > deadline:
                raise TargetError(target, "the answer stalled", reason="target_timeout")
            if not piece:
                return b"".join(pieces)
            size += len(piece)
            if size > limit:
                raise TargetError(
                    target, f"answer larger than {limit} bytes", reason="answer_too_large"
                )
            pieces.append(piece)
    finally:
        response.release()


async def messages(
    target: str, response: UpstreamResponse, limits: Limits
) -> AsyncGenerator[Any, None]:
    """The JSON-RPC messages of a 2xx answer as they arrive: the one message (or batch) of a
    JSON body, or the data of each SSE event. Unreadable JSON raises ``TargetError``
    (``unreadable_answer``); the connection is released when the iteration ends."""
    content_type = response.content_type
    if content_type == JSON_MEDIA:
        yield load_answer(target, await read_whole(target, response, limits))
        return
    if content_type != SSE_MEDIA:
        response.release()
        raise TargetError(target, f"unexpected content type {content_type!r}", reason="bad_answer")
    reader = SseReader()
    try:
        while True:
            try:
                piece = await response.read(limits.sse_heartbeat or None)
            except (ConnectionError, SidecarError) as exc:
                raise TargetError(
                    target, f"the stream broke off: {exc}", reason="target_reset"
                ) from exc
            if piece is None:
                yield None  # quiet: the caller may send a keep-alive
                continue
            if not piece:
                return
            try:
                events = reader.feed(piece)
            except SidecarError as exc:
                raise TargetError(target, exc.message, reason=exc.reason) from exc
            for data in events:
                yield load_answer(target, data)
    finally:
        response.release()


def load_answer(target: str, data: bytes) -> Any:
    """A target's JSON, read strictly; ``TargetError`` (``unreadable_answer``) otherwise."""
    try:
        return loads(data)
    except JsonRpcError as exc:
        raise TargetError(
            target, f"unreadable answer: {exc.message}", reason="unreadable_answer"
        ) from exc
