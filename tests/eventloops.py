"""The event loops the sidecar runs on (asyncio's and uvloop's), for tests that run a scenario on
each: ``asyncio.Runner(loop_factory=LOOPS[name])``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvloop

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
