"""A scripted, sloppy MCP server (plain aiohttp) for the multiplexer's edge cases: paginated
tools, an answer that is not JSON, a JSON-RPC refusal with HTTP 403, a call that never ends,
no GET stream. It speaks just enough Streamable HTTP for that."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.proxy.loopback import serve_app

PAGES = {None: (["a1", "a2"], "p2"), "p2": (["a3"], None)}


@dataclass
class ScriptedMcp:
    port: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    slow_lists: bool = False
    """While set, tools/list never answers."""
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a notifications/cancelled arrives."""
    authorizations: list[str | None] = field(default_factory=list)
    """The ``Authorization`` header of every request (None: none)."""
    methods: list[str] = field(default_factory=list)
    """The HTTP method of every request."""
    _runner: web.AppRunner | None = None

    async def start(self) -> ScriptedMcp:
        app = web.Application()
        app.router.add_route("*", "/mcp", self._handle)
        self._runner, self.port = await serve_app(app, shutdown_timeout=0.1)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.authorizations.append(request.headers.get("Authorization"))
        self.methods.append(request.method)
        if request.method == "GET":
            return web.Response(status=405)
        if request.method == "DELETE":
            return web.Response(status=200)
        message = json.loads(await request.read())
        self.received.append(message)
        if "id" not in message:
            if message.get("method") == "notifications/cancelled":
                self.cancelled.set()
            return web.Response(status=202)
        method, rid = message.get("method"), message["id"]
        params = message.get("params") or {}
        result: dict[str, Any]
        if method == "initialize":
            result = {
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "0"},
            }
            return _json(rid, result, {"Mcp-Session-Id": "scripted-1"})
        if method == "tools/list":
            if self.slow_lists:
                await asyncio.sleep(3600)
            cursor = params.get("cursor")
            if cursor not in PAGES:
                return web.json_response(
                    {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "cursor"}}
                )
            names, next_cursor = PAGES[cursor]
            result = {"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in names]}
            if next_cursor:
                result["nextCursor"] = next_cursor
            return _json(rid, result)
        if method == "tools/call" and params.get("name") == "garbled":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n')
            await response.write(
                b'data: {"jsonrpc":"2.0","id":'
                + json.dumps(rid).encode()
                + b',"result":{"content":[],"x":1,"x":2}}\n\n'
            )
            await response.write_eof()
            return response
        if method == "tools/call" and params.get("name") in ("linked", "escaped"):
            key = "uri" if params["name"] == "linked" else "\\u0075ri"
            head = '{"jsonrpc":"2.0","id":' + json.dumps(rid)
            body = head + ',"result":{"content":[{"type":"resource_link","name":"n","'
            body += key + '":"memo://x"}]}}'
            return web.Response(body=body.encode(), content_type="application/json")
        if method == "tools/call" and params.get("name") == "cancellable":
            # progress, then (once cancelled) the end of the stream without a response
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(
                b'data: {"jsonrpc":"2.0","method":"notifications/progress",'
                b'"params":{"progressToken":1,"progress":1}}\n\n'
            )
            await self.cancelled.wait()
            await response.write_eof()
            return response
        if method == "tools/call" and params.get("name") == "denied":
            refusal = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32001, "message": "nope"}}
            return web.json_response(refusal, status=403)
        if method == "tools/call" and params.get("name") == "forever":
            await asyncio.sleep(3600)
        return web.json_response(
            {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no"}}
        )


def _json(rid: Any, result: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": rid, "result": result}, headers=headers)
