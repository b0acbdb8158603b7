"""The official MCP SDK client -> outbound sidecar -> mTLS -> inbound sidecar -> a real MCP
server (official SDK), over Streamable HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, TOOL_NAMES, McpServerHandle
from tests.proxy.mesh import Mesh, local_mesh, outbound_config, proxy_outbound_config


@pytest.fixture
async def mesh(mcp_server: McpServerHandle) -> AsyncIterator[Mesh]:
    async with local_mesh(upstream_port=mcp_server.port) as m:
        yield m


def url(mesh: Mesh) -> str:
    return f"{mesh.outbound_url}/math{MCP_PATH}"


async def test_initialize_list_and_call_tools(mesh: Mesh, mcp_server: McpServerHandle) -> None:
    assert set(await mcp_client.list_tool_names(url(mesh))) == set(TOOL_NAMES)
    result = await mcp_client.call_tool(url(mesh), "add", {"a": 2, "b": 40})
    assert not result.is_error and result.structured == {"result": 42}
    echoed = await mcp_client.call_tool(url(mesh), "echo", {"text": "über mTLS"})
    assert echoed.text == "über mTLS"
    # Every request reached the MCP server with the Host rewritten to its own address.
    assert mcp_server.requests and {r.host for r in mcp_server.requests} == {
        f"127.0.0.1:{mcp_server.port}"
    }


async def test_progress_notifications_stream_before_the_result(
    mesh: Mesh, mcp_server: McpServerHandle
) -> None:
    first_seen_before_return: list[bool] = []

    def on_progress(event: mcp_client.ProgressEvent) -> None:
        if event.seq == 0:
            first_seen_before_return.append(
                not any(e.kind == "return" for e in mcp_server.tool_events)
            )

    result, events = await mcp_client.call_with_progress(
        url(mesh), "count_slowly", {"n": 3, "delay": 0.2}, on_progress=on_progress
    )
    assert result.text == "counted to 3"
    assert [e.progress for e in events] == [1, 2, 3]
    # The first event reached the client (through both sidecars) while the tool was still
    # running: the SSE response was not buffered anywhere.
    assert first_seen_before_return == [True]
    assert all(e.before_result for e in events)


async def test_get_stream_and_delete_keep_the_session_id(
    mesh: Mesh, mcp_server: McpServerHandle
) -> None:
    life = await mcp_client.session_lifecycle(url(mesh))
    assert life.get_stream.status == 200
    assert (life.get_stream.content_type or "").startswith("text/event-stream")
    assert life.get_stream.request_session_id == life.session_id
    assert life.delete is not None and life.delete.status == 200
    assert life.delete.request_session_id == life.session_id
    # The server saw exactly the session id the client sent, on GET and DELETE alike.
    by_method = {
        r.method: r.session_id for r in mcp_server.requests if r.method in ("GET", "DELETE")
    }
    assert by_method == {"GET": life.session_id, "DELETE": life.session_id}
    after = await mcp_client.post_raw(
        url(mesh), {"jsonrpc": "2.0", "id": 9, "method": "ping"}, session_id=life.session_id
    )
    assert after.status == 404  # the DELETE really ended the session upstream


async def test_rogue_workload_is_refused_by_the_mesh(
    mesh: Mesh, mcp_server: McpServerHandle
) -> None:
    rogue = await mesh.sidecar(outbound_config(mesh.sockets["rogue"], mesh.inbound_port))
    rogue_url = f"http://127.0.0.1:{rogue.port('outbound')}/math{MCP_PATH}"
    with pytest.raises(ExceptionGroup):  # the SDK surfaces the 403 as MCPError in a group
        await mcp_client.list_tool_names(rogue_url, timeout=10)
    raw = await mcp_client.post_raw(rogue_url, {"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert raw.status == 403 and '"not_allowlisted"' in raw.body
    assert mcp_server.requests == []


async def test_official_client_through_the_outbound_as_its_http_proxy(
    mesh: Mesh, mcp_server: McpServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent keeps its ordinary URL and only sets HTTP_PROXY (the SDK's HTTP client reads
    it): the outbound routes http://math.local/mcp by its host and upgrades it to mTLS."""
    proxy = await mesh.sidecar(proxy_outbound_config(mesh.sockets["agent"], mesh.inbound_port))
    for name in ("NO_PROXY", "no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port('outbound')}")
    ordinary_url = f"http://math.local{MCP_PATH}"
    assert set(await mcp_client.list_tool_names(ordinary_url)) == set(TOOL_NAMES)
    result = await mcp_client.call_tool(ordinary_url, "add", {"a": 2, "b": 40})
    assert result.structured == {"result": 42}
    assert {r.host for r in mcp_server.requests} == {f"127.0.0.1:{mcp_server.port}"}
