"""Serving a test aiohttp app on 127.0.0.1 and a free port (issuer, upstreams, scripted servers)."""

from __future__ import annotations

import socket
from typing import Any

from aiohttp import web


async def serve_app(app: web.Application, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """The started runner and the port it listens on."""
    runner = web.AppRunner(app, access_log=None, **runner_options)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


def free_port() -> int:
    """A port free right now (for a listener whose URL must be known before it starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
