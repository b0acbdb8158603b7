"""Demo MCP server (official MCP Python SDK, Streamable HTTP only) for the mesh demo and e2e tests.

Tools: ``add``, ``multiply``, ``echo``, ``get_time`` and ``count_slowly``; the last one reports
progress through the request context while it runs, so its POST is answered with an SSE stream
whose progress events reach the client before the tool returns. Sessions are stateful: the server
hands out an ``Mcp-Session-Id`` on ``initialize``, serves the standalone GET SSE stream and ends the
session on DELETE (later requests with that id get ``404``).

Run it with ``python -m sidecar.demo.mcp_server --port 8000`` (endpoint ``http://127.0.0.1:8000/mcp``),
or embed it in a running asyncio loop with :func:`serve_mcp`.

Host/Origin checks (DNS-rebinding protection) -- what the SDK does:
``mcp.server.transport_security.TransportSecurityMiddleware`` runs on every request that reaches a
session's transport (POST, GET, DELETE). With ``enable_dns_rebinding_protection`` it answers
``421`` unless the ``Host`` header equals an ``allowed_hosts`` entry or matches a ``"name:*"``
entry (any port; note ``"name:*"`` does NOT match a bare ``Host: name`` without port), and ``403``
when an ``Origin`` header is present and matches no ``allowed_origins`` entry (same rules; a missing
Origin is accepted). If no settings are passed, the SDK enables protection only when the app's
``host`` argument is loopback (allowing ``127.0.0.1:*``, ``localhost:*``, ``[::1]:*``) and turns it
off for any other bind address. We always pass explicit settings (:func:`transport_security`):
protection on, the loopback names with and without port, plus the bind host and any
``allowed_hosts`` the caller adds. Our sidecars forward requests with ``Host`` rewritten to the
upstream's ``host:port`` (e.g. ``127.0.0.1:8000``), which the ``127.0.0.1:*`` entry accepts;
sidecar-to-sidecar traffic carries no browser ``Origin``, so the Origin check never triggers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Collection, Generator, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal

import anyio
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

MCP_PATH: Final = "/mcp"
"""Path of the Streamable HTTP endpoint (POST / GET / DELETE)."""

SERVER_NAME: Final = "mesh-demo-mcp"
TOOL_NAMES: Final = frozenset({"add", "multiply", "echo", "get_time", "count_slowly"})
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000

MAX_COUNT: Final = 1000
MAX_DELAY: Final = 10.0

_LOOPBACK_HOST_NAMES: Final = ("127.0.0.1", "localhost", "[::1]")
_SHUTDOWN_TIMEOUT: Final = 10.0


@dataclass(frozen=True)
class ToolEvent:
    """Server-side record of what ``count_slowly`` did, in order (``step`` is 1-based)."""

    kind: Literal["progress", "return"]
    step: int


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request the server answered, recorded when its response headers went out."""

    method: str
    path: str
    host: str | None
    session_id: str | None
    """``Mcp-Session-Id`` the request carried."""
    status: int
    content_type: str | None
    response_session_id: str | None
    """``Mcp-Session-Id`` the response carried."""
    headers: tuple[tuple[str, str], ...] = ()
    """Every request header (lowercase name, value): what reached the server, credentials
    included, so a demo or test can show what did not."""
    traceparent: str | None = None
    """The W3C ``traceparent`` the request carried (tracing through the sidecars)."""
    request_id: str | None = None
    """The ``X-Request-Id`` the request carried."""


