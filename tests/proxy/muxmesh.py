"""A mesh with two real MCP servers (``math``, ``clock``), each behind its own inbound sidecar
with its own SPIFFE ID, and the agent's outbound sidecar whose route ``/tools`` multiplexes
them; optionally an edge gateway (OAuth in, ``targets:`` out) with its own SPIFFE ID."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.demo import mesh as demo_mesh
from sidecar.demo.mcp_server import MCP_PATH, McpServerHandle, serve_mcp
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar
from tests.proxy.mesh import TD, WAIT, log_lines
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
        return [
            {
                "name": name,
                "upstream": f"https://127.0.0.1:{sidecar.port('inbound')}",
                "server_spiffe_id": IDENTITIES[name],
            }
            for name, sidecar in self.inbound.items()
        ]

    async def stop_server(self, name: str) -> None:
        await self.servers[name].close()

    async def restart_server(self, name: str) -> None:
        """The same server (a new process would lose its sessions too), on the same port."""
        port = self.servers[name].port
        mcp = math_server(self.gate, self.calls) if name == "math" else clock_server(self.calls)
        self.servers[name] = await serve_mcp("127.0.0.1", port, mcp=mcp)

    async def sidecar(self, config: dict[str, Any]) -> Sidecar:
        sidecar = Sidecar(parse_config(config), access_stream=io.StringIO())
        await sidecar.start(svid_timeout=WAIT)
        self.extra.append(sidecar)
        return sidecar

    async def gateway(self, **inbound: Any) -> Sidecar:
        """An edge gateway with ``inbound`` settings and both servers as targets."""
        config = {"listen": "127.0.0.1:0", "targets": self.targets(), **inbound}
        return await self.sidecar(demo_mesh.sidecar_config(self.sockets["gateway"], inbound=config))


@contextlib.asynccontextmanager
async def mux_mesh(
    scripted: int | None = None, scripted_inbound: dict[str, Any] | None = None, **route: Any
) -> AsyncIterator[MuxMesh]:
    """``route``: extra keys of the agent's multiplexing route (e.g. ``prefix_mode``);
    ``scripted``: the port of a third, plain-HTTP server, target ``scripted``, whose inbound
    sidecar gets ``scripted_inbound`` settings."""
    with tempfile.TemporaryDirectory(prefix="muxmesh-", dir="/tmp") as tmp:
        d = Path(tmp)
        ca = DevCA.load_or_create(d / "state", TD)
        sockets = {name: f"unix://{d}/{name}.sock" for name in IDENTITIES}
        api = DevWorkloadApi(ca, {sockets[n]: sid for n, sid in IDENTITIES.items()})
        await api.start()
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
                inbound[name] = Sidecar(parse_config(config), access_stream=logs[name])
                sidecars.append(inbound[name])
                await inbound[name].start(svid_timeout=WAIT)
            mesh = MuxMesh(sockets, gate, servers, inbound, logs, agent=None, calls=calls)  # type: ignore[arg-type]
            agent_config = demo_mesh.sidecar_config(
                sockets["agent"],
                outbound={
                    "listen": "127.0.0.1:0",
                    "routes": [
                        {
                            "name": "tools",
                            "path_prefix": "/tools",
                            "targets": mesh.targets(),
                            "target_wait": 5,
                            **route,
                        }
                    ],
                },
            )
            mesh.agent = Sidecar(parse_config(agent_config), access_stream=io.StringIO())
            sidecars.append(mesh.agent)
            await mesh.agent.start(svid_timeout=WAIT)
            yield mesh
        finally:
            gate.set()
            for sidecar in reversed([*sidecars, *(mesh.extra if mesh else [])]):
                await sidecar.stop()
            for server in servers.values():
                await server.close()
            await api.stop()
