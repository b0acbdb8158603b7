"""Fixtures shared by test modules across packages (helpers that are not fixtures live in modules:
``tests/polling.py``, ``tests/processes.py``, ``tests/tlsharness.py``, ``tests/proxy/mesh.py``...).

A module that needs a variant defines a fixture of the same name, which wins there. The heavy
parts (the MCP SDK, the mesh, aiohttp) are imported inside the fixtures: this file is loaded for
every test run, and the pure unit tests should not pay for them.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sidecar.dev.devca import DevCA

if TYPE_CHECKING:
    import aiohttp

    from sidecar.demo.mcp_server import McpServerHandle
    from sidecar.demo.otlp_receiver import OtlpReceiver
    from tests.proxy.mesh import Mesh

TD = "example.org"
"""The trust domain of the shared dev CA (and of most tests)."""
WAIT = 15.0
"""Bound on every request of ``client``."""
START = 30.0
"""Bound on starting and on stopping a server of these fixtures (a shared, loaded machine)."""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A fresh directory with a short path for unix sockets (a socket path must stay under ~107
    bytes; pytest's ``tmp_path`` can be longer), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="t-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def ca() -> DevCA:
    """A dev CA (X.509 and JWT) for ``example.org``, one per test module."""
    return DevCA.generate(TD)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose every request is bounded by ``WAIT``."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


@pytest.fixture
async def mcp_server() -> AsyncIterator[McpServerHandle]:
    """The demo MCP server (official SDK, streamable HTTP) on a free loopback port."""
    from sidecar.demo.mcp_server import serve_mcp

    handle = await asyncio.wait_for(serve_mcp("127.0.0.1", 0), START)
    try:
        yield handle
    finally:
        await asyncio.wait_for(handle.close(), START)


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    """The default local mesh of ``tests.proxy.mesh.local_mesh`` (recording upstream)."""
    from tests.proxy.mesh import local_mesh

    async with local_mesh() as m:
        yield m


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    """An in-process OTLP/HTTP collector recording the spans it is sent."""
    from sidecar.demo.otlp_receiver import OtlpReceiver

    collector = await OtlpReceiver().start()
    try:
        yield collector
    finally:
        await collector.close()
