"""Fixtures shared by the proxy tests (the mesh, its client and the MCP server are in
``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.proxy.issuer import Issuer
from tests.proxy.scripted_mcp import ScriptedMcp


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    """A token issuer (OIDC discovery and JWKS over HTTP on loopback): the users' identity
    provider."""
    server = await Issuer().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedMcp]:
    """The scripted, sloppy MCP server of ``tests.proxy.scripted_mcp`` (paginated lists, broken
    answers), recording what it received."""
    server = await ScriptedMcp().start()
    try:
        yield server
    finally:
        await server.close()
