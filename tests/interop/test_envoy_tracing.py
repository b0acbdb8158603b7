"""A real Envoy in front of our mesh, with its own OpenTelemetry tracing on, joins the same
trace: client (its traceparent) -> Envoy (span exported by Envoy itself) -> our outbound sidecar
-> our inbound sidecar -> the upstream; every span reaches one real OTLP/HTTP collector."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from sidecar.demo.otlp_receiver import OtlpReceiver
from tests.interop.envoy import ENVOY_UNAVAILABLE, running_envoy, traced_front_bootstrap
from tests.proxy.mesh import local_mesh

pytestmark = pytest.mark.skipif(
    ENVOY_UNAVAILABLE is not None, reason=f"Envoy cannot run here: {ENVOY_UNAVAILABLE}"
)

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


async def test_envoy_in_front_joins_the_trace(
    receiver: OtlpReceiver, tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    tracing = {"enabled": True, "endpoint": receiver.endpoint}
    async with local_mesh(tracing=tracing) as mesh:
        config = traced_front_bootstrap(mesh.agent.port("outbound"), receiver.port, "envoy-front")
        async with running_envoy(config, tmp_path / "envoy") as envoy:
            async with client.post(
                f"http://127.0.0.1:{envoy.port('front')}/math/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
            ) as resp:
                assert resp.status == 200
            for sidecar in (mesh.agent, mesh.server):
                assert sidecar.tracing is not None
                await asyncio.to_thread(sidecar.tracing.flush)
            spans = await receiver.wait_for(3)  # Envoy's exports on its own schedule
        upstream_traceparent = mesh.upstream.requests[0].headers["traceparent"]
    in_trace = [s for s in spans if s.trace_id == CLIENT_TRACE]
    (front,) = [s for s in in_trace if s.service == "envoy-front"]
    assert front.parent_span_id == CLIENT_SPAN
    by_service = {(s.service, s.kind): s for s in in_trace if s.service != "envoy-front"}
    agent = by_service[("agent-sidecar", "server")]
    inbound = by_service[("server-sidecar", "server")]
    assert agent.parent_span_id == front.span_id  # Envoy's span is our parent
    assert inbound.parent_span_id == agent.span_id
    assert upstream_traceparent == [f"00-{CLIENT_TRACE}-{inbound.span_id}-01"]
    assert agent.attributes["mcp.method.name"] == "ping"
