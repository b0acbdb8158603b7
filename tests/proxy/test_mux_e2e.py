"""The official MCP SDK client, through ONE outbound route, uses two real MCP servers (official
SDK), each behind its own inbound sidecar with its own SPIFFE ID: lists, calls, SSE progress,
elicitation, resources and prompts; one server dies and comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sidecar.demo import mcp_client
from tests.proxy.muxmesh import MuxMesh, mux_mesh


@pytest.fixture
async def mesh() -> AsyncIterator[MuxMesh]:
    async with mux_mesh() as m:
        yield m


async def test_one_endpoint_lists_and_calls_both_servers(mesh: MuxMesh) -> None:
    names = await mcp_client.list_tool_names(mesh.url)
    assert sorted(names) == [
        "clock__echo",
        "clock__get_time",
        "math__add",
        "math__confirm",
        "math__echo",
        "math__wait_for_release",
    ]
    added = await mcp_client.call_tool(mesh.url, "math__add", {"a": 2, "b": 40})
    assert added.structured == {"result": 42}
    assert (await mcp_client.call_tool(mesh.url, "clock__echo", {"text": "hi"})).text == "clock: hi"
    assert (await mcp_client.call_tool(mesh.url, "math__echo", {"text": "hi"})).text == "math: hi"
