"""A whole local mesh for tests: dev Workload API, recording upstream, inbound and outbound
sidecars (real processes' code, in-process), all on loopback and unix sockets in a temp dir; and
an OAuth-only ingress (an inbound sidecar with ``mtls: off`` and its own token issuer)."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.demo import mesh as demo_mesh
from sidecar.demo.mcp_server import MCP_PATH
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar
from tests.proxy.issuer import Issuer
from tests.proxy.loopback import free_port
from tests.proxy.upstream import RecordingUpstream

TD = "example.org"
AGENT = f"spiffe://{TD}/ns/agents/sa/agent"
SERVER = f"spiffe://{TD}/ns/mcp/sa/math"
ROGUE = f"spiffe://{TD}/ns/rogue/sa/intruder"
OTHER_AGENT = f"spiffe://{TD}/ns/agents/sa/other"
"""Allowlisted like ``AGENT``: a peer only the token layer can tell apart from it."""
IDENTITIES = {"agent": AGENT, "server": SERVER, "rogue": ROGUE, "other": OTHER_AGENT}
WAIT = 15.0


@dataclass
class Mesh:
    api: DevWorkloadApi
    upstream: RecordingUpstream
    sockets: dict[str, str]
    server: Sidecar
    agent: Sidecar
    server_log: io.StringIO
    agent_log: io.StringIO
    extra: list[Sidecar] = field(default_factory=list)

    def server_lines(self) -> list[str]:
        return log_lines(self.server, self.server_log)

    def agent_lines(self) -> list[str]:
        return log_lines(self.agent, self.agent_log)

    @property
    def outbound_url(self) -> str:
        return f"http://127.0.0.1:{self.agent.port('outbound')}"

    @property
    def inbound_port(self) -> int:
        return self.server.port("inbound")

    async def sidecar(
        self, config: dict[str, Any], access_stream: io.StringIO | None = None
    ) -> Sidecar:
        """Start another sidecar (e.g. the rogue's outbound) that the mesh will stop."""
        sidecar = await start_sidecar(config, access_stream)
        self.extra.append(sidecar)
        return sidecar


async def start_sidecar(
    config: dict[str, Any], access_stream: io.StringIO | None = None, *, fast_path: bool = True
) -> Sidecar:
    """A started sidecar (its first SVID awaited, bounded) logging into ``access_stream``;
    stopped again if it cannot start. ``fast_path=False``: every request served in a task
    (``Sidecar``)."""
    sidecar = Sidecar(
        parse_config(config), access_stream=access_stream or io.StringIO(), fast_path=fast_path
    )
    try:
        await sidecar.start(svid_timeout=WAIT)
    except BaseException:
        await sidecar.stop()
        raise
    return sidecar


@contextlib.asynccontextmanager
async def dev_workload_api(
    identities: dict[str, str], *, x509_ttl: dt.timedelta = dt.timedelta(hours=1)
) -> AsyncIterator[tuple[DevWorkloadApi, dict[str, str]]]:
    """A dev Workload API (its dev CA for ``TD`` in a fresh short temp dir) with one unix socket
    per workload of ``identities`` (name -> SPIFFE ID): the API and the socket URLs by name."""
    with tempfile.TemporaryDirectory(prefix="mesh-", dir="/tmp") as tmp:
        d = Path(tmp)
        ca = DevCA.load_or_create(d / "state", TD)
        sockets = {name: f"unix://{d}/{name}.sock" for name in identities}
        api = DevWorkloadApi(
            ca, {sockets[n]: sid for n, sid in identities.items()}, x509_ttl=x509_ttl
        )
        await api.start()
        try:
            yield api, sockets
        finally:
            await api.stop()


def log_lines(sidecar: Sidecar, stream: io.StringIO) -> list[str]:
    """The access and audit lines ``sidecar`` has logged into ``stream`` so far (the lines it
    holds for its next flush are written first)."""
    sidecar.access_log.flush_pending()
    return stream.getvalue().splitlines()


def inbound_config(socket: str, upstream_port: int, **inbound: Any) -> dict[str, Any]:
    return demo_mesh.inbound_config(
        socket, upstream_port, [f"spiffe://{TD}/ns/agents/*/*"], **inbound
    )


def outbound_config(
    socket: str,
    inbound_port: int,
    server_id: str = SERVER,
    route: dict[str, Any] | None = None,
    **outbound: Any,
) -> dict[str, Any]:
    return demo_mesh.outbound_config(socket, inbound_port, server_id, route, **outbound)


def proxy_outbound_config(socket: str, inbound_port: int) -> dict[str, Any]:
    """An outbound for HTTP proxy mode: route ``math`` serves only the host ``math.local``
    (any path, to the inbound at ``inbound_port``); every other host goes to a dead end."""
    routes = [
        {"name": "math", "host": "math.local", "upstream": f"https://127.0.0.1:{inbound_port}"},
        {"name": "elsewhere", "upstream": "https://127.0.0.1:9"},
    ]
    return outbound_config(
        socket, inbound_port, routes=[{**route, "server_spiffe_id": SERVER} for route in routes]
    )


@contextlib.asynccontextmanager
async def local_mesh(
    *,
    x509_ttl: dt.timedelta = dt.timedelta(hours=1),
    inbound: dict[str, Any] | None = None,
    outbound: dict[str, Any] | None = None,
    upstream_port: int | None = None,
    route: dict[str, Any] | None = None,
    tracing: dict[str, Any] | None = None,
    fast_path: bool = True,
) -> AsyncIterator[Mesh]:
    """The inbound sidecar forwards to the recording upstream, or to ``upstream_port``.
    ``tracing``: the ``tracing:`` section of both sidecars (service names ``server-sidecar``
    and ``agent-sidecar`` unless it names one). ``fast_path``: both sidecars' (``Sidecar``)."""

    def traced(config: dict[str, Any], service: str) -> dict[str, Any]:
        if tracing is not None:
            config["tracing"] = {"service_name": service, **tracing}
        return config

    async with dev_workload_api(IDENTITIES, x509_ttl=x509_ttl) as (api, sockets):
        upstream = await RecordingUpstream().start()
        server_log, agent_log = io.StringIO(), io.StringIO()
        server: Sidecar | None = None
        agent: Sidecar | None = None
        mesh: Mesh | None = None
        try:
            server = await start_sidecar(
                traced(
                    inbound_config(
                        sockets["server"], upstream_port or upstream.port, **(inbound or {})
                    ),
                    "server-sidecar",
                ),
                server_log,
                fast_path=fast_path,
            )
            agent = await start_sidecar(
                traced(
                    outbound_config(
                        sockets["agent"], server.port("inbound"), route=route, **(outbound or {})
                    ),
                    "agent-sidecar",
                ),
                agent_log,
                fast_path=fast_path,
            )
            mesh = Mesh(api, upstream, sockets, server, agent, server_log, agent_log)
            yield mesh
        finally:
            for sidecar in [*(mesh.extra if mesh else []), agent, server]:
                if sidecar is not None:
                    await sidecar.stop()
            await upstream.close()


@dataclass
class Ingress:
    url: str
    """The MCP endpoint through the sidecar (also the tokens' audience)."""
    issuer: Issuer
    sidecar: Sidecar
    log: io.StringIO

    def lines(self) -> list[str]:
        return log_lines(self.sidecar, self.log)

    def bearer(self, **claims: Any) -> dict[str, str]:
        """An ``Authorization`` header with a token for this ingress carrying ``claims``."""
        return {"Authorization": f"Bearer {self.issuer.token(aud=self.url, **claims)}"}


@contextlib.asynccontextmanager
async def oauth_ingress(
    upstream_port: int,
    *,
    oauth: dict[str, Any] | None = None,
    fast_path: bool = True,
    **inbound: Any,
) -> AsyncIterator[Ingress]:
    """An OAuth-only inbound sidecar forwarding to ``upstream_port``, with its own issuer;
    ``oauth`` adds ``inbound.oauth`` keys, ``inbound`` other inbound keys (``mcp_policy``...);
    ``fast_path``: the sidecar's (``Sidecar``)."""
    issuer = await Issuer().start()
    port = free_port()
    url = f"http://127.0.0.1:{port}{MCP_PATH}"
    log = io.StringIO()
    config = {
        "trust_domain": TD,
        "admin": {"listen": "127.0.0.1:0"},
        "inbound": {
            "listen": f"127.0.0.1:{port}",
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "mtls": "off",
            "oauth": {"issuer": issuer.url, "audience": url, **(oauth or {})},
            **inbound,
        },
    }
    try:
        sidecar = await start_sidecar(config, log, fast_path=fast_path)
        try:
            yield Ingress(url, issuer, sidecar, log)
        finally:
            await sidecar.stop()
    finally:
        await issuer.close()
