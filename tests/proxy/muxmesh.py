"""A mesh with two real MCP servers (``math``, ``clock``), each behind its own inbound sidecar
with its own SPIFFE ID, and the agent's outbound sidecar whose route ``/tools`` multiplexes
them; optionally an edge gateway (OAuth in, ``targets:`` out) with its own SPIFFE ID."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.demo import mesh as demo_mesh
from sidecar.demo.mcp_server import MCP_PATH, McpServerHandle, serve_mcp
from sidecar.runtime import Sidecar
from tests.proxy.mesh import TD, dev_workload_api, log_lines, start_sidecar
from tests.proxy.mux_servers import clock_server, math_server

IDENTITIES = {
    "agent": f"spiffe://{TD}/ns/agents/sa/agent",
    "gateway": f"spiffe://{TD}/ns/gateway/sa/gateway",
    "math": f"spiffe://{TD}/ns/mcp/sa/math",
    "clock": f"spiffe://{TD}/ns/mcp/sa/clock",
    "scripted": f"spiffe://{TD}/ns/mcp/sa/scripted",
}
SERVERS = ("math", "clock")


@dataclass
class MuxMesh:
    sockets: dict[str, str]
    gate: asyncio.Event
    servers: dict[str, McpServerHandle]
    inbound: dict[str, Sidecar]
    inbound_logs: dict[str, io.StringIO]
    agent: Sidecar
    calls: list[str] = field(default_factory=list)
    """Every tool that ran on either server (``math.add``...)."""
    extra: list[Sidecar] = field(default_factory=list)

    def inbound_lines(self, name: str) -> list[dict[str, Any]]:
        """The access-log lines of ``name``'s inbound sidecar so far."""
        return [json.loads(line) for line in log_lines(self.inbound[name], self.inbound_logs[name])]

    @property
    def url(self) -> str:
        """The agent's one MCP endpoint for both servers."""
        return f"http://127.0.0.1:{self.agent.port('outbound')}/tools{MCP_PATH}"

    def targets(self) -> list[dict[str, Any]]:
        return targets_of(self.inbound)

    async def stop_server(self, name: str) -> None:
        await self.servers[name].close()

    async def restart_server(self, name: str) -> None:
        """The same server (a new process would lose its sessions too), on the same port."""
        port = self.servers[name].port
        mcp = math_server(self.gate, self.calls) if name == "math" else clock_server(self.calls)
        self.servers[name] = await serve_mcp("127.0.0.1", port, mcp=mcp)

    async def sidecar(self, config: dict[str, Any]) -> Sidecar:
        """Start another sidecar that the mesh will stop."""
        sidecar = await start_sidecar(config)
        self.extra.append(sidecar)
        return sidecar

    async def gateway(self, **inbound: Any) -> Sidecar:
        """An edge gateway with ``inbound`` settings and both servers as targets."""
        config = {"listen": "127.0.0.1:0", "targets": self.targets(), **inbound}
        return await self.sidecar(demo_mesh.sidecar_config(self.sockets["gateway"], inbound=config))


def targets_of(inbound: dict[str, Sidecar]) -> list[dict[str, Any]]:
    """The ``targets:`` of a route to every server through its inbound sidecar."""
    return [
        {
            "name": name,
            "upstream": f"https://127.0.0.1:{sidecar.port('inbound')}",
            "server_spiffe_id": IDENTITIES[name],
        }
        for name, sidecar in inbound.items()
    ]


@contextlib.asynccontextmanager
async def mux_mesh(
    scripted: int | None = None, scripted_inbound: dict[str, Any] | None = None, **route: Any
) -> AsyncIterator[MuxMesh]:
    """``route``: extra keys of the agent's multiplexing route (e.g. ``prefix_mode``);
    ``scripted``: the port of a third, plain-HTTP server, target ``scripted``, whose inbound
    sidecar gets ``scripted_inbound`` settings."""
    async with dev_workload_api(IDENTITIES) as (_, sockets):
        gate = asyncio.Event()
        calls: list[str] = []
        servers: dict[str, McpServerHandle] = {}
        sidecars: list[Sidecar] = []
        mesh: MuxMesh | None = None
        allowed = [f"spiffe://{TD}/ns/agents/**", f"spiffe://{TD}/ns/gateway/**"]
        try:
            servers["math"] = await serve_mcp("127.0.0.1", 0, mcp=math_server(gate, calls))
            servers["clock"] = await serve_mcp("127.0.0.1", 0, mcp=clock_server(calls))
            inbound: dict[str, Sidecar] = {}
            ports = {name: servers[name].port for name in SERVERS}
            if scripted is not None:
                ports["scripted"] = scripted
            logs = {name: io.StringIO() for name in ports}
            for name, port in ports.items():
                extra = (scripted_inbound or {}) if name == "scripted" else {}
                config = demo_mesh.inbound_config(sockets[name], port, allowed, **extra)
                inbound[name] = await start_sidecar(config, logs[name])
                sidecars.append(inbound[name])
            agent_config = demo_mesh.sidecar_config(
                sockets["agent"],
                outbound={
                    "listen": "127.0.0.1:0",
                    "routes": [
                        {
                            "name": "tools",
                            "path_prefix": "/tools",
                            "targets": targets_of(inbound),
                            "target_wait": 5,
                            **route,
                        }
                    ],
                },
            )
            agent = await start_sidecar(agent_config)
            sidecars.append(agent)
            mesh = MuxMesh(sockets, gate, servers, inbound, logs, agent, calls=calls)
            yield mesh
        finally:
            gate.set()
            for sidecar in reversed([*sidecars, *(mesh.extra if mesh else [])]):
                await sidecar.stop()
            for server in servers.values():
                await server.close()
