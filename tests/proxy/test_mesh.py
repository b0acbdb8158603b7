"""The data path end to end on loopback: client -> outbound sidecar -> mTLS -> inbound sidecar
-> recording upstream, with the dev Workload API issuing every identity."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import ssl
from pathlib import Path

import aiohttp
import pytest

from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.spiffe.ids import SpiffeId
from tests.certfactory import CertFactory, IssuedCert
from tests.polling import until
from tests.proxy.mesh import (
    AGENT,
    ROGUE,
    SERVER,
    TD,
    WAIT,
    Mesh,
    local_mesh,
    log_lines,
    outbound_config,
)
from tests.tlsharness import client_context

MCP_HEADERS = {
    "Mcp-Session-Id": "abc-123",
    "MCP-Protocol-Version": "2025-06-18",
    "Last-Event-ID": "42",
}


async def test_post_reaches_upstream_with_identity_and_mcp_headers(
    mesh: Mesh, client: aiohttp.ClientSession
) -> None:
    async with client.post(
        f"{mesh.outbound_url}/math/mcp?x=1",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={
            **MCP_HEADERS,
            "Authorization": "Bearer agent-secret",
            "X-Forwarded-Client-Cert": "By=spiffe://evil/x;URI=spiffe://example.org/ns/admin",
        },
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Mcp-Session-Id"] == "session-from-upstream"
        echoed = await resp.json()
    assert echoed["path"] == "/mcp?x=1"  # prefix stripped, query kept
    assert json.loads(echoed["body"]) == {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    headers = echoed["headers"]
    xfcc = headers["x-forwarded-client-cert"]
    assert len(xfcc) == 1  # the client-supplied one is replaced, not appended to
    assert xfcc[0].startswith(f"By={SERVER};Hash=") and xfcc[0].endswith(f";URI={AGENT}")
    assert "authorization" not in headers  # no token passthrough by default
    assert headers["host"] == [f"127.0.0.1:{mesh.upstream.port}"]
    for name, value in MCP_HEADERS.items():
        assert headers[name.lower()] == [value]


async def test_authorization_is_forwarded_only_when_switched_on(
    client: aiohttp.ClientSession,
) -> None:
    async with local_mesh(inbound={"forward_authorization": True}) as mesh:
        async with client.post(
            f"{mesh.outbound_url}/math/mcp", data=b"{}", headers={"Authorization": "Bearer t"}
        ) as resp:
            echoed = await resp.json()
        assert echoed["headers"]["authorization"] == ["Bearer t"]


async def test_peer_not_in_allowlist_gets_403_and_upstream_sees_nothing(
    mesh: Mesh, client: aiohttp.ClientSession
) -> None:
    rogue = await mesh.sidecar(outbound_config(mesh.sockets["rogue"], mesh.inbound_port))
    async with client.post(
        f"http://127.0.0.1:{rogue.port('outbound')}/math/mcp", json={"id": 1}
    ) as resp:
        assert resp.status == 403
        body = await resp.json()
    assert body["error"] == "not_allowlisted"
    assert ROGUE in body["message"]
    assert mesh.upstream.requests == []
    metrics = mesh.server.metrics.render()[0].decode()
    assert (
        'mcp_sidecar_spiffe_rejections_total{direction="inbound",reason="not_allowlisted"} 1.0'
        in metrics
    )


async def test_outbound_refuses_server_with_unexpected_id(
    mesh: Mesh, client: aiohttp.ClientSession
) -> None:
    wrong = await mesh.sidecar(
        outbound_config(
            mesh.sockets["rogue"], mesh.inbound_port, server_id=f"spiffe://{TD}/ns/mcp/sa/other"
        )
    )
    async with client.post(
        f"http://127.0.0.1:{wrong.port('outbound')}/math/mcp", data=b"x"
    ) as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_identity_mismatch"
    assert mesh.upstream.requests == []


async def test_inbound_that_does_not_trust_us_is_named_as_a_tls_refusal(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """An agent of a trust domain the server's inbound does not trust (the agent trusts the
    server's, through federation): the inbound refuses the handshake with an alert and the
    outbound reports that alert, not a reset."""
    other = DevCA.load_or_create(tmp_path / "other-ca", "other.test")
    socket = f"unix://{tmp_path}/stranger.sock"
    stranger = "spiffe://other.test/ns/agents/sa/agent"
    async with DevWorkloadApi(other, {socket: stranger}, federated=[mesh.api.ca]):
        config = outbound_config(socket, mesh.inbound_port)
        config["trust_domain"] = "other.test"
        log = io.StringIO()
        agent = await mesh.sidecar(config, log)
        async with client.post(
            f"http://127.0.0.1:{agent.port('outbound')}/math/mcp", data=b"{}"
        ) as resp:
            assert resp.status == 502
            body = await resp.json()
        await agent.stop()
    assert body["error"] == "upstream_tls_refused_unknown_ca"
    assert "refused our client certificate" in body["message"]
    assert json.loads(log_lines(agent, log)[-1])["reason"] == "upstream_tls_refused_unknown_ca"
    agent_metrics = agent.metrics.render()[0].decode()
    assert (
        'mcp_sidecar_upstream_errors_total{direction="outbound",'
        'reason="upstream_tls_refused_unknown_ca"} 1.0'
    ) in agent_metrics

    def handshake_failures() -> list[str]:
        text = mesh.server.metrics.render()[0].decode()
        prefix = 'mcp_sidecar_tls_handshake_failures_total{direction="inbound"'
        return [line for line in text.splitlines() if line.startswith(prefix)]

    # the server counts it when its handshake task runs, maybe after our 502 went out
    await until(handshake_failures, "the inbound handshake failure to be counted")
    assert len(handshake_failures()) == 1 and handshake_failures()[0].endswith(" 1.0")
    assert mesh.upstream.requests == []


async def test_oversized_body_is_413_at_either_side(
    client: aiohttp.ClientSession,
) -> None:
    async with local_mesh(
        inbound={"limits": {"max_request_body": 1024}},
        outbound={"limits": {"max_request_body": "2KiB"}},
    ) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"x" * 4096) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "request_body_too_large"
        async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"x" * 1500) as resp:
            assert resp.status == 413  # passed the outbound limit, refused by the inbound one
        assert mesh.upstream.requests == []


async def test_upstream_down_is_502(mesh: Mesh, client: aiohttp.ClientSession) -> None:
    await mesh.upstream.close()
    async with client.post(f"{mesh.outbound_url}/math/mcp", data=b"{}") as resp:
        assert resp.status == 502
        assert (await resp.json())["error"] == "upstream_connect_failed"


async def test_unknown_route_is_404(mesh: Mesh, client: aiohttp.ClientSession) -> None:
    async with client.post(f"{mesh.outbound_url}/mathematics/mcp", data=b"{}") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "no_route"


async def test_sse_events_are_forwarded_as_they_arrive(
    mesh: Mesh, client: aiohttp.ClientSession
) -> None:
    async with client.get(
        f"{mesh.outbound_url}/math/sse", headers={"Accept": "text/event-stream", **MCP_HEADERS}
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        # The upstream holds event 2 until we have seen event 1: if any hop buffered, this
        # read would never complete (bounded by the wait).
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT)
        assert first == b'data: {"n": 1}\n\n'
        mesh.upstream.gate.set()
        rest = await asyncio.wait_for(resp.content.read(), WAIT)
        assert rest == b'data: {"n": 2}\n\n'
    seen = mesh.upstream.requests[0]
    assert seen.method == "GET"
    assert seen.headers["last-event-id"] == ["42"]


async def test_client_disconnect_cancels_upstream_stream(
    mesh: Mesh, client: aiohttp.ClientSession
) -> None:
    resp = await client.get(f"{mesh.outbound_url}/math/sse")
    await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT)
    resp.close()  # drop the connection mid-stream
    await asyncio.wait_for(mesh.upstream.sse_cancelled.wait(), WAIT)


async def test_delete_passes_through(mesh: Mesh, client: aiohttp.ClientSession) -> None:
    async with client.delete(f"{mesh.outbound_url}/math/mcp", headers=MCP_HEADERS) as resp:
        assert resp.status == 200
    assert mesh.upstream.requests[-1].method == "DELETE"
    assert mesh.upstream.requests[-1].headers["mcp-session-id"] == ["abc-123"]


async def test_origin_not_listed_is_403(client: aiohttp.ClientSession) -> None:
    async with local_mesh(outbound={"allowed_origins": ["http://localhost:6274"]}) as mesh:
        async with client.post(
            f"{mesh.outbound_url}/math/mcp", data=b"{}", headers={"Origin": "http://evil.test"}
        ) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"] == "origin_not_allowed"
        async with client.post(
            f"{mesh.outbound_url}/math/mcp", data=b"{}", headers={"Origin": "http://localhost:6274"}
        ) as resp:
            assert resp.status == 200
        assert len(mesh.upstream.requests) == 1


async def test_metrics_access_log_and_readiness(mesh: Mesh, client: aiohttp.ClientSession) -> None:
    async with client.post(
        f"{mesh.outbound_url}/math/mcp", data=b"{}", headers={"Mcp-Session-Id": "s-1"}
    ) as resp:
        assert resp.status == 200
    admin = f"http://127.0.0.1:{mesh.server.admin_port}"
    async with client.get(f"{admin}/readyz") as resp:
        assert resp.status == 200
    async with client.get(f"{admin}/metrics") as resp:
        text = await resp.text()
    assert (
        f'mcp_sidecar_requests_total{{direction="inbound",peer="{AGENT}",status="200"}} 1.0' in text
    )
    assert "mcp_sidecar_svid_expiry_timestamp_seconds" in text
    line = json.loads(mesh.server_lines()[-1])
    assert line["direction"] == "inbound" and line["peer"] == AGENT
    assert line["status"] == 200 and line["mcp_session_id"] == "s-1"
    assert line["method"] == "POST" and line["path"] == "/mcp"
    agent_line = json.loads(mesh.agent_lines()[-1])
    assert agent_line["route"] == "math" and agent_line["peer"] == SERVER


async def test_operator_metrics_of_a_request_through_the_mesh(
    mesh: Mesh, client: aiohttp.ClientSession
) -> None:
    pending = asyncio.create_task(client.post(f"{mesh.outbound_url}/math/slow", data=b"{}"))
    try:
        await until(lambda: mesh.upstream.requests, "the request at the upstream")
        # while the request is in flight: one client connection on each data listener, one
        # busy pooled connection on each hop
        agent = mesh.agent.metrics.registry.get_sample_value
        server = mesh.server.metrics.registry.get_sample_value
        assert agent("mcp_sidecar_active_connections", {"listener": "outbound"}) == 1.0
        assert server("mcp_sidecar_active_connections", {"listener": "inbound"}) == 1.0
        route = {"direction": "outbound", "route": "math"}
        local = {"direction": "inbound", "route": "local"}
        assert agent("mcp_sidecar_upstream_pool_connections", route) == 1.0
        assert agent("mcp_sidecar_upstream_pool_idle_connections", route) == 0.0
        assert server("mcp_sidecar_upstream_pool_connections", local) == 1.0
        assert agent("mcp_sidecar_upstream_pool_pending_connections", route) == 0.0
    finally:
        mesh.upstream.gate.set()
    async with await pending as resp:
        assert resp.status == 200
        body = await resp.read()
    assert agent("mcp_sidecar_upstream_pool_idle_connections", route) == 1.0  # kept for reuse
    assert agent("mcp_sidecar_request_bytes_total", {"direction": "outbound"}) == 2.0
    assert agent("mcp_sidecar_response_bytes_total", {"direction": "outbound"}) == len(body)
    async with client.get(f"http://127.0.0.1:{mesh.server.admin_port}/metrics") as resp:
        text = await resp.text()
    assert 'mcp_sidecar_active_connections{listener="admin"} 1.0' in text  # this scrape
    assert f'mcp_sidecar_svid_time_to_expiry_seconds{{trust_domain="{TD}"}}' in text
    assert f'mcp_sidecar_bundle_time_to_expiry_seconds{{trust_domain="{TD}"}}' in text


async def test_stop_drains_in_flight_request(mesh: Mesh, client: aiohttp.ClientSession) -> None:
    pending = asyncio.create_task(client.post(f"{mesh.outbound_url}/math/slow", data=b"{}"))
    await until(lambda: len(mesh.upstream.requests) == 1, "the request at the upstream")
    stopping = asyncio.create_task(mesh.server.stop())
    await asyncio.sleep(0.1)
    mesh.upstream.gate.set()
    resp = await asyncio.wait_for(pending, WAIT)
    assert resp.status == 200 and await resp.json() == {"slow": "done"}
    resp.release()
    await asyncio.wait_for(stopping, WAIT)


async def test_quiet_sse_stream_survives_idle_timeout_with_heartbeats(
    client: aiohttp.ClientSession,
) -> None:
    limits = {"idle_timeout": "200ms", "total_timeout": "400ms", "sse_heartbeat": "50ms"}
    async with local_mesh(inbound={"limits": limits}, outbound={"limits": limits}) as mesh:
        async with client.get(f"{mesh.outbound_url}/math/sse") as resp:
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT)
            assert first == b'data: {"n": 1}\n\n'
            # Stay quiet for longer than idle and total timeouts together; heartbeats flow.
            heartbeats = 0
            while heartbeats < 12:
                chunk = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), WAIT)
                assert chunk == b": keepalive\n\n"
                heartbeats += 1
            mesh.upstream.gate.set()
            rest = await asyncio.wait_for(resp.content.read(), WAIT)
        events = [line for line in rest.split(b"\n\n") if line and not line.startswith(b":")]
        assert events == [b'data: {"n": 2}']


async def test_slow_upstream_is_504(client: aiohttp.ClientSession) -> None:
    async with local_mesh(inbound={"limits": {"idle_timeout": "200ms"}}) as mesh:
        async with client.post(f"{mesh.outbound_url}/math/slow", data=b"{}") as resp:
            assert resp.status == 504
            assert (await resp.json())["error"] == "upstream_timeout"
        mesh.upstream.gate.set()


def test_data_path_under_uvloop() -> None:
    """Production runs on uvloop (``mcp-sidecar run``): TLS-by-us must work there too."""
    import uvloop

    async def scenario() -> tuple[int, str]:
        async with (
            local_mesh() as mesh,
            aiohttp.ClientSession() as session,
            session.post(f"{mesh.outbound_url}/math/mcp", data=b"{}") as resp,
        ):
            echoed = await resp.json()
            return resp.status, echoed["headers"]["x-forwarded-client-cert"][0]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        status, xfcc = runner.run(scenario())
    assert status == 200 and xfcc.endswith(f";URI={AGENT}")


async def test_tls_handshake_failures_are_counted_by_reason(mesh: Mesh, tmp_path: Path) -> None:
    stranger = CertFactory.root(TD).issue_leaf(AGENT)  # right ID, wrong CA
    cert, key = stranger.write(tmp_path)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(cert, key)
    # TLS 1.3: the client finishes first; the server's refusal arrives on the first read.
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.inbound_port, ssl=ctx)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), WAIT)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    text = mesh.server.metrics.render()[0].decode()
    assert (
        'mcp_sidecar_tls_handshake_failures_total{direction="inbound",reason="unknown_ca"} 1.0'
        in text
    ), [line for line in text.splitlines() if "handshake" in line]
    assert mesh.upstream.requests == []


def test_many_fresh_tls_handshakes_under_uvloop(tmp_path: Path) -> None:
    """Regression: with uvloop a ClientHello arriving right after accept used to be taken for
    decrypted data, stalling some handshakes. Clients in another thread (as in production, where
    they are other processes) each make a fresh handshake; every one must complete."""
    import socket

    import uvloop

    def blocking_requests(port: int, ctx: ssl.SSLContext, count: int) -> list[str]:
        answers = []
        for _ in range(count):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                ctx.wrap_socket(raw) as tls,
            ):
                tls.sendall(
                    b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\n{}"
                )
                answers.append(tls.recv(12).decode())
        return answers

    async def scenario() -> list[str]:
        async with local_mesh() as mesh:
            chain, key = mesh.api.ca.issue_x509_svid(SpiffeId.parse(AGENT), dt.timedelta(hours=1))
            ctx = client_context(tmp_path, IssuedCert(chain[0], key))
            return await asyncio.to_thread(blocking_requests, mesh.inbound_port, ctx, 300)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        answers = runner.run(scenario())
    assert answers == ["HTTP/1.1 200"] * 300
