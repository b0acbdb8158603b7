"""The demo's implementation (what it does: ``sidecar.demo``'s docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket as socket_module
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import aiohttp
import yaml
from mcp import MCPError
from mcp.types import TextContent

from sidecar.config import parse_config
from sidecar.demo import mcp_client, trace_report
from sidecar.demo.mcp_server import MCP_PATH, serve_mcp
from sidecar.demo.tokens import ISSUER, SCOPE, DemoIssuer
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar

if TYPE_CHECKING:
    from sidecar.demo.otlp_receiver import OtlpReceiver

TRUST_DOMAIN = "example.org"
IDENTITIES = {
    "agent": f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/agent",
    "math": f"spiffe://{TRUST_DOMAIN}/ns/mcp/sa/math",
    "clock": f"spiffe://{TRUST_DOMAIN}/ns/mcp/sa/clock",
    "gateway": f"spiffe://{TRUST_DOMAIN}/ns/gateway/sa/gateway",
    "rogue": f"spiffe://{TRUST_DOMAIN}/ns/rogue/sa/intruder",
}
AGENTS_ALLOWED = [f"spiffe://{TRUST_DOMAIN}/ns/agents/**", IDENTITIES["gateway"]]
CLOCK_TOOLS = ("get_time", "echo")
GATEWAY_POLICY = {  # the talk's rule: admins may use echo, users only get_time
    "default": "deny",
    "rules": [
        {"name": "admins-echo", "when": {"roles": ["admin"]}, "tools": ["*__echo"]},
        {"name": "users-time", "when": {"roles": ["user", "admin"]}, "tools": ["clock__get_time"]},
    ],
}
STEP_TIMEOUT = 30.0


LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def run_from_args(args: argparse.Namespace) -> int:
    """``mcp-sidecar demo`` (``--scenario delegation``: ``sidecar.demo.delegation``)."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    return asyncio.run(run_demo(keep_running=args.keep_running, state_dir=args.state_dir))


@dataclass
class Report:
    """What happened, step by step; ``ok`` is false if any expectation failed."""

    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def step(self, good: bool, who: str, what: str, outcome: str) -> None:
        self.ok &= good
        mark = "ok " if good else "FAIL"
        self.lines.append(f"  [{mark}] {who:<9} {what:<34} {outcome}")


@dataclass
class DemoMesh:
    state: Path
    api: DevWorkloadApi
    server_url: str
    inbound: Sidecar
    agent: Sidecar
    rogue: Sidecar
    gateway: Sidecar
    issuer: DemoIssuer

    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent.port('outbound')}/math{MCP_PATH}"

    def tools_url(self) -> str:
        """The agent's one endpoint for both MCP servers (a multiplexing route)."""
        return f"http://127.0.0.1:{self.agent.port('outbound')}/tools{MCP_PATH}"

    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port('inbound')}{MCP_PATH}"

    def bearer(self, sub: str, role: str) -> dict[str, str]:
        token = self.issuer.token(sub, [role], self.gateway_url())
        return {"Authorization": f"Bearer {token}"}

    def rogue_url(self) -> str:
        return f"http://127.0.0.1:{self.rogue.port('outbound')}/math{MCP_PATH}"


def sidecar_config(socket: str, **sections: Any) -> dict[str, Any]:
    """A sidecar's config: our trust domain, its Workload API socket, admin on a free port."""
    return {
        "trust_domain": TRUST_DOMAIN,
        "workload_api": socket,
        "admin": {"listen": "127.0.0.1:0"},
        **sections,
    }


def inbound_config(
    socket: str, upstream_port: int, allow: list[str], **inbound: Any
) -> dict[str, Any]:
    """Config of an inbound sidecar on ephemeral loopback ports (demo and tests)."""
    return sidecar_config(
        socket,
        inbound={
            "listen": "127.0.0.1:0",
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "allow_spiffe_ids": allow,
            **inbound,
        },
    )


def outbound_config(
    socket: str,
    inbound_port: int,
    server_id: str,
    route: dict[str, Any] | None = None,
    **outbound: Any,
) -> dict[str, Any]:
    """Config of an outbound sidecar with one route ``/math`` (plus ``route`` keys) to an
    inbound sidecar."""
    return sidecar_config(
        socket,
        outbound={
            "listen": "127.0.0.1:0",
            "routes": [
                {
                    "name": "math",
                    "path_prefix": "/math",
                    "upstream": f"https://127.0.0.1:{inbound_port}",
                    "server_spiffe_id": server_id,
                    **(route or {}),
                }
            ],
            **outbound,
        },
    )


