"""Tracing off: nothing of OpenTelemetry is imported, and the client's ``traceparent`` and
``tracestate`` still reach the server unchanged (end-to-end headers), with the request id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

# Runs in a fresh interpreter: the whole mesh (dev Workload API, upstream, both sidecars) and one
# request through it, then reports what reached the upstream and which modules were loaded.
# (Not tests.proxy.mesh: it builds its configs with the demo, whose MCP SDK imports
# opentelemetry-api itself.)
SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile
    from pathlib import Path
    import aiohttp
    from sidecar.config import parse_config
    from sidecar.dev.devca import DevCA
    from sidecar.dev.devserver import DevWorkloadApi
    from sidecar.runtime import Sidecar
    from tests.proxy.upstream import RecordingUpstream

    TD = "example.org"
    AGENT, SERVER = f"spiffe://{TD}/ns/agents/sa/agent", f"spiffe://{TD}/ns/mcp/sa/math"

    async def main():
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            sockets = {"agent": f"unix://{tmp}/a.sock", "server": f"unix://{tmp}/s.sock"}
            api = DevWorkloadApi(
                DevCA.load_or_create(Path(tmp) / "ca", TD),
                {sockets["agent"]: AGENT, sockets["server"]: SERVER},
            )
            await api.start()
            upstream = await RecordingUpstream().start()
            admin = {"listen": "127.0.0.1:0"}
            server = Sidecar(parse_config({
                "trust_domain": TD, "workload_api": sockets["server"], "admin": admin,
                "inbound": {"listen": "127.0.0.1:0", "allow_spiffe_ids": [AGENT],
                            "upstream": f"http://127.0.0.1:{upstream.port}"},
            }), access_stream=sys.stderr)
            await server.start(svid_timeout=15)
            agent = Sidecar(parse_config({
                "trust_domain": TD, "workload_api": sockets["agent"], "admin": admin,
                "outbound": {"listen": "127.0.0.1:0", "routes": [{
                    "name": "math", "path_prefix": "/math", "server_spiffe_id": SERVER,
                    "upstream": f"https://127.0.0.1:{server.port('inbound')}"}]},
            }), access_stream=sys.stderr)
            await agent.start(svid_timeout=15)
            headers = {"traceparent": sys.argv[1], "tracestate": "vendor=opaque"}
            url = f"http://127.0.0.1:{agent.port('outbound')}/math/mcp"
            async with aiohttp.ClientSession() as session:
                async with session.post(url, data=b"{}", headers=headers) as response:
                    status = response.status
            seen = upstream.requests[0].headers
            result = {
                "status": status,
                "tracing": [agent.tracing is None, server.tracing is None],
                "traceparent": seen.get("traceparent"),
                "tracestate": seen.get("tracestate"),
                "request_id": seen.get("x-request-id"),
                "otel": sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"),
            }
            await agent.stop(); await server.stop(); await upstream.close(); await api.stop()
        print(json.dumps(result))

    asyncio.run(main())
    """
)


def test_tracing_off_imports_no_opentelemetry_and_passes_the_trace_headers_through() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, TRACEPARENT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert result["tracing"] == [True, True]
    assert result["otel"] == []
    assert result["traceparent"] == [TRACEPARENT]
    assert result["tracestate"] == ["vendor=opaque"]
    (request_id,) = result["request_id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    # the sidecars' access lines (on stderr) carry the client's trace id and that request id
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("kind") == "access"]
    assert len(access) == 2
    assert {line["x_request_id"] for line in access} == {request_id}
    assert {line["trace_id"] for line in access} == {TRACEPARENT.split("-")[1]}
    assert {line["span_id"] for line in access} == {None}
