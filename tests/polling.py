"""Bounded polling for tests: wait until a condition holds where no event says so.

Every wait is bounded: a condition that never holds fails the test naming what was awaited,
instead of hanging it until pytest's own timeout.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import aiohttp
import pytest

WAIT = 15.0


async def until(
    predicate: Callable[[], object],
    what: str = "the condition",
    *,
    timeout: float = WAIT,
    interval: float = 0.02,
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until its result (awaited if it is
    awaitable) is truthy; fail the test after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                held = predicate()
                if inspect.isawaitable(held):
                    held = await held
                if held:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


async def until_ready(session: aiohttp.ClientSession, port: int, timeout: float = WAIT) -> None:
    """Wait until the admin listener on ``port`` answers ``/readyz`` with 200 (a sidecar
    process that is still starting refuses connections or answers 503)."""

    async def ready() -> bool:
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False

    await until(ready, f"/readyz on port {port}", timeout=timeout, interval=0.1)
