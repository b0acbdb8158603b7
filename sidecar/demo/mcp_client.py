"""Thin async helpers over the official MCP Python SDK's Streamable HTTP client.

Every helper takes the MCP endpoint URL (e.g. ``http://127.0.0.1:15001/math/mcp``) and optional
extra HTTP headers sent on every request, opens its own session and closes it again (the SDK sends
``DELETE`` with the session id on close). Each one is bounded by ``timeout`` seconds overall.

Protocol era: SDK 2.x clients default to ``mode="auto"``, which probes ``server/discover`` and,
against a 2.x server, settles on the stateless 2026-07-28 protocol (one self-contained POST per
request: no ``initialize``, no ``Mcp-Session-Id``, no GET stream, no DELETE). These helpers
default to ``mode="legacy"`` -- the ``initialize`` handshake (protocol 2025-11-25) with a stateful
session -- because that is the flavour that exercises session ids, the GET stream and DELETE
through a proxy; pass ``mode="auto"`` to see what an out-of-the-box SDK client does.

How the SDK opens the GET stream: in legacy mode its transport
(``mcp.client.streamable_http.StreamableHTTPTransport``) remembers the ``Mcp-Session-Id`` from the
``initialize`` response and, when it sends ``notifications/initialized``, starts a background task
that GETs the endpoint with ``Accept: text/event-stream`` and that session id (reconnecting a couple
of times if it drops). The SDK does not expose the session id or that stream, so
:func:`open_session` installs an httpx2 response hook on the client it hands to the SDK and records
every HTTP exchange; :meth:`TracedSession.wait_get_stream` waits for the GET's response headers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx2
from mcp import Client
from mcp.client.client import ConnectMode
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation, TextContent
from mcp.types.version import LATEST_HANDSHAKE_VERSION

DEFAULT_TIMEOUT: Final = 30.0
CLIENT_INFO: Final = Implementation(name="mesh-demo-client", version="0.1.0")
SESSION_ID_HEADER: Final = "mcp-session-id"
PROTOCOL_VERSION_HEADER: Final = "mcp-protocol-version"

_HTTP_TIMEOUT: Final = 30.0
_SSE_READ_TIMEOUT: Final = 300.0

# The SDK runs each progress callback in a task it spawns when the notification arrives, so one that
# arrives together with the result could run just after ``call_tool`` returns; these loop turns let
# such a straggler run before the events are handed back.
_PROGRESS_DRAIN_TURNS: Final = 3


@dataclass(frozen=True)
class HttpExchange:
    """One HTTP request the SDK client made, recorded when its response headers arrived."""

    method: str
    url: str
    status: int
    content_type: str | None
    request_session_id: str | None
    """``Mcp-Session-Id`` the client sent."""
    response_session_id: str | None
    """``Mcp-Session-Id`` the server answered with."""


@dataclass(frozen=True)
class ToolResult:
    text: str
    """All text content blocks, joined with newlines."""
    structured: Any
    """``structuredContent`` (the SDK's demo tools wrap scalars as ``{"result": value}``)."""
    is_error: bool


@dataclass(frozen=True)
class ProgressEvent:
    seq: int
    """0-based arrival order among this call's progress notifications."""
    progress: float
    total: float | None
    message: str | None
    arrived_at: float
    """``time.monotonic()`` when the client's progress callback ran."""
    before_result: bool
    """True if it arrived while the ``tools/call`` was still waiting for its result."""


@dataclass(frozen=True)
class RawResponse:
    status: int
    content_type: str | None
    session_id: str | None
    body: str


class TracedSession:
    """An open SDK ``Client`` plus the HTTP exchanges it made so far."""

    def __init__(self, client: Client, exchanges: list[HttpExchange], get_seen: asyncio.Event):
        self.client = client
        self.exchanges = exchanges
        self._get_seen = get_seen

    @property
    def session_id(self) -> str | None:
        """The ``Mcp-Session-Id`` the server assigned (None in the stateless modern era)."""
        return next((e.response_session_id for e in self.exchanges if e.response_session_id), None)

    async def wait_get_stream(self, timeout: float = DEFAULT_TIMEOUT) -> HttpExchange:
        """The SDK's standalone GET stream request, once its response headers arrived.

        Any status is returned (check ``status == 200`` and the ``text/event-stream`` content type).
        Only legacy-mode sessions open one.
        """
        await asyncio.wait_for(self._get_seen.wait(), timeout)
        return next(e for e in self.exchanges if e.method == "GET")


@asynccontextmanager
async def open_session(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    mode: ConnectMode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
    **client_options: Any,
) -> AsyncIterator[TracedSession]:
    """Connect and handshake (bounded by ``timeout``); on exit the SDK DELETEs the session.
    ``client_options`` go to the SDK ``Client`` (e.g. ``elicitation_callback``)."""
    exchanges: list[HttpExchange] = []
    get_seen = asyncio.Event()

    async def record(response: httpx2.Response) -> None:
        request = response.request
        exchanges.append(
            HttpExchange(
                method=request.method,
                url=str(request.url),
                status=response.status_code,
                content_type=response.headers.get("content-type"),
                request_session_id=request.headers.get(SESSION_ID_HEADER),
                response_session_id=response.headers.get(SESSION_ID_HEADER),
            )
        )
        if request.method == "GET":
            get_seen.set()

    # Same timeouts as the SDK's own default client: a long read timeout for SSE streams.
    http_client = httpx2.AsyncClient(
        headers=dict(headers) if headers else None,
        timeout=httpx2.Timeout(_HTTP_TIMEOUT, read=_SSE_READ_TIMEOUT),
        event_hooks={"response": [record]},
    )
    async with http_client:
        client = Client(
            streamable_http_client(url, http_client=http_client),
            mode=mode,
            client_info=CLIENT_INFO,
            read_timeout_seconds=timeout,
            cache=None,
            **client_options,
        )
        async with asyncio.timeout(timeout):
            await client.__aenter__()
        try:
            yield TracedSession(client, exchanges, get_seen)
        finally:
            async with asyncio.timeout(timeout):
                await client.__aexit__(None, None, None)


def _tool_result(result: CallToolResult) -> ToolResult:
    text = "\n".join(block.text for block in result.content if isinstance(block, TextContent))
    return ToolResult(text=text, structured=result.structured_content, is_error=result.is_error)


async def list_tool_names(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    mode: ConnectMode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
) -> list[str]:
    """Names of the server's tools, in the order the server lists them."""
    async with (
        asyncio.timeout(timeout),
        open_session(url, headers, mode=mode, timeout=timeout) as s,
    ):
        return [tool.name for tool in (await s.client.list_tools()).tools]


async def call_tool(
    url: str,
    name: str,
    arguments: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    mode: ConnectMode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
) -> ToolResult:
    """Call one tool; a tool-level failure comes back with ``is_error=True``."""
    async with (
        asyncio.timeout(timeout),
        open_session(url, headers, mode=mode, timeout=timeout) as s,
    ):
        return _tool_result(await s.client.call_tool(name, dict(arguments)))


async def call_with_progress(
    url: str,
    name: str,
    arguments: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    mode: ConnectMode = "legacy",
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[ToolResult, list[ProgressEvent]]:
    """Call a tool asking for progress; returns the result and the progress events as they arrived.

    ``on_progress`` runs inside the SDK's progress callback, i.e. at arrival time (useful to look at
    server-side state at that moment).
    """
    events: list[ProgressEvent] = []
    result_arrived = False

    async def progress_callback(progress: float, total: float | None, message: str | None) -> None:
        event = ProgressEvent(
            seq=len(events),
            progress=progress,
            total=total,
            message=message,
            arrived_at=time.monotonic(),
            before_result=not result_arrived,
        )
        events.append(event)
        if on_progress is not None:
            on_progress(event)

    async with (
        asyncio.timeout(timeout),
        open_session(url, headers, mode=mode, timeout=timeout) as s,
    ):
        result = await s.client.call_tool(
            name, dict(arguments), progress_callback=progress_callback
        )
        result_arrived = True
        for _ in range(_PROGRESS_DRAIN_TURNS):
            await asyncio.sleep(0)
    return _tool_result(result), events


@dataclass(frozen=True)
class SessionLifecycle:
    session_id: str
    get_stream: HttpExchange
    """The SDK's standalone GET SSE request."""
    delete: HttpExchange | None
    """The SDK's DELETE on close (None if it did not send one)."""
    exchanges: list[HttpExchange]


async def session_lifecycle(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> SessionLifecycle:
    """Open a legacy session, wait for its GET stream, make one request, close it (DELETE)."""
    async with asyncio.timeout(timeout):
        async with open_session(url, headers, mode="legacy", timeout=timeout) as s:
            get_stream = await s.wait_get_stream(timeout)
            await s.client.list_tools()
            session_id = s.session_id
            exchanges = s.exchanges
        if session_id is None:
            raise RuntimeError("server did not assign an Mcp-Session-Id")
        delete = next((e for e in exchanges if e.method == "DELETE"), None)
        return SessionLifecycle(session_id, get_stream, delete, list(exchanges))


async def post_raw(
    url: str,
    message: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    session_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> RawResponse:
    """POST one JSON-RPC message outside any SDK session (e.g. to probe a terminated session id).

    Sends the headers a legacy-era client would (``Accept`` for JSON and SSE, the negotiated
    ``MCP-Protocol-Version``); reads the whole body, so use it for requests that complete.
    """
    request_headers = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        PROTOCOL_VERSION_HEADER: LATEST_HANDSHAKE_VERSION,
        **(headers or {}),
    }
    if session_id is not None:
        request_headers[SESSION_ID_HEADER] = session_id
    async with (
        asyncio.timeout(timeout),
        httpx2.AsyncClient(timeout=httpx2.Timeout(timeout)) as http,
    ):
        response = await http.post(url, content=json.dumps(message), headers=request_headers)
    return RawResponse(
        status=response.status_code,
        content_type=response.headers.get("content-type"),
        session_id=response.headers.get(SESSION_ID_HEADER),
        body=response.text,
    )
