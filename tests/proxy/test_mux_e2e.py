"""The official MCP SDK client, through ONE outbound route, uses two real MCP servers (official
SDK), each behind its own inbound sidecar with its own SPIFFE ID: lists, calls, SSE progress,
elicitation, resources and prompts; one server dies and comes back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import MCPError
from mcp.types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    ListRootsResult,
    Root,
    TextContent,
    TextResourceContents,
)
from pydantic import FileUrl

from sidecar.demo import mcp_client
from sidecar.mcp.mux.merge import AMBIGUOUS_META, UNAVAILABLE_META
from sidecar.proxy.mux import TARGET_UNAVAILABLE
from tests.polling import until
from tests.proxy.muxmesh import MuxMesh, mux_mesh


@pytest.fixture
async def mesh() -> AsyncIterator[MuxMesh]:
    async with mux_mesh() as m:
        yield m


async def test_one_endpoint_lists_and_calls_both_servers(mesh: MuxMesh) -> None:
    names = await mcp_client.list_tool_names(mesh.url)
    assert sorted(names) == [
        "clock__ask_model",
        "clock__echo",
        "clock__get_time",
        "clock__roots",
        "math__add",
        "math__announce",
        "math__confirm",
        "math__echo",
        "math__wait_for_release",
    ]
    added = await mcp_client.call_tool(mesh.url, "math__add", {"a": 2, "b": 40})
    assert added.structured == {"result": 42}
    assert (await mcp_client.call_tool(mesh.url, "clock__echo", {"text": "hi"})).text == "clock: hi"
    assert (await mcp_client.call_tool(mesh.url, "math__echo", {"text": "hi"})).text == "math: hi"


async def test_progress_is_streamed_not_buffered(mesh: MuxMesh) -> None:
    # The tool reports progress, then waits on the gate that this callback opens: the call can
    # only complete if the first progress event crossed both sidecars while the tool was running.
    seen_while_waiting: list[bool] = []

    def on_progress(event: mcp_client.ProgressEvent) -> None:
        if event.seq == 0:
            seen_while_waiting.append(not mesh.gate.is_set())
            mesh.gate.set()

    result, events = await mcp_client.call_with_progress(
        mesh.url, "math__wait_for_release", {}, on_progress=on_progress, timeout=15
    )
    assert result.text == "released"
    assert seen_while_waiting == [True]
    assert [e.progress for e in events] == [1, 2]


async def test_a_cancelled_call_is_cancelled_at_its_target(mesh: MuxMesh) -> None:
    progressed = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    async with mcp_client.open_session(mesh.url) as s:
        call = asyncio.create_task(
            s.client.call_tool("math__wait_for_release", {}, progress_callback=on_progress)
        )
        async with asyncio.timeout(10):
            await progressed.wait()
            call.cancel()  # the SDK sends notifications/cancelled for the request's id
            with contextlib.suppress(asyncio.CancelledError):
                await call
            await until(lambda: "math.wait_for_release cancelled" in mesh.calls, "the cancel")
        added = await s.client.call_tool("math__add", {"a": 1, "b": 1})
        assert added.structured_content == {"result": 2}
    failures = [
        sample
        for family in mesh.agent.metrics.registry.collect()
        if family.name == "mcp_sidecar_mux_target_failures"
        for sample in family.samples
    ]
    assert failures == []  # a cancelled call is no failure of its target


async def test_elicitation_round_trip(mesh: MuxMesh) -> None:
    asked: list[str] = []

    async def elicit(context: Any, params: ElicitRequestParams) -> ElicitResult:
        asked.append(params.message)
        return ElicitResult(action="accept", content={"ok": True})

    async with mcp_client.open_session(mesh.url, elicitation_callback=elicit) as s:
        result = await s.client.call_tool("math__confirm", {"question": "Proceed?"})
        echoed = await s.client.call_tool("clock__echo", {"text": "still here"})
    assert asked == ["Proceed?"]
    assert [c.text for c in result.content if isinstance(c, TextContent)] == ["accepted: ok=True"]
    assert [c.text for c in echoed.content if isinstance(c, TextContent)] == ["clock: still here"]


# sampling and roots are deprecated in the 2026-07-28 protocol; the SDK warns even in a
# 2025-11-25 session
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_sampling_and_roots_are_relayed(mesh: MuxMesh) -> None:
    async def sample(context: Any, params: CreateMessageRequestParams) -> CreateMessageResult:
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text="42"), model="test"
        )

    async def roots(context: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=FileUrl("file:///work"))])

    async with mcp_client.open_session(
        mesh.url, sampling_callback=sample, list_roots_callback=roots
    ) as s:
        await s.wait_get_stream()  # roots/list comes on the GET stream (no related request)
        asked = await s.client.call_tool("clock__ask_model", {"question": "meaning of life?"})
        listed = await s.client.call_tool("clock__roots", {})
    assert asked.structured_content == {"result": "42"}
    assert listed.structured_content == {"result": "file:///work"}


def text_of(content: object) -> str:
    """The text of a resource or prompt content, which must be text."""
    assert isinstance(content, TextResourceContents | TextContent), content
    return content.text


async def test_resources_and_prompts_of_both_servers(mesh: MuxMesh) -> None:
    async with mcp_client.open_session(mesh.url) as s:
        resources = (await s.client.list_resources()).resources
        assert sorted(str(r.uri) for r in resources) == ["clock+memo://notes", "math+memo://notes"]
        read = await s.client.read_resource("clock+memo://notes")
        assert [(str(c.uri), text_of(c)) for c in read.contents] == [
            ("clock+memo://notes", "UTC, CET")
        ]
        templates = (await s.client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["math+memo://topics/{topic}"]
        topic = await s.client.read_resource("math+memo://topics/pi")
        assert [text_of(c) for c in topic.contents] == ["all about pi"]
        prompts = (await s.client.list_prompts()).prompts
        assert sorted(p.name for p in prompts) == ["clock__schedule", "math__explain"]
        prompt = await s.client.get_prompt("clock__schedule", {"day": "monday"})
        assert [text_of(m.content) for m in prompt.messages] == ["Plan monday."]
        with pytest.raises(MCPError) as unknown:
            await s.client.read_resource("paint+memo://notes")
        assert "names no target" in unknown.value.error.message


async def test_list_changed_reaches_the_clients_get_stream(mesh: MuxMesh) -> None:
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        if getattr(message, "method", None) == "notifications/tools/list_changed":
            changed.set()

    async with mcp_client.open_session(mesh.url, message_handler=on_message) as s:
        await s.wait_get_stream()
        # a target's own notification, on its GET stream, merged into the client's
        await s.client.call_tool("math__announce", {})
        async with asyncio.timeout(10):
            await changed.wait()
        changed.clear()
        # and the endpoint's own, when a target goes away
        await mesh.stop_server("clock")
        with pytest.raises(MCPError):
            await s.client.call_tool("clock__get_time", {})
        async with asyncio.timeout(10):
            await changed.wait()


async def test_get_stream_and_delete_reach_every_target(mesh: MuxMesh) -> None:
    life = await mcp_client.session_lifecycle(mesh.url)
    assert life.get_stream.status == 200
    assert (life.get_stream.content_type or "").startswith("text/event-stream")
    assert life.delete is not None and life.delete.status == 200
    for name in ("math", "clock"):
        seen = mesh.servers[name].requests
        # each server got its own session: a GET stream and, at the end, a DELETE of it
        target_session = next(r.response_session_id for r in seen if r.response_session_id)
        assert target_session != life.session_id
        assert any(r.method == "GET" and r.session_id == target_session for r in seen)
        deletes = [r for r in seen if r.method == "DELETE" and r.session_id == target_session]
        assert [r.status for r in deletes] == [200]
    after = await mcp_client.post_raw(
        mesh.url, {"jsonrpc": "2.0", "id": 9, "method": "ping"}, session_id=life.session_id
    )
    assert after.status == 404  # the session really ended


async def test_one_server_down_the_other_keeps_working_then_it_comes_back(mesh: MuxMesh) -> None:
    async with mcp_client.open_session(mesh.url) as s:
        assert len((await s.client.list_tools()).tools) == 9
        await mesh.stop_server("clock")
        # calls to the other server keep succeeding
        added = await s.client.call_tool("math__add", {"a": 1, "b": 2})
        assert added.structured_content == {"result": 3}
        # a call to the dead one gets a JSON-RPC error naming it
        with pytest.raises(MCPError) as down:
            await s.client.call_tool("clock__get_time", {})
        assert down.value.error.code == TARGET_UNAVAILABLE
        assert "target 'clock' is unavailable" in down.value.error.message
        # its tools vanish from the list, and the list says why
        listed = await s.client.list_tools()
        assert sorted(t.name for t in listed.tools) == [
            "math__add",
            "math__announce",
            "math__confirm",
            "math__echo",
            "math__wait_for_release",
        ]
        assert listed.meta is not None
        assert [u["target"] for u in listed.meta[UNAVAILABLE_META]] == ["clock"]
        # it comes back without restarting anything here: a new server process (whose old
        # session is gone) is initialized again lazily
        await mesh.restart_server("clock")
        names = await _until_listed(s.client, "clock__get_time")
        assert len(names) == 9
        assert (await s.client.call_tool("clock__get_time", {})).structured_content == {
            "result": "12:00"
        }


async def _until_listed(client: Any, name: str) -> list[str]:
    """The tool list once ``name`` is back (the target's retry back-off is under a second)."""
    async with asyncio.timeout(15):
        while True:
            names = [t.name for t in (await client.list_tools()).tools]
            if name in names:
                return names
            await asyncio.sleep(0.2)


async def test_prefix_mode_never_routes_bare_names_and_refuses_shared_ones() -> None:
    async with mux_mesh(prefix_mode="never") as mesh, mcp_client.open_session(mesh.url) as s:
        # called before any list: the endpoint learns who serves it
        clock = await s.client.call_tool("get_time", {})
        assert clock.structured_content == {"result": "12:00"}
        listed = await s.client.list_tools()
        names = sorted(t.name for t in listed.tools)
        # no "echo": both servers have one
        assert names == [
            "add",
            "announce",
            "ask_model",
            "confirm",
            "get_time",
            "roots",
            "wait_for_release",
        ]
        assert listed.meta is not None and listed.meta[AMBIGUOUS_META] == ["echo"]
        with pytest.raises(MCPError) as ambiguous:
            await s.client.call_tool("echo", {"text": "which one?"})
        assert ambiguous.value.error.code == -32602
        assert "served by several targets" in ambiguous.value.error.message
        assert mesh.calls == ["clock.get_time"]
        # resource URIs still carry their target: both servers have memo://notes
        read = await s.client.read_resource("math+memo://notes")
        assert [text_of(c) for c in read.contents] == ["pi is about 3.14159"]
