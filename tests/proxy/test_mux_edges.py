"""The multiplexer against a sloppy server and a sloppy client: pagination across targets,
answers it cannot read (fail closed), refusals relayed, and malformed client messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from sidecar.demo.mcp_client import PROTOCOL_VERSION_HEADER, SESSION_ID_HEADER
from sidecar.mcp.mux.merge import UNAVAILABLE_META
from sidecar.proxy.mux import TARGET_UNAVAILABLE
from tests.proxy.muxmesh import MuxMesh, mux_mesh
from tests.proxy.scripted_mcp import ScriptedMcp

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class Raw:
    """A hand-rolled client: one session, every answer read whole (SSE events parsed)."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url
        self.session: str | None = None
        self.ids = 0

    async def post(self, message: Any, *, session: str | None = None) -> httpx2.Response:
        headers = dict(HEADERS)
        sid = session if session is not None else self.session
        if sid is not None:
            headers[SESSION_ID_HEADER] = sid
            headers[PROTOCOL_VERSION_HEADER] = "2025-06-18"
        return await self.http.post(self.url, json=message, headers=headers)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        response = await self.post(
            {"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params}
        )
        return answer_of(response)

    async def start(self) -> None:
        response = await self.post(
            {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"},
                },
            }
        )
        assert response.status_code == 200
        self.session = response.headers[SESSION_ID_HEADER]
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})


def answer_of(response: httpx2.Response) -> dict[str, Any]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [
            json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")
        ]
        answers: list[dict[str, Any]] = [e for e in events if "id" in e and "method" not in e]
        assert len(answers) == 1, events
        return answers[0]
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
async def raw(scripted: ScriptedMcp) -> AsyncIterator[tuple[Raw, MuxMesh]]:
    async with (
        mux_mesh(scripted=scripted.port, target_wait=1) as mesh,
        httpx2.AsyncClient(timeout=httpx2.Timeout(20)) as http,
    ):
        client = Raw(http, mesh.url)
        await client.start()
        yield client, mesh


async def test_pages_of_several_targets_merge_under_one_signed_cursor(
    raw: tuple[Raw, MuxMesh], scripted: ScriptedMcp
) -> None:
    client, _ = raw
    first = (await client.call("tools/list"))["result"]
    names = [t["name"] for t in first["tools"]]
    assert "scripted__a1" in names and "scripted__a2" in names and "math__add" in names
    assert "scripted__a3" not in names
    second = (await client.call("tools/list", cursor=first["nextCursor"]))["result"]
    assert [t["name"] for t in second["tools"]] == ["scripted__a3"]  # only the paged target
    assert "nextCursor" not in second
    # the target got its own cursor back
    assert {"cursor": "p2"} in [m.get("params") for m in scripted.received]
    tampered = first["nextCursor"][:-2] + ("AA" if not first["nextCursor"].endswith("AA") else "BB")
    refused = await client.call("tools/list", cursor=tampered)
    assert refused["error"]["code"] == -32602
    other_method = await client.call("prompts/list", cursor=first["nextCursor"])
    assert other_method["error"]["code"] == -32602


async def test_an_answer_that_cannot_be_read_becomes_a_json_rpc_error(
    raw: tuple[Raw, MuxMesh],
) -> None:
    client, _ = raw
    answer = await client.call("tools/call", name="scripted__garbled", arguments={})
    # the duplicate key "x" is refused: never forwarded as is
    assert answer["error"]["code"] == TARGET_UNAVAILABLE
    assert answer["error"]["data"] == {"target": "scripted", "reason": "unreadable_answer"}


async def test_uris_in_json_answers_are_mapped_even_when_escaped(
    raw: tuple[Raw, MuxMesh],
) -> None:
    client, _ = raw
    for tool in ("scripted__linked", "scripted__escaped"):
        answer = await client.call("tools/call", name=tool, arguments={})
        assert answer["result"]["content"][0]["uri"] == "scripted+memo://x", tool


