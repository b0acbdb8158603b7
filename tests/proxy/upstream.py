"""A recording plain-HTTP upstream for proxy tests (stands in for the local MCP server)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.proxy.loopback import serve_app


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes


@dataclass
class RecordingUpstream:
    """Records every request; ``/sse`` streams two events with a gate between them."""

    requests: list[Seen] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    sse_cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> RecordingUpstream:
        app = web.Application()
        app.router.add_route("*", "/sse", self._sse)
        app.router.add_route("*", "/slow", self._slow)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner, self.port = await serve_app(app, handler_cancellation=True)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> Seen:
        headers: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        seen = Seen(request.method, request.raw_path, headers, await request.read())
        self.requests.append(seen)
        return seen

    async def _echo(self, request: web.Request) -> web.Response:
        seen = await self._record(request)
        payload: dict[str, Any] = {
            "method": seen.method,
            "path": seen.path,
            "headers": seen.headers,
            "body": seen.body.decode("utf-8", "replace"),
        }
        return web.json_response(payload, headers={"Mcp-Session-Id": "session-from-upstream"})

    async def _slow(self, request: web.Request) -> web.Response:
        await self._record(request)
        await self.gate.wait()
        return web.json_response({"slow": "done"})

    async def _sse(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b'data: {"n": 1}\n\n')
            await self.gate.wait()
            await response.write(b'data: {"n": 2}\n\n')
            await response.write_eof()
        except asyncio.CancelledError:
            self.sse_cancelled.set()
            raise
        return response


def json_body(text: str) -> Any:
    return json.loads(text)
