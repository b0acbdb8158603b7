"""Circuit breakers of the upstream pool (``sidecar.proxy.upstream``): thresholds, the queue of
requests waiting for a connection, and every slot given back on every path.

The upstreams are scripted (``tests.proxy.test_upstream``): an answer is held until the test
opens its gate, so "N requests in flight" is a fact the test waits for, never a timing guess.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest

from sidecar.config import CircuitBreakers
from sidecar.proxy.errors import UpstreamOverflow, UpstreamUnavailable
from sidecar.proxy.upstream import UpstreamPool, UpstreamResponse
from tests.polling import until
from tests.proxy.test_upstream import (
    HOST,
    WAIT,
    ScriptedUpstream,
    fetch,
    ok,
    pool_to,
    read_all,
    read_request,
    upstream,
)


class Gated:
    """A keep-alive upstream holding every answer until ``gate`` opens; then ``/reset`` is
    answered by resetting the connection, ``/close`` with ``Connection: close``, anything else
    with ``conn=<connection number>``. ``arrived`` counts the requests it has read."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrived = 0

    async def serve(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await read_request(reader)) is not None:
            self.arrived += 1
            line = request[0].split(b"\r\n", 1)[0]
            await self.gate.wait()
            if b" /reset " in line:
                writer.transport.abort()
                return
            if b" /close " in line:
                writer.write(ok(b"closing", "Connection: close"))
                await writer.drain()
                return
            writer.write(ok(b"conn=%d" % number))
            await writer.drain()

    async def until_arrived(self, count: int) -> None:
        await until(lambda: self.arrived >= count, f"{count} requests at the upstream")


def start(pool: UpstreamPool, target: str = "/") -> asyncio.Task[UpstreamResponse]:
    return asyncio.ensure_future(pool.request("GET", target, HOST, b"", head_timeout=WAIT))


async def busy_and_waiting(
    pool: UpstreamPool, gated: Gated, target: str = "/"
) -> tuple[asyncio.Task[UpstreamResponse], asyncio.Task[UpstreamResponse]]:
    """With one connection allowed: a request holding it (to ``target``, its answer held by
    the upstream) and one waiting for it."""
    busy = start(pool, target)
    await gated.until_arrived(1)
    waiting = start(pool)
    await until(lambda: pool.pending == 1)
    return busy, waiting


class Rig(NamedTuple):
    gated: Gated
    up: ScriptedUpstream
    pool: UpstreamPool
    overflows: list[str]
    """The limits the pool overflowed, in order."""


@contextlib.asynccontextmanager
async def gated_pool(breakers: CircuitBreakers, **options: Any) -> AsyncIterator[Rig]:
    """A ``Gated`` upstream and a pool to it with ``breakers``."""
    gated, overflows = Gated(), list[str]()
    async with (
        upstream(gated.serve) as up,
        pool_to(up.port, breakers=breakers, on_overflow=overflows.append, **options) as pool,
    ):
        yield Rig(gated, up, pool, overflows)


def assert_idle(pool: UpstreamPool) -> None:
    """Nothing in flight, nobody waiting: every slot was given back."""
    assert (pool.requests, pool.pending) == (0, 0)


async def test_max_requests_overflows_at_once_and_frees_on_release() -> None:
    async with gated_pool(CircuitBreakers(max_requests=3)) as rig:
        gated, up, pool, overflows = rig
        held = [start(pool) for _ in range(3)]
        await gated.until_arrived(3)
        for _ in range(2):
            with pytest.raises(UpstreamOverflow) as refused:
                await pool.request("GET", "/", HOST, b"", head_timeout=WAIT)
            assert refused.value.limit == "max_requests"
            assert refused.value.status == 503
            assert refused.value.to_json()["error"] == "upstream_overflow"
        assert overflows == ["max_requests", "max_requests"]
        assert gated.arrived == 3  # the refused requests sent nothing
        gated.gate.set()
        for task in held:
            response = await asyncio.wait_for(task, WAIT)
            await read_all(response)
            response.release()
        assert_idle(pool)
        assert pool.connections == 3  # kept idle, still counted
        gated.gate.clear()
        again = [start(pool) for _ in range(3)]  # the three slots are free again
        await gated.until_arrived(6)
        gated.gate.set()
        for task in again:
            (await asyncio.wait_for(task, WAIT)).release()
        assert up.accepts == 3 and len(overflows) == 2


async def test_a_request_waits_for_a_busy_connection_and_gets_it() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1, max_pending_requests=1)) as rig:
        gated, up, pool, overflows = rig
        first, second = await busy_and_waiting(pool, gated)
        with pytest.raises(UpstreamOverflow) as refused:
            await pool.request("GET", "/", HOST, b"", head_timeout=WAIT)
        assert refused.value.limit == "max_pending_requests"
        gated.gate.set()
        response = await asyncio.wait_for(first, WAIT)
        assert await read_all(response) == b"conn=0"
        response.release()  # handed straight to the waiting request
        response = await asyncio.wait_for(second, WAIT)
        assert await read_all(response) == b"conn=0"
        response.release()
        assert up.accepts == 1 and overflows == ["max_pending_requests"]
        assert_idle(pool)


