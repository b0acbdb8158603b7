"""Traces across the mesh, received by a real OTLP/HTTP collector (``tests.tracing.otlp``):
the official MCP SDK client (sending its own ``traceparent``) -> outbound sidecar -> mTLS ->
inbound sidecar -> the official SDK MCP server. Both sidecars' spans land in the client's trace,
each the child of the previous hop, with the attributes users filter on; refusals are errors
with an event saying why; a collector that is down or slow costs the requests nothing."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from mcp.shared.exceptions import MCPError

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, McpServerHandle
from sidecar.demo.otlp_receiver import OtlpReceiver, ReceivedSpan
from sidecar.runtime import Sidecar
from tests.proxy.loopback import free_port
from tests.proxy.mesh import AGENT, ROGUE, SERVER, Mesh, local_mesh, log_lines, outbound_config

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "agents-math",
            "when": {"spiffe_ids": [AGENT]},
            "tools": ["add", "echo", "count_slowly"],
        },
        {"name": "no-multiply", "effect": "deny", "tools": ["multiply"]},
    ],
}


def traced_mesh(mcp_server: McpServerHandle, tracing: dict[str, Any]) -> Any:
    return local_mesh(
        upstream_port=mcp_server.port,
        inbound={"jwt_svid": {"audiences": [SERVER]}, "mcp_policy": POLICY},
        route={"jwt_svid_audience": SERVER},
        tracing=tracing,
    )


def url(mesh: Mesh) -> str:
    return f"{mesh.outbound_url}/math{MCP_PATH}"


async def flush(*sidecars: Sidecar) -> None:
    """Export what the sidecars hold now (the SDK's flush blocks: off the loop, whose
    collector must keep answering)."""
    for sidecar in sidecars:
        assert sidecar.tracing is not None
        await asyncio.to_thread(sidecar.tracing.flush)


def only(spans: list[ReceivedSpan], **want: Any) -> ReceivedSpan:
    found = [
        s
        for s in spans
        if all(
            (getattr(s, k) if k in ("service", "kind", "name") else s.attributes.get(k)) == v
            for k, v in want.items()
        )
    ]
    assert len(found) == 1, f"{len(found)} spans match {want}: {[s.name for s in spans]}"
    return found[0]


async def test_a_tool_call_is_one_trace_across_both_sidecars(
    receiver: OtlpReceiver, mcp_server: McpServerHandle
) -> None:
    async with traced_mesh(mcp_server, {"enabled": True, "endpoint": receiver.endpoint}) as mesh:
        result = await mcp_client.call_tool(
            url(mesh), "add", {"a": 2, "b": 40}, headers={"traceparent": TRACEPARENT}
        )
        assert result.structured == {"result": 42}
        await flush(mesh.agent, mesh.server)
        spans = [s for s in receiver.spans if s.trace_id == CLIENT_TRACE]
        call = {"mcp.method.name": "tools/call"}
        agent = only(spans, service="agent-sidecar", kind="server", **call)
        inbound = only(spans, service="server-sidecar", kind="server", **call)
        tool_calls = mesh.server.metrics.registry.get_sample_value(
            "mcp_sidecar_tool_call_duration_seconds_count", {"tool": "other"}
        )  # "add" was never listed by the server in this session: not a label of its own
        assert tool_calls == 1.0
        agent_lines = [json.loads(line) for line in log_lines(mesh.agent, mesh.agent_log)]
        server_lines = [json.loads(line) for line in log_lines(mesh.server, mesh.server_log)]
    # one trace, each span the child of the previous hop, starting at the client's span
    assert agent.parent_span_id == CLIENT_SPAN
    assert inbound.parent_span_id == agent.span_id
    # every request of the session: a span in each sidecar, the inbound one under the agent's
    agent_ids = {s.span_id for s in spans if s.service == "agent-sidecar"}
    assert {s.kind for s in spans} == {"server"}
    assert {s.parent_span_id for s in spans if s.service == "agent-sidecar"} == {CLIENT_SPAN}
    inbound_parents = [s.parent_span_id for s in spans if s.service == "server-sidecar"]
    assert sorted(inbound_parents) == sorted(agent_ids)
    # the MCP server got the inbound sidecar's span as its parent
    forwarded = [
        r for r in mcp_server.requests if r.traceparent and inbound.span_id in r.traceparent
    ]
    assert len(forwarded) == 1 and forwarded[0].traceparent == (
        f"00-{CLIENT_TRACE}-{inbound.span_id}-01"
    )
    assert agent.name == inbound.name == "tools/call add"
    session = forwarded[0].session_id
    for span, direction in ((agent, "outbound"), (inbound, "inbound")):
        attributes = span.attributes
        assert attributes["mcp_sidecar.direction"] == direction
        assert attributes["gen_ai.tool.name"] == "add"
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert attributes["jsonrpc.request.id"].isdigit()
        assert attributes["mcp.session.id"] == session and session
        assert attributes["mcp.protocol.version"]
        assert attributes["http.request.method"] == "POST"
        assert attributes["http.response.status_code"] == 200
        assert attributes["http.request.body.size"] > 0
        assert not span.error
    assert agent.attributes["mcp_sidecar.route"] == "math"
    assert agent.attributes["mcp_sidecar.peer.spiffe_id"] == SERVER
    assert inbound.attributes["mcp_sidecar.peer.spiffe_id"] == AGENT
    assert inbound.attributes["mcp_sidecar.principal.sub"] == AGENT
    assert inbound.attributes["mcp_sidecar.principal.token_layer"] == "jwt_svid"
    assert inbound.attributes["mcp_sidecar.policy.decision"] == "allow"
    assert inbound.attributes["mcp_sidecar.policy.rule"] == "agents-math"
    # the same request id on both hops and at the server; trace and span ids in the log lines
    request_id = agent.attributes["mcp_sidecar.request_id"]
    assert inbound.attributes["mcp_sidecar.request_id"] == request_id
    assert forwarded[0].request_id == request_id
    (access,) = [line for line in agent_lines if line["x_request_id"] == request_id]
    assert access["kind"] == "access"
    assert (access["trace_id"], access["span_id"]) == (CLIENT_TRACE, agent.span_id)
    inbound_lines = [line for line in server_lines if line["x_request_id"] == request_id]
    assert sorted(line["kind"] for line in inbound_lines) == ["access", "mcp_audit"]
    assert {line["span_id"] for line in inbound_lines} == {inbound.span_id}
    assert {line["trace_id"] for line in inbound_lines} == {CLIENT_TRACE}


async def test_refusals_are_errors_with_an_event_naming_the_reason(
    receiver: OtlpReceiver, mcp_server: McpServerHandle
) -> None:
    tracing = {"enabled": True, "endpoint": receiver.endpoint}
    async with traced_mesh(mcp_server, tracing) as mesh:
        with pytest.raises(MCPError, match="no-multiply"):
            await mcp_client.call_tool(url(mesh), "multiply", {"a": 6, "b": 7})
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        tracing = {**tracing, "service_name": "other-outbound"}
        # an agent route without a JWT-SVID: the inbound's token layer refuses it
        no_token = await mesh.sidecar(
            {**outbound_config(mesh.sockets["agent"], mesh.inbound_port), "tracing": tracing}
        )
        answer = await mcp_client.post_raw(f"{outbound_url(no_token)}/math{MCP_PATH}", ping)
        assert answer.status == 401
        # a workload that is not allowlisted
        rogue = await mesh.sidecar(
            {**outbound_config(mesh.sockets["rogue"], mesh.inbound_port), "tracing": tracing}
        )
        answer = await mcp_client.post_raw(f"{outbound_url(rogue)}/math{MCP_PATH}", ping)
        assert answer.status == 403
        # an upstream that is not there
        dead = await mesh.sidecar(
            {**outbound_config(mesh.sockets["agent"], free_port()), "tracing": tracing}
        )
        answer = await mcp_client.post_raw(f"{outbound_url(dead)}/math{MCP_PATH}", ping)
        assert answer.status == 502
        await flush(mesh.agent, mesh.server, no_token, rogue, dead)
        spans = list(receiver.spans)
    refused = only(spans, service="server-sidecar", **{"gen_ai.tool.name": "multiply"})
    assert refused.error and refused.attributes["http.response.status_code"] == 403
    assert refused.attributes["mcp_sidecar.policy.decision"] == "deny"
    assert refused.attributes["mcp_sidecar.policy.rule"] == "no-multiply"
    assert refused.attributes["error.type"] == "mcp_refused"
    event = refused.event("mcp_sidecar.policy_denied")
    assert event is not None and "no-multiply" in event["message"]
    assert not [s for s in spans if s.parent_span_id == refused.span_id]  # never forwarded

    inbound = [s for s in spans if s.service == "server-sidecar" and s.kind == "server"]
    token = only(inbound, **{"http.response.status_code": 401})
    assert token.error and token.event("mcp_sidecar.token_rejected") is not None
    assert token.attributes["mcp_sidecar.peer.spiffe_id"] == AGENT
    peer = only(inbound, **{"http.response.status_code": 403, "mcp_sidecar.peer.spiffe_id": ROGUE})
    assert peer.error and peer.event("mcp_sidecar.peer_rejected") is not None
    assert peer.attributes["error.type"] == "not_allowlisted"

    outbound = [s for s in spans if s.attributes.get("mcp_sidecar.direction") == "outbound"]
    upstream = only(outbound, kind="server", **{"http.response.status_code": 502})
    assert upstream.error
    event = upstream.event("mcp_sidecar.upstream_error")
    assert event is not None and event["mcp_sidecar.reason"].startswith("upstream_")
    # the allowed calls of the same mesh are not errors
    assert not [s for s in inbound if s.error and s not in (refused, token, peer)]


def outbound_url(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.port('outbound')}"


def dropped(sidecar: Sidecar, reason: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "mcp_sidecar_trace_spans_dropped_total", {"reason": reason}
    )
    return value or 0.0


def exported(sidecar: Sidecar) -> float:
    value = sidecar.metrics.registry.get_sample_value("mcp_sidecar_trace_spans_exported_total")
    return value or 0.0


PING = {  # an initialize: the one request this stateful server answers without a session
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"},
    },
}


async def test_collector_down_requests_succeed_and_the_lost_spans_are_counted(
    mcp_server: McpServerHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")  # the exporter's retries
    nobody = f"http://127.0.0.1:{free_port()}/v1/traces"
    async with traced_mesh(mcp_server, {"enabled": True, "endpoint": nobody}) as mesh:
        for _ in range(5):
            answer = await mcp_client.post_raw(url(mesh), PING)
            assert answer.status == 200
        await flush(mesh.agent, mesh.server)
        for sidecar in (mesh.agent, mesh.server):
            # a span per request, all lost, none sent
            assert dropped(sidecar, "export_failed") == 5
            assert exported(sidecar) == 0
        assert dropped(mesh.agent, "queue_full") == 0


async def test_a_slow_collector_blocks_no_request_and_a_full_queue_is_counted(
    receiver: OtlpReceiver, mcp_server: McpServerHandle
) -> None:
    receiver.hold = asyncio.Event()  # every export hangs until released
    tracing = {"enabled": True, "endpoint": receiver.endpoint, "max_queue_size": 2}
    async with traced_mesh(mcp_server, tracing) as mesh:
        for _ in range(10):
            answer = await mcp_client.post_raw(url(mesh), PING)
            assert answer.status == 200  # while the collector sits on the first batch
        assert receiver.posts >= 1 and not receiver.spans
        # 10 spans per sidecar: the first batch of 2 is with the collector, 2 more wait in
        # the queue (bounded by max_queue_size), every later one was dropped and counted
        for sidecar in (mesh.agent, mesh.server):
            assert dropped(sidecar, "queue_full") >= 6
        receiver.hold.set()
        await flush(mesh.agent, mesh.server)
        for sidecar in (mesh.agent, mesh.server):
            assert exported(sidecar) + dropped(sidecar, "queue_full") == 10


async def test_a_streamed_answer_ends_the_span_when_the_stream_ends(
    receiver: OtlpReceiver, mcp_server: McpServerHandle
) -> None:
    async with traced_mesh(mcp_server, {"enabled": True, "endpoint": receiver.endpoint}) as mesh:
        result, events = await mcp_client.call_with_progress(
            url(mesh), "count_slowly", {"n": 3, "delay": 0.05}
        )
        assert result.text == "counted to 3" and len(events) == 3
        await flush(mesh.agent, mesh.server)
        spans = list(receiver.spans)
        lines = [json.loads(line) for line in log_lines(mesh.agent, mesh.agent_log)]
    span = only(spans, service="agent-sidecar", kind="server", name="tools/call count_slowly")
    # the span was finished with what the stream really sent (at the head it was nothing)
    (access,) = [line for line in lines if line["span_id"] == span.span_id]
    size = span.attributes["http.response.body.size"]
    assert size == access["bytes_out"] and size > 0
