"""Rotation under load: a 4 s X.509 TTL (rotation every 2 s on both sidecars) while a client
keeps sending requests through both sidecars: not a single request may fail."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import aiohttp

from tests.proxy.mesh import local_mesh

MIN_REQUESTS = 2000
MIN_ROTATIONS = 3
CONCURRENCY = 8
LOOP_LIMIT_SECONDS = 120


async def test_zero_failures_across_rotations() -> None:
    async with local_mesh(x509_ttl=dt.timedelta(seconds=4)) as mesh:
        server_source, agent_source = mesh.server.source, mesh.agent.source
        assert server_source is not None and agent_source is not None
        statuses: Counter[int | str] = Counter()
        server_serials: set[int] = set()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOOP_LIMIT_SECONDS

        def enough() -> bool:
            return (
                sum(statuses.values()) >= MIN_REQUESTS
                and server_source.rotations >= MIN_ROTATIONS
                and agent_source.rotations >= MIN_ROTATIONS
            )

        async def worker(session: aiohttp.ClientSession) -> None:
            while not done.is_set() and loop.time() < deadline:
                try:
                    async with session.post(
                        f"{mesh.outbound_url}/math/mcp",
                        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                    ) as resp:
                        await resp.read()
                        statuses[resp.status] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1
                server_serials.add(mesh.server.tls.snapshot.svid.serial_number)
                if enough():
                    done.set()

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))

        assert enough(), f"loop limit reached: {statuses}, rotations {server_source.rotations}"
        assert set(statuses) == {200}, statuses
        assert len(server_serials) >= MIN_ROTATIONS + 1
        assert len(mesh.upstream.requests) == sum(statuses.values())