async def test_no_pending_requests_means_overflow_when_every_connection_is_busy() -> None:
    async with gated_pool(CircuitBreakers(max_connections=2, max_pending_requests=0)) as rig:
        gated, _up, pool, overflows = rig
        held = [start(pool) for _ in range(2)]
        await gated.until_arrived(2)
        with pytest.raises(UpstreamOverflow):
            await pool.request("GET", "/", HOST, b"", head_timeout=WAIT)
        assert overflows == ["max_pending_requests"]
        gated.gate.set()
        for task in held:
            (await asyncio.wait_for(task, WAIT)).release()
        assert_idle(pool)


async def test_a_pending_request_waits_at_most_connect_timeout() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1), connect_timeout=0.05) as rig:
        gated, _up, pool, overflows = rig
        first = start(pool)
        await gated.until_arrived(1)
        with pytest.raises(UpstreamOverflow) as refused:
            await asyncio.wait_for(pool.request("GET", "/", HOST, b"", head_timeout=WAIT), WAIT)
        assert refused.value.limit == "max_connections"
        assert "connect_timeout" in refused.value.message
        assert overflows == ["max_connections"]
        assert (pool.requests, pool.pending) == (1, 0)  # only the first one is left
        gated.gate.set()
        (await asyncio.wait_for(first, WAIT)).release()
        assert_idle(pool)


async def test_a_waiting_client_that_goes_away_frees_its_place() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1, max_pending_requests=1)) as rig:
        gated, up, pool, _ = rig
        first, waiting = await busy_and_waiting(pool, gated)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (pool.requests, pool.pending) == (1, 0)
        replacement = start(pool)  # the freed place in the queue is usable
        await until(lambda: pool.pending == 1)
        gated.gate.set()
        (await asyncio.wait_for(first, WAIT)).release()
        response = await asyncio.wait_for(replacement, WAIT)
        assert await read_all(response) == b"conn=0"
        response.release()
        assert_idle(pool)
        assert up.accepts == 1


async def test_a_connection_handed_to_a_request_cancelled_meanwhile_is_not_lost() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1)) as rig:
        gated, up, pool, _ = rig
        first, waiting = await busy_and_waiting(pool, gated)
        gated.gate.set()
        response = await asyncio.wait_for(first, WAIT)
        await read_all(response)
        response.release()  # hands the connection to ``waiting``...
        waiting.cancel()  # ...which is cancelled before it could run
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert_idle(pool)
        _, body = await fetch(pool)  # the connection went back to the pool: reused
        assert body == b"conn=0" and up.accepts == 1
        assert pool.connections == 1


async def test_a_slot_handed_to_a_request_cancelled_meanwhile_is_not_lost() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1)) as rig:
        gated, _up, pool, _ = rig
        closing, waiting = await busy_and_waiting(pool, gated, "/close")
        gated.gate.set()
        response = await asyncio.wait_for(closing, WAIT)
        assert await read_all(response) == b"closing"
        response.release()  # not reusable: closed, its slot handed to ``waiting``...
        waiting.cancel()  # ...which is cancelled before it could open a connection
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert_idle(pool)
        assert pool.connections == 0
        _, body = await fetch(pool)  # the slot is usable
        assert body == b"conn=1"


async def test_an_upstream_failure_frees_the_request_and_connection_slots() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1, max_requests=2)) as rig:
        gated, up, pool, overflows = rig
        gated.gate.set()
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(start(pool, "/reset"), WAIT)
        assert_idle(pool)
        assert pool.connections == 0  # the broken connection's slot is free
        for _ in range(3):
            _, body = await fetch(pool)
            assert body == b"conn=1"
        assert overflows == [] and up.accepts == 2


async def test_a_failing_request_hands_its_connection_slot_to_a_waiting_one() -> None:
    async with gated_pool(CircuitBreakers(max_connections=1)) as rig:
        gated, up, pool, _ = rig
        failing, waiting = await busy_and_waiting(pool, gated, "/reset")
        gated.gate.set()
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(failing, WAIT)
        response = await asyncio.wait_for(waiting, WAIT)
        assert await read_all(response) == b"conn=1"  # a new connection in the freed slot
        response.release()
        assert_idle(pool)
        assert pool.connections == 1 and up.accepts == 2


async def test_a_connection_that_cannot_be_opened_frees_its_slot() -> None:
    async with upstream(Gated().serve) as up:
        port = up.port
    breakers = CircuitBreakers(max_connections=1, max_pending_requests=0)
    async with pool_to(port, breakers=breakers) as pool:  # nothing listens there any more
        for _ in range(3):  # each time the one slot is free again: refused, never overflow
            with pytest.raises(UpstreamUnavailable) as failed:
                await asyncio.wait_for(pool.request("GET", "/", HOST, b"", head_timeout=WAIT), WAIT)
            assert failed.value.reason == "upstream_connect_failed"
        assert_idle(pool)
        assert pool.connections == 0


async def test_waiting_requests_fail_when_the_pool_closes() -> None:
    gated = Gated()
    breakers = CircuitBreakers(max_connections=1)
    async with upstream(gated.serve) as up:
        pool = UpstreamPool("127.0.0.1", up.port, breakers=breakers)
        first, waiting = await busy_and_waiting(pool, gated)
        pool.close()
        with pytest.raises(UpstreamUnavailable):
            await asyncio.wait_for(waiting, WAIT)
        with pytest.raises(UpstreamUnavailable):  # its connection was closed under it
            await asyncio.wait_for(first, WAIT)
        gated.gate.set()  # let the scripted upstream end
