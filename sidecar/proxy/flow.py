"""Write-side flow control shared by our server and upstream protocols."""

from __future__ import annotations

import asyncio


class WriteFlow:
    """``pause_writing``/``resume_writing`` for an ``asyncio.Protocol``, and ``drain()`` to wait
    while the transport's buffer is over its high-water mark (``drain_lost`` wakes a waiter with
    an error when the connection goes away)."""

    _loop: asyncio.AbstractEventLoop
    _write_paused: bool = False
    _drain_waiter: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    def drain_lost(self, message: str) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError(message))
