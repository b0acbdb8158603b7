"""The demo MCP server and client (official MCP SDK, Streamable HTTP), talking directly."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal

import pytest

from sidecar.demo import mcp_client
from sidecar.demo.mcp_client import ProgressEvent
from sidecar.demo.mcp_server import MCP_PATH, TOOL_NAMES, McpServerHandle, ToolEvent
from tests.processes import DEVNULL, running_module

TIMEOUT = 30.0

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test-client", "version": "0"},
    },
}
PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


async def test_serves_on_ephemeral_loopback_port(mcp_server: McpServerHandle) -> None:
    assert mcp_server.port > 0
    assert mcp_server.url == f"http://127.0.0.1:{mcp_server.port}{MCP_PATH}"


async def test_initialize_and_list_tools(mcp_server: McpServerHandle) -> None:
    names = await asyncio.wait_for(mcp_client.list_tool_names(mcp_server.url), TIMEOUT)
    assert sorted(names) == sorted(TOOL_NAMES)
    assert set(names) == {"add", "multiply", "echo", "get_time", "count_slowly"}


async def test_add_multiply_echo(mcp_server: McpServerHandle) -> None:
    added = await asyncio.wait_for(
        mcp_client.call_tool(mcp_server.url, "add", {"a": 2, "b": 3.5}), TIMEOUT
    )
    assert not added.is_error
    assert added.structured == {"result": 5.5}
    assert added.text == "5.5"

    product = await asyncio.wait_for(
        mcp_client.call_tool(mcp_server.url, "multiply", {"a": 4, "b": -2.5}), TIMEOUT
    )
    assert product.structured == {"result": -10.0}

    text = "héllo, mesh ✓ {json} <tags>"
    echoed = await asyncio.wait_for(
        mcp_client.call_tool(mcp_server.url, "echo", {"text": text}), TIMEOUT
    )
    assert echoed.text == text
    assert echoed.structured == {"result": text}


async def test_get_time_is_utc_iso_at_call_time(mcp_server: McpServerHandle) -> None:
    before = dt.datetime.now(dt.UTC)
    result = await asyncio.wait_for(mcp_client.call_tool(mcp_server.url, "get_time", {}), TIMEOUT)
    after = dt.datetime.now(dt.UTC)
    stamp = dt.datetime.fromisoformat(result.text)
    assert stamp.utcoffset() == dt.timedelta(0)
    assert before <= stamp <= after


async def test_tool_error_comes_back_as_error_result(mcp_server: McpServerHandle) -> None:
    result = await asyncio.wait_for(
        mcp_client.call_tool(mcp_server.url, "count_slowly", {"n": -1, "delay": 0}), TIMEOUT
    )
    assert result.is_error
    assert "n must be between 0 and" in result.text


async def test_progress_arrives_over_sse_before_the_tool_returns(
    mcp_server: McpServerHandle,
) -> None:
    # What the server-side tool had done at the moment each progress event reached the client.
    server_state_at_arrival: list[list[ToolEvent]] = []

    def on_progress(_event: ProgressEvent) -> None:
        server_state_at_arrival.append(list(mcp_server.tool_events))

    result, events = await asyncio.wait_for(
        mcp_client.call_with_progress(
            mcp_server.url, "count_slowly", {"n": 3, "delay": 0.3}, on_progress=on_progress
        ),
        TIMEOUT,
    )

    assert result.text == "counted to 3"
    assert [(e.seq, e.progress, e.total, e.message) for e in events] == [
        (0, 1.0, 3.0, "step 1/3"),
        (1, 2.0, 3.0, "step 2/3"),
        (2, 3.0, 3.0, "step 3/3"),
    ]
    assert all(e.before_result for e in events)
    assert [e.arrived_at for e in events] == sorted(e.arrived_at for e in events)
    # The first notification reached the client while the tool was still running: streamed, not
    # buffered until the tool finished.
    assert ToolEvent("return", 3) not in server_state_at_arrival[0]
    assert mcp_server.tool_events[-1] == ToolEvent("return", 3)
    # ... and it travelled on the tools/call POST's SSE response.
    call_posts = [r for r in mcp_server.requests if r.method == "POST" and r.session_id is not None]
    assert call_posts
    assert all(r.content_type == "text/event-stream" for r in call_posts if r.status == 200)


async def test_get_stream_opened_and_delete_ends_session(mcp_server: McpServerHandle) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with mcp_client.open_session(mcp_server.url) as session:
            get_stream = await session.wait_get_stream()
            session_id = session.session_id
            assert session_id
            assert get_stream.status == 200
            assert (get_stream.content_type or "").startswith("text/event-stream")
            assert get_stream.request_session_id == session_id
            live = await mcp_client.post_raw(mcp_server.url, PING, session_id=session_id)
            assert live.status == 200
        deletes = [e for e in session.exchanges if e.method == "DELETE"]
        assert [(d.status, d.request_session_id) for d in deletes] == [(200, session_id)]

        after = await mcp_client.post_raw(mcp_server.url, PING, session_id=session_id)

    assert after.status == 404
    assert json.loads(after.body)["error"]["message"] == "Session not found"
    seen = [(r.method, r.status) for r in mcp_server.requests if r.session_id == session_id]
    assert ("GET", 200) in seen
    assert seen[-2:] == [("DELETE", 200), ("POST", 404)]


async def test_session_lifecycle_helper(mcp_server: McpServerHandle) -> None:
    lifecycle = await asyncio.wait_for(mcp_client.session_lifecycle(mcp_server.url), TIMEOUT)
    assert lifecycle.get_stream.status == 200
    assert lifecycle.get_stream.request_session_id == lifecycle.session_id
    assert lifecycle.delete is not None
    assert lifecycle.delete.status == 200
    assert lifecycle.delete.request_session_id == lifecycle.session_id
    server_ids = {r.response_session_id for r in mcp_server.requests if r.response_session_id}
    assert server_ids == {lifecycle.session_id}


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:15001", "127.0.0.1"])
async def test_rewritten_loopback_host_is_accepted(mcp_server: McpServerHandle, host: str) -> None:
    # A sidecar forwards with Host rewritten to the upstream's host:port, which need not be the
    # port the server really listens on.
    response = await asyncio.wait_for(
        mcp_client.post_raw(mcp_server.url, INITIALIZE, headers={"host": host}), TIMEOUT
    )
    assert response.status == 200
    assert response.session_id
    assert mcp_server.requests[-1].host == host


async def test_foreign_host_and_origin_are_rejected(mcp_server: McpServerHandle) -> None:
    bad_host = await asyncio.wait_for(
        mcp_client.post_raw(mcp_server.url, INITIALIZE, headers={"host": "evil.example:8000"}),
        TIMEOUT,
    )
    assert bad_host.status == 421
    bad_origin = await asyncio.wait_for(
        mcp_client.post_raw(mcp_server.url, INITIALIZE, headers={"origin": "http://evil.example"}),
        TIMEOUT,
    )
    assert bad_origin.status == 403


async def test_auto_mode_uses_stateless_2026_protocol(mcp_server: McpServerHandle) -> None:
    result, events = await asyncio.wait_for(
        mcp_client.call_with_progress(
            mcp_server.url, "count_slowly", {"n": 2, "delay": 0.05}, mode="auto"
        ),
        TIMEOUT,
    )
    assert result.text == "counted to 2"
    assert [e.progress for e in events] == [1.0, 2.0]
    assert {r.method for r in mcp_server.requests} == {"POST"}
    assert all(r.session_id is None and r.response_session_id is None for r in mcp_server.requests)


async def test_module_main_serves_until_sigterm() -> None:
    async with running_module("sidecar.demo.mcp_server", "--port", "0", stderr=DEVNULL) as proc:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode().strip()
        assert line.startswith("ready http://127.0.0.1:")
        url = line.removeprefix("ready ")
        assert url.endswith(MCP_PATH)
        result = await asyncio.wait_for(mcp_client.call_tool(url, "add", {"a": 1, "b": 2}), TIMEOUT)
        assert result.structured == {"result": 3.0}
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