async def test_a_targets_json_rpc_refusal_is_relayed_and_it_stays_up(
    raw: tuple[Raw, MuxMesh],
) -> None:
    client, _ = raw
    response = await client.post(
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "scripted__denied"}}
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == -32001
    names = [t["name"] for t in (await client.call("tools/list"))["result"]["tools"]]
    assert "scripted__a1" in names


async def test_a_cancelled_call_ends_quietly(
    raw: tuple[Raw, MuxMesh], scripted: ScriptedMcp
) -> None:
    client, _ = raw
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "scripted__cancellable"},
    }
    headers = {**HEADERS, SESSION_ID_HEADER: client.session or ""}
    events: list[dict[str, Any]] = []
    async with client.http.stream("POST", client.url, json=call, headers=headers) as response:
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                break  # the progress event: the call is running
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
        assert (await client.post(cancel)).status_code == 202
        events += [json.loads(line[5:]) async for line in lines if line.startswith("data:")]
    assert scripted.cancelled.is_set()  # routed to the target of request 5
    assert [e.get("method") for e in events] == ["notifications/progress"]  # no error added
    names = [t["name"] for t in (await client.call("tools/list"))["result"]["tools"]]
    assert "scripted__a1" in names  # not taken for a failure


async def test_a_slow_target_is_left_out_of_lists(
    raw: tuple[Raw, MuxMesh], scripted: ScriptedMcp
) -> None:
    client, _ = raw
    scripted.slow_lists = True
    listed = (await client.call("tools/list"))["result"]
    assert not any(t["name"].startswith("scripted__") for t in listed["tools"])
    assert listed["_meta"][UNAVAILABLE_META] == [
        {"target": "scripted", "reason": "no answer within 1s"}
    ]
    answer = await client.call("tools/call", name="math__add", arguments={"a": 1, "b": 1})
    assert answer["result"]["structuredContent"] == {"result": 2}
    scripted.slow_lists = False
    async with asyncio.timeout(10):  # back after its back-off
        while True:
            tools = (await client.call("tools/list"))["result"]["tools"]
            if any(t["name"] == "scripted__a1" for t in tools):
                break
            await asyncio.sleep(0.2)


async def test_a_target_without_get_stream_is_no_failure(
    raw: tuple[Raw, MuxMesh], scripted: ScriptedMcp
) -> None:
    client, _ = raw
    headers = {"Accept": "text/event-stream", SESSION_ID_HEADER: client.session or ""}
    async with client.http.stream("GET", client.url, headers=headers) as stream:
        assert stream.status_code == 200
        async with asyncio.timeout(10):
            while True:
                if "GET" in scripted.methods:  # it answered 405
                    break
                await asyncio.sleep(0.05)
        names = [t["name"] for t in (await client.call("tools/list"))["result"]["tools"]]
    assert "scripted__a1" in names


async def test_malformed_client_messages(raw: tuple[Raw, MuxMesh]) -> None:
    client, _ = raw
    batch = await client.post([{"jsonrpc": "2.0", "id": 1, "method": "ping"}])
    assert batch.status_code == 400 and batch.json()["error"]["code"] == -32600
    no_session = await client.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, session="")
    assert no_session.status_code in (400, 404)
    unknown = await client.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, session="nope")
    assert unknown.status_code == 404
    stray = await client.post({"jsonrpc": "2.0", "id": 99, "result": {}})
    assert stray.status_code == 400 and stray.json()["error"] == "unknown_request"
    duplicate = await client.http.post(
        client.url,
        content=b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/list"}',
        headers={**HEADERS, SESSION_ID_HEADER: client.session or ""},
    )
    assert duplicate.status_code == 400
    unsupported = await client.call("tasks/list")
    assert unsupported["error"]["code"] == -32601
    assert (await client.call("ping"))["result"] == {}