def host_header_name(host: str) -> str:
    """``host`` as it appears in a ``Host`` header (IPv6 literals bracketed)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{address}]" if address.version == 6 else str(address)


def transport_security(allowed_hosts: Iterable[str] = ()) -> TransportSecuritySettings:
    """DNS-rebinding settings: loopback names plus ``allowed_hosts``, each with and without port.

    ``allowed_hosts`` are names as they appear in a ``Host`` header (``"10.0.0.5"``,
    ``"[fd00::1]"``, ``"math.mcp.svc"``); an entry with a port (``"10.0.0.5:8000"``) is taken as is.
    """
    names = list(dict.fromkeys([*_LOOPBACK_HOST_NAMES, *allowed_hosts]))
    hosts: list[str] = []
    origins: list[str] = []
    for name in names:
        has_port = name.rsplit("]", 1)[-1].count(":") == 1
        variants = [name] if has_port else [name, f"{name}:*"]
        hosts.extend(variants)
        origins.extend(f"{scheme}://{v}" for scheme in ("http", "https") for v in variants)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def build_mcp_server(
    tool_events: list[ToolEvent] | None = None,
    *,
    name: str = SERVER_NAME,
    tools: Collection[str] = TOOL_NAMES,
) -> MCPServer:
    """The demo server with its tools (all five, or those named in ``tools``: two demo servers
    with different tools stand behind one multiplexing endpoint); ``count_slowly`` appends to
    ``tool_events`` if given."""
    unknown = set(tools) - TOOL_NAMES
    if unknown:
        raise ValueError(f"unknown demo tools: {', '.join(sorted(unknown))}")
    mcp: MCPServer = MCPServer(
        name,
        version="0.1.0",
        instructions="Demo MCP server behind the SPIFFE mTLS sidecar mesh.",
    )

    def tool(description: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            if function.__name__ in tools:
                mcp.tool(description=description)(function)
            return function

        return register

    @tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        return a + b

    @tool(description="Multiply two numbers.")
    def multiply(a: float, b: float) -> float:
        return a * b

    @tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        return text

    @tool(description="Current UTC time in ISO 8601 format.")
    def get_time() -> str:
        return dt.datetime.now(dt.UTC).isoformat()

    @tool(
        description=(
            f"Send n progress notifications (1..n of n), `delay` seconds apart, then return. "
            f"0 <= n <= {MAX_COUNT}, 0 <= delay <= {MAX_DELAY}."
        )
    )
    async def count_slowly(n: int, delay: float, ctx: Context) -> str:
        if not 0 <= n <= MAX_COUNT:
            raise ToolError(f"n must be between 0 and {MAX_COUNT}")
        if not 0 <= delay <= MAX_DELAY:
            raise ToolError(f"delay must be between 0 and {MAX_DELAY} seconds")
        for step in range(1, n + 1):
            # A no-op unless the request carried a progressToken (the client asked for progress).
            await ctx.report_progress(step, n, f"step {step}/{n}")
            if tool_events is not None:
                tool_events.append(ToolEvent("progress", step))
            if step < n:
                await anyio.sleep(delay)
        if tool_events is not None:
            tool_events.append(ToolEvent("return", n))
        return f"counted to {n}"

    return mcp


class _RecordingApp:
    """ASGI wrapper: records each answered request and refuses new ones once shutdown began."""

    def __init__(self, app: ASGIApp, records: list[RequestRecord]) -> None:
        self._app = app
        self._records = records
        self.closing = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if self.closing:
            await PlainTextResponse("server shutting down", status_code=503)(scope, receive, send)
            return
        request_headers = Headers(scope=scope)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = Headers(raw=message.get("headers", []))
                self._records.append(
                    RequestRecord(
                        method=scope["method"],
                        path=scope["path"],
                        host=request_headers.get("host"),
                        session_id=request_headers.get("mcp-session-id"),
                        status=int(message["status"]),
                        content_type=response_headers.get("content-type"),
                        response_session_id=response_headers.get("mcp-session-id"),
                        headers=tuple(request_headers.items()),
                        traceparent=request_headers.get("traceparent"),
                        request_id=request_headers.get("x-request-id"),
                    )
                )
            await send(message)

        await self._app(scope, receive, recording_send)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn server that leaves signal handling to the embedding program."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class McpServerHandle:
    """A running demo server; ``close()`` ends all sessions and stops it (idempotent)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        requests: list[RequestRecord],
        tool_events: list[ToolEvent],
        recorder: _RecordingApp,
        server: _EmbeddedUvicorn,
        serve_task: asyncio.Task[None],
        sessions_task: asyncio.Task[None],
        stop_sessions: asyncio.Event,
    ) -> None:
        self.host = host
        self.port = port
        self.requests = requests
        """Every answered HTTP request, in the order the responses started."""
        self.tool_events = tool_events
        """What ``count_slowly`` did, in order (all calls, all sessions)."""
        self._recorder = recorder
        self._server = server
        self._serve_task = serve_task
        self._sessions_task = sessions_task
        self._stop_sessions = stop_sessions
        self._closed = False

    @property
    def url(self) -> str:
        """The MCP endpoint, e.g. ``http://127.0.0.1:8000/mcp``."""
        return f"http://{host_header_name(self.host)}:{self.port}{MCP_PATH}"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._recorder.closing = True
        # End the sessions first: that closes their open SSE responses (POST streams and the
        # standalone GET stream), so uvicorn's graceful shutdown below has nothing to wait for.
        self._stop_sessions.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._sessions_task, _SHUTDOWN_TIMEOUT)
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._serve_task), _SHUTDOWN_TIMEOUT)
        except TimeoutError:
            self._server.force_exit = True
            self._serve_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._serve_task

    async def __aenter__(self) -> McpServerHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_mcp(
    host: str = DEFAULT_HOST,
    port: int = 0,
    *,
    allowed_hosts: Sequence[str] = (),
    startup_timeout: float = 10.0,
    json_response: bool = False,
    middleware: Callable[[ASGIApp], ASGIApp] | None = None,
    mcp: MCPServer | None = None,
    name: str = SERVER_NAME,
    tools: Collection[str] = TOOL_NAMES,
) -> McpServerHandle:
    """Start the demo server in the running asyncio loop; ``port=0`` picks a free port.

    ``allowed_hosts`` extends the accepted ``Host`` names (see the module docstring); the bind
    ``host`` itself is always accepted unless it is a wildcard address. ``json_response`` makes
    the SDK answer POSTs with ``application/json`` instead of an SSE stream; ``middleware``
    wraps the app (e.g. Starlette's ``GZipMiddleware``). ``name`` and ``tools`` choose the demo
    server's name and tools; ``mcp`` serves another server than the demo's (its ``tool_events``
    then stay empty).
    """
    requests: list[RequestRecord] = []
    tool_events: list[ToolEvent] = []
    if mcp is None:
        mcp = build_mcp_server(tool_events, name=name, tools=tools)
    extra_hosts = list(allowed_hosts)
    if host not in ("0.0.0.0", "::", ""):  # noqa: S104 - comparing, not binding
        extra_hosts.insert(0, host_header_name(host))
    app = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        json_response=json_response,
        transport_security=transport_security(extra_hosts),
        host=host,
    )
    recorder = _RecordingApp(middleware(app) if middleware else app, requests)
    sock = _bind(host, port)
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        recorder,
        lifespan="off",  # the session manager's lifespan is run by `run_sessions` below
        log_config=None,
        access_log=False,
        ws="none",
        http="h11",
        timeout_graceful_shutdown=5,
    )
    server = _EmbeddedUvicorn(config)
    ready = asyncio.Event()
    stop_sessions = asyncio.Event()

    async def run_sessions() -> None:
        async with mcp.session_manager.run():
            ready.set()
            await stop_sessions.wait()

    sessions_task = asyncio.create_task(run_sessions(), name="mcp-demo-sessions")
    serve_task = asyncio.create_task(server.serve(sockets=[sock]), name="mcp-demo-uvicorn")
    handle = McpServerHandle(
        host=host,
        port=bound_port,
        requests=requests,
        tool_events=tool_events,
        recorder=recorder,
        server=server,
        serve_task=serve_task,
        sessions_task=sessions_task,
        stop_sessions=stop_sessions,
    )
    try:
        async with asyncio.timeout(startup_timeout):
            await ready.wait()
            while not server.started:
                if serve_task.done():
                    serve_task.result()  # raises what stopped it
                    raise RuntimeError("demo MCP server stopped during startup")
                await asyncio.sleep(0.01)
    except BaseException:
        await handle.close()
        sock.close()
        raise
    log.info("demo MCP server listening on %s", handle.url)
    return handle


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.demo.mcp_server",
        description="Demo MCP server (Streamable HTTP, stateful sessions).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    parser.add_argument("--name", default=SERVER_NAME, help="server name (default %(default)s)")
    parser.add_argument(
        "--tools",
        default=",".join(sorted(TOOL_NAMES)),
        help="comma-separated tools to serve (default: all of %(default)s)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="extra accepted Host header name (repeatable); loopback names are always accepted",
    )
    return parser


async def _run(args: argparse.Namespace) -> None:
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    handle = await serve_mcp(
        args.host, args.port, allowed_hosts=args.allowed_host, name=args.name, tools=tools
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {handle.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await handle.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_run(args))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
