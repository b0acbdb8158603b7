"""A policy in dry run through a real inbound sidecar: what it would deny reaches the MCP server
and is audited and counted as ``would_deny``; what it would hide from a list is shown and
audited as ``would_filter``; the same policy enforced refuses (so each test fails if dry-run
handling is removed); a reloaded policy file switches dry run on and off."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, TOOL_NAMES, McpServerHandle
from sidecar.proxy.mcp_guard import MAX_WOULD_HIDE
from sidecar.runtime import Sidecar
from tests.proxy.mesh import WAIT, Mesh, local_mesh
from tests.proxy.test_upstream import ok, read_request, upstream

AGENTS = ["spiffe://example.org/ns/agents/**"]
RULES: list[dict[str, Any]] = [
    {"name": "agents-add", "when": {"spiffe_ids": AGENTS}, "tools": ["add"]}
]


def policy(*, dry_run: bool) -> dict[str, Any]:
    return {"default": "deny", "dry_run": dry_run, "rules": RULES}


def audits(mesh: Mesh) -> list[dict[str, Any]]:
    return [json.loads(line) for line in mesh.server_lines() if '"mcp_audit"' in line]


def counted(sidecar: Sidecar, decision: str, tool: str = "other") -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "mcp_sidecar_mcp_requests_total",
        {"method": "tools/call", "tool": tool, "decision": decision},
    )
    return value or 0.0


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "enforced"])
async def test_dry_run_policy_logs_would_deny_and_forwards(
    mcp_server: McpServerHandle, dry_run: bool
) -> None:
    async with local_mesh(
        upstream_port=mcp_server.port, inbound={"mcp_policy": policy(dry_run=dry_run)}
    ) as mesh:
        url = f"{mesh.outbound_url}/math{MCP_PATH}"
        listed = await mcp_client.list_tool_names(url)
        if dry_run:
            result = await mcp_client.call_tool(url, "multiply", {"a": 6, "b": 7})
            assert result.structured == {"result": 42}  # the server ran it
            assert sorted(listed) == sorted(TOOL_NAMES)  # nothing hidden
        else:
            with pytest.raises(MCPError, match="Forbidden by policy: no rule allows"):
                await mcp_client.call_tool(url, "multiply", {"a": 6, "b": 7})
            assert listed == ["add"]

        lines = audits(mesh)
        multiply = [a for a in lines if a["tool"] == "multiply"]
        assert [(a["decision"], a["rule"]) for a in multiply] == [
            ("would_deny" if dry_run else "deny", None)
        ]
        assert multiply[0]["status"] == (200 if dry_run else 403)
        assert counted(mesh.server, "would_deny", "multiply") == (1 if dry_run else 0)
        assert counted(mesh.server, "deny", "multiply") == (0 if dry_run else 1)
        filtered = [a for a in lines if a["decision"] == "would_filter"]
        if dry_run:  # the list went over SSE, unfiltered; what it would have hidden is named
            assert filtered  # (the SDK lists the tools again before a call)
            for line in filtered:
                assert line["method"] == "tools/list" and line["would_replace"] is None
                assert sorted(line["would_hide"]["tool"]) == sorted(TOOL_NAMES - {"add"})
                assert line["would_hide_count"] == len(TOOL_NAMES) - 1
        else:
            assert filtered == []


async def test_a_batch_in_dry_run_is_forwarded_and_audited_element_by_element(
    client: aiohttp.ClientSession,
) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "multiply"}},
    ]
    async with local_mesh(inbound={"mcp_policy": policy(dry_run=True)}) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/mcp", json=batch) as resp:
            assert resp.status == 200
        assert json.loads(mesh.upstream.requests[-1].body) == batch  # forwarded unchanged
        assert [(a["tool"], a["decision"], a["rule"], a["batch"]) for a in audits(mesh)] == [
            ("add", "allow", "agents-add", "would_deny"),
            ("multiply", "would_deny", None, "would_deny"),
        ]
        assert counted(mesh.server, "would_deny") == 2  # what would have happened to each


async def test_rate_limits_still_apply_to_a_dry_run_policy(client: aiohttp.ClientSession) -> None:
    inbound = {
        "mcp_policy": policy(dry_run=True),
        "rate_limits": [{"per": "principal", "rate": "1/m", "burst": 1}],
    }
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "multiply"}}
    async with local_mesh(inbound=inbound) as mesh:
        statuses = []
        for _ in range(2):
            async with client.post(f"{mesh.outbound_url}/math/mcp", json=call) as resp:
                statuses.append(resp.status)
        assert statuses == [200, 429]
        assert len(mesh.upstream.requests) == 1


async def test_reloading_the_file_switches_dry_run_on_and_off(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    policy_file = tmp_path / "policy.yaml"

    def write(dry_run: bool) -> None:
        staging = tmp_path / "policy.tmp"
        staging.write_text(yaml.safe_dump(policy(dry_run=dry_run)))
        os.replace(staging, policy_file)  # atomic, like a ConfigMap update

    write(dry_run=True)
    inbound = {"mcp_policy": {"file": str(policy_file), "reload_interval": "50ms"}}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "multiply"}}
    async with local_mesh(inbound=inbound) as mesh:

        async def status() -> int:
            async with client.post(f"{mesh.outbound_url}/math/mcp", json=call) as resp:
                await resp.read()
                return resp.status

        async def until(expected: int) -> None:
            async with asyncio.timeout(WAIT):
                while await status() != expected:  # noqa: ASYNC110 - polls until it reloads
                    await asyncio.sleep(0.02)

        assert await status() == 200
        write(dry_run=False)
        await until(403)
        write(dry_run=True)
        await until(200)
        decisions = [a["decision"] for a in audits(mesh)]
        assert decisions[0] == "would_deny" and "deny" in decisions
        assert decisions[-1] == "would_deny"


async def test_a_dry_run_list_answer_passes_unchanged_and_the_hidden_names_are_bounded(
    client: aiohttp.ClientSession,
) -> None:
    tools = [{"name": f"tool_{n:02d}", "inputSchema": {"type": "object"}} for n in range(40)]
    tools.append({"name": "add", "inputSchema": {"type": "object"}})
    answer = json.dumps({"jsonrpc": "2.0", "id": 5, "result": {"tools": tools}}).encode()

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            writer.write(ok(answer, "Content-Type: application/json"))
            await writer.drain()

    ask = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    async with (
        upstream(serve) as up,
        local_mesh(upstream_port=up.port, inbound={"mcp_policy": policy(dry_run=True)}) as mesh,
    ):
        async with client.post(f"{mesh.outbound_url}/math/mcp", json=ask) as resp:
            assert resp.status == 200
            assert await resp.read() == answer  # byte for byte
        (line,) = [a for a in audits(mesh) if a["decision"] == "would_filter"]
        assert line["request_id"] == 5 and line["method"] == "tools/list"
        assert line["would_hide_count"] == 40
        assert line["would_hide"]["tool"] == [f"tool_{n:02d}" for n in range(MAX_WOULD_HIDE)]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "enforced"])
async def test_stream_resumption_is_dropped_only_when_lists_are_filtered(
    dry_run: bool, client: aiohttp.ClientSession
) -> None:
    """Resuming replays answers the sidecar never saw; that matters only when it filters them."""
    async with local_mesh(inbound={"mcp_policy": policy(dry_run=dry_run)}) as mesh:
        mesh.upstream.gate.set()
        headers = {"Last-Event-ID": "41"}
        async with client.get(f"{mesh.outbound_url}/math/sse", headers=headers) as resp:
            assert resp.status == 200
            await resp.read()
        forwarded = mesh.upstream.requests[0].headers.get("last-event-id")
        assert forwarded == (["41"] if dry_run else None)