def targets(inbound_ports: dict[str, int]) -> list[dict[str, Any]]:
    """The MCP servers of the multiplexing route and of the gateway: each server's sidecar."""
    return [
        {
            "name": name,
            "upstream": f"https://127.0.0.1:{port}",
            "server_spiffe_id": IDENTITIES[name],
        }
        for name, port in inbound_ports.items()
    ]


def gateway_config(
    socket: str, port: int, inbound_ports: dict[str, int], jwks: dict[str, Any]
) -> dict[str, Any]:
    """An edge gateway: OAuth in (the demo issuer's key, inline), both servers out."""
    return sidecar_config(
        socket,
        inbound={
            "listen": f"127.0.0.1:{port}",
            "mtls": "off",
            "oauth": {
                "issuer": ISSUER,
                "audience": f"http://127.0.0.1:{port}{MCP_PATH}",
                "jwks": jwks,
                "required_scopes": [SCOPE],
            },
            "targets": targets(inbound_ports),
            "mcp_policy": GATEWAY_POLICY,
        },
    )


def _free_port() -> int:
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _sidecar(
    name: str,
    config: dict[str, Any],
    state: Path,
    logs: list[TextIO],
    tracing: dict[str, Any] | None = None,
) -> Sidecar:
    if tracing is not None:
        config = {**config, "tracing": {**tracing, "service_name": name}}
    (state / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    log_file = (state / f"{name}-access.log").open("a", encoding="utf-8")
    logs.append(log_file)
    sidecar = Sidecar(parse_config(config), access_stream=log_file)
    await sidecar.start(svid_timeout=STEP_TIMEOUT)
    return sidecar


@contextlib.asynccontextmanager
async def demo_mesh(state: Path, tracing: dict[str, Any] | None = None) -> AsyncIterator[DemoMesh]:
    """Bring the whole mesh up under ``state`` and tear it down again; ``tracing`` is the
    ``tracing:`` section of the agent's and the server's sidecars (none: no tracing)."""
    state.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    sockets = {name: f"unix://{state}/{name}.sock" for name in IDENTITIES}
    ca = DevCA.load_or_create(state / "dev-ca", TRUST_DOMAIN)
    api = DevWorkloadApi(ca, {sockets[n]: sid for n, sid in IDENTITIES.items()})
    logs: list[TextIO] = []
    sidecars: list[Sidecar] = []
    await api.start()
    server = await serve_mcp("127.0.0.1", 0)
    clock = await serve_mcp("127.0.0.1", 0, name="clock", tools=CLOCK_TOOLS)
    issuer = DemoIssuer()
    try:
        inbound = await _sidecar(
            "math-inbound",
            inbound_config(sockets["math"], server.port, AGENTS_ALLOWED),
            state,
            logs,
            tracing,
        )
        sidecars.append(inbound)
        clock_inbound = await _sidecar(
            "clock-inbound",
            inbound_config(sockets["clock"], clock.port, AGENTS_ALLOWED),
            state,
            logs,
            tracing,
        )
        sidecars.append(clock_inbound)
        ports = {"math": inbound.port("inbound"), "clock": clock_inbound.port("inbound")}
        agent_config = outbound_config(sockets["agent"], ports["math"], IDENTITIES["math"])
        agent_config["outbound"]["routes"].append(
            {"name": "tools", "path_prefix": "/tools", "targets": targets(ports)}
        )
        agent = await _sidecar("agent-outbound", agent_config, state, logs, tracing)
        sidecars.append(agent)
        gateway = await _sidecar(
            "gateway",
            gateway_config(sockets["gateway"], _free_port(), ports, issuer.jwks()),
            state,
            logs,
        )
        sidecars.append(gateway)
        rogue = await _sidecar(
            "rogue-outbound",
            outbound_config(sockets["rogue"], inbound.port("inbound"), IDENTITIES["math"]),
            state,
            logs,
        )
        sidecars.append(rogue)
        yield DemoMesh(state, api, server.url, inbound, agent, rogue, gateway, issuer)
    finally:
        for sidecar in reversed(sidecars):
            await sidecar.stop()
        await server.close()
        await clock.close()
        await api.stop()
        for log_file in logs:
            log_file.close()


async def exercise(mesh: DemoMesh) -> Report:
    """The agent uses the math server through the mesh; the rogue tries and is refused."""
    report = Report()
    url = mesh.agent_url()
    tools = await mcp_client.list_tool_names(url, timeout=STEP_TIMEOUT)
    report.step("add" in tools, "agent", "tools/list", ", ".join(sorted(tools)))
    for name, args, expected in (
        ("add", {"a": 2, "b": 3}, {"result": 5}),
        ("multiply", {"a": 6, "b": 7}, {"result": 42}),
        ("echo", {"text": "hello over mTLS"}, {"result": "hello over mTLS"}),
    ):
        result = await mcp_client.call_tool(url, name, args, timeout=STEP_TIMEOUT)
        report.step(
            result.structured == expected and not result.is_error,
            "agent",
            f"tools/call {name}({_args(args)})",
            f"-> {result.text}",
        )
    clock = await mcp_client.call_tool(url, "get_time", {}, timeout=STEP_TIMEOUT)
    report.step(not clock.is_error, "agent", "tools/call get_time()", f"-> {clock.text}")
    result, events = await mcp_client.call_with_progress(
        url, "count_slowly", {"n": 3, "delay": 0.2}, timeout=STEP_TIMEOUT
    )
    streamed = len(events) == 3 and all(e.before_result for e in events)
    report.step(
        streamed,
        "agent",
        "tools/call count_slowly(n=3)",
        f"-> {len(events)} progress events over SSE, then {result.text!r}",
    )
    refused = await mcp_client.post_raw(
        mesh.rogue_url(), {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=STEP_TIMEOUT
    )
    report.step(
        refused.status == 403 and "not_allowlisted" in refused.body,
        "rogue",
        "tools/list",
        f"-> refused: HTTP {refused.status} {_reason(refused.body)}",
    )
    await _one_endpoint(mesh, report)
    await _gateway(mesh, report)
    return report


async def _one_endpoint(mesh: DemoMesh, report: Report) -> None:
    """Two MCP servers behind one route of the agent's sidecar."""
    url = mesh.tools_url()
    tools = await mcp_client.list_tool_names(url, timeout=STEP_TIMEOUT)
    both = {"math__add", "clock__get_time"} <= set(tools)
    report.step(both, "agent", "tools/list on /tools (2 servers)", ", ".join(sorted(tools)))
    for name, args in (("math__add", {"a": 2, "b": 3}), ("clock__get_time", {})):
        result = await mcp_client.call_tool(url, name, args, timeout=STEP_TIMEOUT)
        report.step(
            not result.is_error, "agent", f"tools/call {name}({_args(args)})", f"-> {result.text}"
        )


async def _gateway(mesh: DemoMesh, report: Report) -> None:
    """An edge gateway: OAuth tokens with roles, the talk's rule on multiplexed names."""
    url = mesh.gateway_url()
    user, admin = mesh.bearer("bob", "user"), mesh.bearer("alice", "admin")
    seen = await mcp_client.list_tool_names(url, user, timeout=STEP_TIMEOUT)
    report.step(seen == ["clock__get_time"], "user", "tools/list via the gateway", ", ".join(seen))
    denied = await _try_call(url, "math__echo", {"text": "hi"}, user)
    report.step(
        denied.startswith("refused"), "user", "tools/call math__echo(text='hi')", f"-> {denied}"
    )
    allowed = await _try_call(url, "math__echo", {"text": "hi"}, admin)
    report.step(allowed == "hi", "admin", "tools/call math__echo(text='hi')", f"-> {allowed}")


async def _try_call(url: str, name: str, args: dict[str, Any], headers: dict[str, str]) -> str:
    """The call's text, or ``refused: <JSON-RPC error>``."""
    async with mcp_client.open_session(url, headers, timeout=STEP_TIMEOUT) as session:
        try:
            result = await session.client.call_tool(name, args)
        except MCPError as exc:
            return f"refused: {exc.error.code} {exc.error.message}"
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _reason(body: str) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        data = json.loads(body)
        return f"{data['error']}: {data['message']}"
    return body[:80]


async def _metrics_excerpt(admin_port: int | None) -> list[str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{admin_port}/metrics") as resp,
    ):
        text = await resp.text()
    wanted = ("mcp_sidecar_requests_total{", "mcp_sidecar_spiffe_rejections_total{")
    return [line for line in text.splitlines() if line.startswith(wanted)]


async def run_demo(*, keep_running: bool = False, state_dir: Path | None = None) -> int:
    with contextlib.ExitStack() as stack:
        state = state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mcp-")))
        async with contextlib.AsyncExitStack() as services:
            collector: OtlpReceiver | None = None
            tracing: dict[str, Any] | None = None
            if trace_report.tracing_available():
                from sidecar.demo.otlp_receiver import OtlpReceiver

                collector = await OtlpReceiver().start()
                services.push_async_callback(collector.close)
                tracing = {"enabled": True, "endpoint": collector.endpoint}
            mesh = await services.enter_async_context(demo_mesh(state.resolve(), tracing))
            report = await exercise(mesh)
            metrics = await _metrics_excerpt(mesh.inbound.admin_port)
            trace = await _traced_call(mesh, collector, report)
            _print_report(mesh, report, metrics, trace)
            if keep_running:
                await _wait_for_signal(mesh)
    return 0 if report.ok else 1


async def _traced_call(mesh: DemoMesh, collector: OtlpReceiver | None, report: Report) -> list[str]:
    """One more tool call, with a ``traceparent`` of the agent's, and its trace as the
    collector received it from both sidecars."""
    if collector is None:
        return [
            "  (tracing extra not installed: pip install 'mcp-sidecar[tracing]' to see the "
            "trace of a tool call across both sidecars)"
        ]
    traceparent, trace_id = trace_report.new_traceparent()
    result = await mcp_client.call_tool(
        mesh.agent_url(),
        "add",
        {"a": 20, "b": 22},
        headers={"traceparent": traceparent},
        timeout=STEP_TIMEOUT,
    )
    for sidecar in (mesh.agent, mesh.inbound):
        if sidecar.tracing is not None:
            await asyncio.to_thread(sidecar.tracing.flush)
    spans = [s for s in collector.spans if s.trace_id == trace_id]
    services = {s.service for s in spans}
    report.step(
        result.structured == {"result": 42} and services == {"agent-outbound", "math-inbound"},
        "agent",
        "tools/call add(a=20, b=22), traced",
        f"-> {result.text}; {len(spans)} spans from {', '.join(sorted(services))}",
    )
    return [f"trace {trace_id}:", *trace_report.trace_lines(spans, trace_id, "tools/call add")]


def _print_report(mesh: DemoMesh, report: Report, metrics: list[str], trace: list[str]) -> None:
    print("mcp-sidecar demo: an agentic mesh on the embedded dev Workload API\n")
    print("identities (dev Workload API, trust domain example.org):")
    for name, sid in IDENTITIES.items():
        print(f"  {name:<7} {sid}")
    print("\nwhat happened (MCP client -> outbound sidecar -> mTLS -> inbound sidecar -> server):")
    print("\n".join(report.lines))
    print("\none tool call, traced across both sidecars (OpenTelemetry, W3C traceparent):")
    print("\n".join(trace))
    print("\ninbound sidecar metrics:")
    print("\n".join(f"  {line}" for line in metrics))
    print("\nwhere to look:")
    print(f"  agent's MCP endpoint   {mesh.agent_url()}")
    print(f"  agent's one endpoint   {mesh.tools_url()}  (math and clock)")
    print(f"  edge gateway (OAuth)   {mesh.gateway_url()}")
    print(f"  rogue's MCP endpoint   {mesh.rogue_url()}")
    print(f"  inbound admin          http://127.0.0.1:{mesh.inbound.admin_port}/metrics")
    print(f"  configs, access logs   {mesh.state}")
    print(f"\nresult: {'OK' if report.ok else 'FAILED'}")


async def _wait_for_signal(mesh: DemoMesh) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print("\nmesh is running; try:")
    print(
        f"  curl -s -X POST {mesh.agent_url()} -H 'Content-Type: application/json' "
        "-H 'Accept: application/json, text/event-stream' "
        '-d \'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":'
        '"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}\''
    )
    print("Ctrl-C stops it.")
    await stop.wait()
