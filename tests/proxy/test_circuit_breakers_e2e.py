"""Circuit breakers through real sidecars: agent -> outbound -> mTLS -> inbound -> a slow upstream.

The upstream holds every answer until the test opens its gate (``Gated``), so "N requests in
flight" is something the test waits for; what overflows is then answered at once, while the N
are still held. Each path that gives a slot back is exercised: a finished answer, an upstream
failure, a client that goes away (waiting for an answer, waiting for a connection, or holding an
SSE stream).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from sidecar.proxy.upstream import UpstreamPool
from sidecar.runtime import Sidecar
from tests.polling import until
from tests.proxy.mesh import WAIT, Mesh, local_mesh
from tests.proxy.test_upstream import upstream
from tests.proxy.test_upstream_breakers import Gated

Answer = tuple[int, dict[str, str], bytes]


async def get(client: aiohttp.ClientSession, url: str) -> Answer:
    async with client.get(url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def overflows(sidecar: Sidecar, direction: str, route: str, limit: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "mcp_sidecar_upstream_overflow_total",
        {"direction": direction, "route": route, "limit": limit},
    )
    return value or 0.0


def assert_overflow(answer: Answer, limit: str) -> None:
    status, headers, body = answer
    assert status == 503
    assert headers["X-Envoy-Overloaded"] == "true"
    refusal = json.loads(body)
    assert refusal["error"] == "upstream_overflow" and refusal["limit"] == limit


def route_pool(mesh: Mesh) -> UpstreamPool:
    assert mesh.agent.outbound is not None
    return mesh.agent.outbound.pools["math"]


def reasons(lines: list[str]) -> list[str | None]:
    return [json.loads(line).get("reason") for line in lines]


async def test_requests_over_max_requests_get_503_at_once_and_are_counted(
    client: aiohttp.ClientSession,
) -> None:
    gated, limit, extra = Gated(), 3, 2
    async with (
        upstream(gated.serve) as up,
        local_mesh(
            upstream_port=up.port, route={"circuit_breakers": {"max_requests": limit}}
        ) as mesh,
    ):
        url = f"{mesh.outbound_url}/math/mcp"
        held = [asyncio.ensure_future(get(client, url)) for _ in range(limit)]
        await gated.until_arrived(limit)
        refused = await asyncio.gather(*(get(client, url) for _ in range(extra)))
        assert not any(task.done() for task in held)  # answered while the N are still held
        for answer in refused:
            assert_overflow(answer, "max_requests")
        assert gated.arrived == limit  # nothing of the refused requests went upstream
        assert overflows(mesh.agent, "outbound", "math", "max_requests") == extra
        assert reasons(mesh.agent_lines()).count("upstream_overflow") == extra
        gated.gate.set()
        assert [status for status, _, _ in await asyncio.gather(*held)] == [200] * limit

        gated.gate.clear()  # every slot was given back: N can be in flight again
        again = [asyncio.ensure_future(get(client, url)) for _ in range(limit)]
        await gated.until_arrived(2 * limit)
        gated.gate.set()
        assert [status for status, _, _ in await asyncio.gather(*again)] == [200] * limit
        assert overflows(mesh.agent, "outbound", "math", "max_requests") == extra
        assert (route_pool(mesh).requests, route_pool(mesh).pending) == (0, 0)


async def test_clients_that_go_away_give_their_slots_back(client: aiohttp.ClientSession) -> None:
    gated = Gated()
    breakers = {"max_connections": 1, "max_pending_requests": 1, "max_requests": 2}
    async with (
        upstream(gated.serve) as up,
        local_mesh(upstream_port=up.port, route={"circuit_breakers": breakers}) as mesh,
    ):
        url = f"{mesh.outbound_url}/math/mcp"
        pool = route_pool(mesh)
        in_flight = asyncio.ensure_future(get(client, url))
        await gated.until_arrived(1)
        waiting = asyncio.ensure_future(get(client, url))
        await until(lambda: pool.pending == 1)
        assert_overflow(await get(client, url), "max_requests")
        for task in (waiting, in_flight):  # one waits for a connection, one for its answer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await until(lambda: (pool.requests, pool.pending) == (0, 0))

        first = asyncio.ensure_future(get(client, url))
        await gated.until_arrived(2)
        second = asyncio.ensure_future(get(client, url))
        await until(lambda: pool.pending == 1)
        gated.gate.set()
        assert [a[0] for a in await asyncio.gather(first, second)] == [200, 200]
        assert overflows(mesh.agent, "outbound", "math", "max_requests") == 1
        assert overflows(mesh.agent, "outbound", "math", "max_pending_requests") == 0


async def test_inbound_breaker_frees_slots_after_upstream_failures(
    client: aiohttp.ClientSession,
) -> None:
    gated, limit = Gated(), 2
    async with (
        upstream(gated.serve) as up,
        local_mesh(
            upstream_port=up.port, inbound={"circuit_breakers": {"max_requests": limit}}
        ) as mesh,
    ):
        gated.gate.set()
        url = f"{mesh.outbound_url}/math"
        failed = await asyncio.gather(*(get(client, f"{url}/reset") for _ in range(limit)))
        assert [status for status, _, _ in failed] == [502] * limit
        gated.gate.clear()
        held = [asyncio.ensure_future(get(client, f"{url}/mcp")) for _ in range(limit)]
        await gated.until_arrived(2 * limit)  # both slots were free again
        assert_overflow(await get(client, f"{url}/mcp"), "max_requests")  # passed on unchanged
        assert overflows(mesh.server, "inbound", "local", "max_requests") == 1
        assert overflows(mesh.agent, "outbound", "math", "max_requests") == 0
        gated.gate.set()
        assert [status for status, _, _ in await asyncio.gather(*held)] == [200] * limit


async def test_an_sse_stream_holds_its_slot_until_the_client_leaves(
    client: aiohttp.ClientSession,
) -> None:
    route: dict[str, Any] = {"circuit_breakers": {"max_requests": 1}}
    async with local_mesh(route=route) as mesh:
        url = f"{mesh.outbound_url}/math"
        resp = await client.get(f"{url}/sse")
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT)
        assert first == b'data: {"n": 1}\n\n'
        assert_overflow(await get(client, f"{url}/mcp"), "max_requests")  # the stream holds it
        resp.close()  # the client leaves the open stream
        await until(lambda: route_pool(mesh).requests == 0)
        status, _, _ = await get(client, f"{url}/mcp")
        assert status == 200


async def test_default_breakers_leave_room_for_long_lived_streams(
    client: aiohttp.ClientSession,
) -> None:
    """Normal use - a few sessions, each with its GET stream open - is far below the defaults:
    calls still go through while the streams stay open."""
    async with local_mesh() as mesh:
        url = f"{mesh.outbound_url}/math"
        streams = [await client.get(f"{url}/sse") for _ in range(8)]
        for resp in streams:
            assert await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT)
        answers = await asyncio.gather(*(get(client, f"{url}/mcp") for _ in range(16)))
        assert [status for status, _, _ in answers] == [200] * 16
        assert route_pool(mesh).requests == len(streams)
        mesh.upstream.gate.set()
        for resp in streams:
            assert await asyncio.wait_for(resp.read(), WAIT) == b'data: {"n": 2}\n\n'
            resp.release()
