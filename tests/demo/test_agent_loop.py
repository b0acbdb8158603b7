"""The Kubernetes demo agent (``python -m sidecar.demo.agent_loop``) against a real MCP server."""

from __future__ import annotations

import asyncio
import io
import re
import signal
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sidecar.demo import agent_loop
from sidecar.demo.mcp_server import McpServerHandle
from tests.processes import run_module, running_module
from tests.proxy.loopback import serve_app

TIMEOUT = 60.0
LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    r"(ok      |refused |error   )(add|multiply)\((\d+), (\d+)\)"
)


async def serve_json(status: int, body: dict[str, object]) -> tuple[web.AppRunner, str]:
    """A stand-in for a sidecar that answers every request with one JSON error."""

    async def answer(_: web.Request) -> web.Response:
        return web.json_response(body, status=status)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner, port = await serve_app(app)
    return runner, f"http://127.0.0.1:{port}/math/mcp"


@pytest.fixture
async def refusing_url() -> AsyncIterator[str]:
    """An inbound sidecar that refuses the caller's SPIFFE ID."""
    body: dict[str, object] = {
        "error": "not_allowlisted",
        "message": "peer spiffe://example.org/ns/mcp-demo/sa/rogue is not allowed",
        "status": 403,
    }
    runner, url = await serve_json(403, body)
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_other_http_errors_are_errors_with_the_reason() -> None:
    body: dict[str, object] = {"error": "upstream_unreachable", "message": "connection refused"}
    runner, url = await serve_json(502, body)
    try:
        out = io.StringIO()
        records = await agent_loop.run_loop(url, iterations=1, timeout=10, out=out)
    finally:
        await runner.cleanup()
    assert [r.outcome for r in records] == ["error", "error"]
    assert records[0].detail == "HTTP 502 upstream_unreachable: connection refused"


async def run_agent(*args: str) -> tuple[int, list[str], str]:
    code, out, err = await run_module("sidecar.demo.agent_loop", *args, timeout=TIMEOUT)
    return code, out.splitlines(), err


async def test_two_iterations_against_a_real_mcp_server(mcp_server: McpServerHandle) -> None:
    code, lines, err = await run_agent(
        "--url", mcp_server.url, "--iterations", "2", "--interval", "0"
    )
    assert code == 0, err
    assert lines[0].endswith(f"agent calling {mcp_server.url}")
    calls = [LINE.match(line) for line in lines[1:-1]]
    assert all(calls), lines
    assert [(m[1].strip(), m[2], m[3], m[4]) for m in calls if m] == [
        ("ok", "add", "1", "2"),
        ("ok", "multiply", "1", "2"),
        ("ok", "add", "2", "3"),
        ("ok", "multiply", "2", "3"),
    ]
    assert " = 3 (" in lines[1] and " = 2 (" in lines[2] and " = 6 (" in lines[4]
    assert lines[-1] == "summary: 4 ok, 0 refused, 0 error"
    assert err == ""  # the SDK's request logs are kept out of the agent's output
    # The server really saw two sessions, each closed with DELETE.
    assert [r.method for r in mcp_server.requests].count("DELETE") == 2


async def test_unreachable_server_is_logged_and_the_loop_goes_on() -> None:
    out = io.StringIO()
    records = await agent_loop.run_loop(
        "http://127.0.0.1:9/math/mcp", interval=0, iterations=2, timeout=10, out=out
    )
    assert [r.outcome for r in records] == ["error"] * 4
    assert [r.iteration for r in records] == [1, 1, 2, 2]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert all(" error   " in line and "ConnectError" in line for line in lines)
    assert agent_loop.summary(records) == "summary: 0 ok, 0 refused, 4 error"


async def test_refusal_is_reported_with_the_sidecars_reason(refusing_url: str) -> None:
    code, lines, err = await run_agent("--url", refusing_url, "--iterations", "1")
    assert code == 1, err  # expected ok, got refused
    assert lines[1].split(" ", 1)[1] == (
        "refused add(1, 2): HTTP 403 not_allowlisted: "
        "peer spiffe://example.org/ns/mcp-demo/sa/rogue is not allowed"
    )
    assert " refused multiply(1, 2): HTTP 403 not_allowlisted" in lines[2]
    assert lines[-1] == "summary: 0 ok, 2 refused, 0 error"
    code, lines, _ = await run_agent("--url", refusing_url, "--iterations", "1", "--expect-refused")
    assert code == 0  # what the rogue Job of deploy/kind/up.sh relies on


async def test_expect_refused_fails_when_the_call_succeeds(mcp_server: McpServerHandle) -> None:
    code, lines, _ = await run_agent(
        "--url", mcp_server.url, "--iterations", "1", "--expect-refused"
    )
    assert code == 1
    assert lines[-1] == "summary: 2 ok, 0 refused, 0 error"


async def test_endless_loop_survives_failures_and_exits_0_on_sigterm() -> None:
    """Default mode (the agent Deployment): failures never end the process, SIGTERM does."""
    async with running_module(
        "sidecar.demo.agent_loop", "--url", "http://127.0.0.1:9/math/mcp", "--interval", "0.05"
    ) as proc:
        assert proc.stdout is not None
        errors = 0
        async with asyncio.timeout(TIMEOUT):
            while errors < 6:  # three failed iterations
                line = (await proc.stdout.readline()).decode()
                assert line, "the agent exited"
                errors += " error   " in line
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert await proc.wait() == 0  # (returncode itself stays narrowed to None for mypy)
    assert out.decode().splitlines()[-1].startswith("summary: 0 ok, 0 refused, ")


def test_bad_arguments() -> None:
    assert agent_loop.main(["--iterations", "-1"]) == 2
    assert agent_loop.main(["--timeout", "0"]) == 2
