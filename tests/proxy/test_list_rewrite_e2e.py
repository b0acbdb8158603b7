"""List filtering whatever the MCP server does with its answer: the official SDK server behind
Starlette's ``GZipMiddleware`` (JSON and SSE answers), servers that compress whatever the client
asked, and sloppy answers (unreadable codings, odd content types, altered ids) - behind a real
inbound sidecar with a reader/admin policy, listed by the official SDK client (which sends
``Accept-Encoding: gzip``). A reader sees only what it may use, or a clean ``MCPError``."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import TOOL_NAMES, serve_mcp
from tests.proxy.mesh import oauth_ingress

READER_TOOLS = ["echo", "get_time"]
POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {"name": "admins", "when": {"roles": ["admin"]}, "tools": ["*"]},
        {"name": "readers", "when": {"roles": ["reader"]}, "tools": READER_TOOLS},
    ],
}
MODES = [pytest.param(True, id="json"), pytest.param(False, id="sse")]


@dataclass
class Seen:
    """One POST as the MCP server's outermost layer saw it."""

    methods: list[str]
    accept_encoding: str | None
    content_encoding: str | None = None


@dataclass
class Observer:
    """ASGI middleware: records each POST's JSON-RPC methods, the ``Accept-Encoding`` it came
    with and the ``Content-Encoding`` of the answer that left the server."""

    seen: list[Seen] = field(default_factory=list)

    def wrap(self, app: ASGIApp) -> ASGIApp:
        async def observed(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            body = await _whole_body(receive)
            headers = dict((k.decode().lower(), v.decode()) for k, v in scope["headers"])
            seen = Seen(_methods(body), headers.get("accept-encoding"))
            self.seen.append(seen)

            async def send_seen(message: Message) -> None:
                if message["type"] == "http.response.start":
                    answer = {k.decode().lower(): v.decode() for k, v in message["headers"]}
                    seen.content_encoding = answer.get("content-encoding")
                await send(message)

            await app(scope, _replay(body, receive), send_seen)

        return observed

    def lists(self) -> list[Seen]:
        return [s for s in self.seen if "tools/list" in s.methods]


async def _whole_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        chunk: bytes = message.get("body", b"")
        body += chunk
        if not message.get("more_body"):
            return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then the real channel (which reports the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _methods(body: bytes) -> list[str]:
    try:
        value = json.loads(body)
    except ValueError:
        return []
    messages = value if isinstance(value, list) else [value]
    return [m["method"] for m in messages if isinstance(m, dict) and "method" in m]


def gzip_always(app: ASGIApp) -> ASGIApp:
    """A server that compresses whatever the client accepts (``Accept-Encoding`` overridden)."""

    async def forced(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
            scope = {**scope, "headers": [*headers, (b"accept-encoding", b"gzip")]}
        await app(scope, receive, send)

    return forced


def gzipped(app: ASGIApp) -> ASGIApp:
    """Starlette's GZipMiddleware, compressing SSE too (older Starlette did by default)."""
    return GZipMiddleware(app, minimum_size=1, exclude_content_types=())


Transform = Callable[[list[tuple[bytes, bytes]], bytes], tuple[list[tuple[bytes, bytes]], bytes]]


def sloppy(transform: Transform) -> Callable[[ASGIApp], ASGIApp]:
    """A server whose answers to ``tools/list`` are bent by ``transform(headers, body)``."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def bent(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["method"] != "POST":
                await app(scope, receive, send)
                return
            body = await _whole_body(receive)
            if "tools/list" not in _methods(body):
                await app(scope, _replay(body, receive), send)
                return
            start: Message = {}
            chunks: list[bytes] = []

            async def hold(message: Message) -> None:
                nonlocal start
                if message["type"] == "http.response.start":
                    start = message
                elif message["type"] == "http.response.body":
                    chunks.append(message.get("body", b""))

            await app(scope, _replay(body, receive), hold)
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers, answer = transform(headers, b"".join(chunks))
            headers.append((b"content-length", str(len(answer)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": answer})

        return bent

    return wrap


@contextlib.asynccontextmanager
async def ingress(
    *, json_response: bool, middleware: Callable[[ASGIApp], ASGIApp] | None = None
) -> AsyncIterator[tuple[str, Callable[[str], dict[str, str]], Observer, Callable[[], list[str]]]]:
    """The SDK server (wrapped in ``middleware``, observed from outside) behind an OAuth inbound
    sidecar with the reader/admin policy: (URL, headers for a role, observer, the log lines)."""
    observer = Observer()

    def wrap(app: ASGIApp) -> ASGIApp:
        return observer.wrap(middleware(app) if middleware else app)

    server = await serve_mcp("127.0.0.1", 0, json_response=json_response, middleware=wrap)
    try:
        async with oauth_ingress(server.port, mcp_policy=POLICY) as sidecar:
            yield sidecar.url, lambda role: sidecar.bearer(roles=[role]), observer, sidecar.lines
    finally:
        await server.close()


@pytest.mark.parametrize("json_response", MODES)
async def test_gzip_middleware_server_reader_sees_only_allowed_tools(json_response: bool) -> None:
    async with ingress(json_response=json_response, middleware=gzipped) as (url, role, seen, _):
        assert sorted(await mcp_client.list_tool_names(url, role("reader"))) == READER_TOOLS
        assert sorted(await mcp_client.list_tool_names(url, role("admin"))) == sorted(TOOL_NAMES)
        result = await mcp_client.call_tool(url, "echo", {"text": "hi" * 400}, role("admin"))
        assert result.text == "hi" * 400
    # List requests asked the server for no compression; other requests kept the client's
    # gzip, and their answers came back compressed through the sidecar, read by the SDK.
    assert seen.lists() and all(s.accept_encoding == "identity" for s in seen.lists())
    assert all(s.content_encoding is None for s in seen.lists())
    calls = [s for s in seen.seen if "tools/call" in s.methods]
    assert calls and all("gzip" in (s.accept_encoding or "") for s in calls)
    assert all(s.content_encoding == "gzip" for s in calls)


@pytest.mark.parametrize("json_response", MODES)
async def test_server_compressing_regardless_is_decoded_and_filtered(json_response: bool) -> None:
    middleware = lambda app: gzip_always(gzipped(app))  # noqa: E731
    async with ingress(json_response=json_response, middleware=middleware) as (url, role, seen, _):
        assert sorted(await mcp_client.list_tool_names(url, role("reader"))) == READER_TOOLS
        assert sorted(await mcp_client.list_tool_names(url, role("admin"))) == sorted(TOOL_NAMES)
    assert seen.lists() and all(s.content_encoding == "gzip" for s in seen.lists())


def _headers(
    pairs: list[tuple[bytes, bytes]], drop: bytes, *add: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in pairs if k.lower() != drop] + list(add)


def _coding(name: bytes) -> Transform:
    return lambda h, b: (_headers(h, b"content-encoding", (b"content-encoding", name)), b)


def _content_type(*values: bytes) -> Transform:
    return lambda h, b: (_headers(h, b"content-type", *((b"content-type", v) for v in values)), b)


def _stringified_id(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[Any, bytes]:
    return headers, re.sub(rb'"id":(\d+)', rb'"id":"\1"', body)


def _float_id(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[Any, bytes]:
    return headers, re.sub(rb'"id":(\d+)', rb'"id":\1.0', body)


def _duplicate_key(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[Any, bytes]:
    """Lax readers (pydantic, JavaScript) keep the last of duplicate keys: the full list."""
    return headers, body.replace(b'"result":{', b'"result":{"tools":[],', 1)


def _cut(headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[Any, bytes]:
    return headers, body[: body.rindex(b"}")]


SLOPPY: list[Any] = [
    pytest.param(_coding(b"br"), id="br"),
    pytest.param(_coding(b"zstd"), id="zstd"),
    pytest.param(_coding(b"gzip, gzip"), id="stacked"),
    pytest.param(_coding(b"gzip"), id="gzip-label-on-plain-bytes"),
    pytest.param(_content_type(), id="no-content-type"),
    pytest.param(_content_type(b"text/plain"), id="text-plain"),
    pytest.param(_content_type(b"application/octet-stream"), id="octet-stream"),
    pytest.param(_content_type(b"application/json", b"application/json"), id="duplicate-type"),
    pytest.param(_stringified_id, id="id-5-answered-as-string"),
    pytest.param(_float_id, id="id-5-answered-as-float"),
    pytest.param(_duplicate_key, id="duplicate-key"),
    pytest.param(_cut, id="cut-short"),
]


@pytest.mark.parametrize("json_response", MODES)
@pytest.mark.parametrize("transform", SLOPPY)
async def test_sloppy_list_answers_become_a_clean_sdk_error(
    json_response: bool, transform: Transform
) -> None:
    async with ingress(json_response=json_response, middleware=sloppy(transform)) as (
        url,
        role,
        seen,
        log,
    ):
        for who in ("reader", "admin"):
            with pytest.raises(MCPError, match="could not be filtered by policy") as raised:
                await mcp_client.list_tool_names(url, role(who), timeout=10)
            assert raised.value.error.code == -32603
        lines = [json.loads(line) for line in log() if '"mcp_audit"' not in line]
        assert any(line["reason"] == "unfilterable_list_response" for line in lines)
    assert seen.lists()
