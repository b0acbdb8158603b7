"""Raw-socket tests of both listeners: request smuggling shapes, slow headers, oversized heads,
bare line ends, Host, methods, path traversal, hop-by-hop answer headers and HTTP proxy mode.

Each refused shape must get its status and never reach the upstream."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from sidecar.spiffe.ids import SpiffeId
from tests.certfactory import IssuedCert
from tests.proxy.mesh import AGENT, WAIT, Mesh, local_mesh, proxy_outbound_config
from tests.proxy.test_connection import Answer, Client, client
from tests.tlsharness import client_context


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    async with local_mesh(outbound={"limits": {"header_timeout": "300ms"}}) as m:
        yield m


async def raw_exchange(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), WAIT)
    finally:
        writer.close()


# shape -> (request, the reason our parser names in the JSON error)
SMUGGLING = {
    "content_length_with_chunked": (
        b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "duplicate_content_length": (
        b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"
    ),
    "conflicting_content_length": (
        b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\nabcde"
    ),
    "obs_fold": (
        b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nab"
    ),
    "chunked_not_last": (
        b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
        b"0\r\n\r\n"
    ),
    "space_before_colon": (b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nContent-Length : 2\r\n\r\nab"),
}


REASONS = {
    "content_length_with_chunked": "content_length_with_chunked",
    "duplicate_content_length": "duplicate_content_length",
    "conflicting_content_length": "duplicate_content_length",
    "obs_fold": "malformed_request",
    "chunked_not_last": "bad_transfer_encoding",
    "space_before_colon": "malformed_request",
}


@pytest.mark.parametrize("shape", list(SMUGGLING))
async def test_smuggling_shapes_get_400_and_never_reach_upstream(mesh: Mesh, shape: str) -> None:
    answer = await raw_exchange(mesh.agent.port("outbound"), SMUGGLING[shape])
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == REASONS[shape]
    assert b"Connection: close" in answer.split(b"\r\n\r\n", 1)[0]
    assert mesh.upstream.requests == []


async def test_slow_request_head_is_cut_off(mesh: Mesh) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.agent.port("outbound"))
    try:
        writer.write(b"POST /math/mcp HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        # Keep trickling header bytes: the connection must still be closed by the head timeout.
        for _ in range(50):
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            if reader.at_eof():
                break
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.1)
            except TimeoutError:
                continue
            assert data == b""  # closed without any response
            break
        else:
            pytest.fail("connection still open after 5 s of trickled headers")
    except ConnectionResetError:
        pass  # also acceptable: the sidecar reset the connection
    finally:
        writer.close()
    assert mesh.upstream.requests == []


async def test_oversized_header_is_rejected(mesh: Mesh) -> None:
    big = b"X-Big: " + b"a" * 70000 + b"\r\n"
    answer = await raw_exchange(
        mesh.agent.port("outbound"), b"GET /math/mcp HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n"
    )
    assert answer.split(b" ", 2)[1] == b"431", answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "header_too_large"
    assert mesh.upstream.requests == []


async def test_keepalive_connection_serves_several_requests(mesh: Mesh) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.agent.port("outbound"))
    try:
        for n in range(3):
            writer.write(b"POST /math/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200"), head
            length = int(
                next(
                    line.split(b":", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
            )
            await asyncio.wait_for(reader.readexactly(length), WAIT)
            assert len(mesh.upstream.requests) == n + 1
    finally:
        writer.close()


# -- helpers for both listeners -----------------------------------------------------------------


def agent_context(mesh: Mesh, tmp_path: Path) -> ssl.SSLContext:
    """A TLS client presenting the agent's SVID, to talk to the inbound directly."""
    chain, key = mesh.api.ca.issue_x509_svid(SpiffeId.parse(AGENT), dt.timedelta(hours=1))
    return client_context(tmp_path, IssuedCert(chain[0], key))


@contextlib.asynccontextmanager
async def connect(mesh: Mesh, side: str, tmp_path: Path) -> AsyncIterator[Client]:
    """A raw client of the outbound (plain) or of the inbound (mTLS as the agent)."""
    if side == "outbound":
        async with client(mesh.agent.port("outbound")) as c:
            yield c
    else:
        async with client(mesh.inbound_port, agent_context(mesh, tmp_path)) as c:
            yield c


async def ask(mesh: Mesh, side: str, tmp_path: Path, payload: bytes, method: str = "GET") -> Answer:
    async with connect(mesh, side, tmp_path) as c:
        await c.send(payload)
        return await c.response(method=method)


def request(line: str, *headers: str, body: bytes = b"") -> bytes:
    """A request to either side; ``/mcp`` is ``/math/mcp`` on the outbound (route prefix)."""
    if body:
        headers = (*headers, f"Content-Length: {len(body)}")
    return ("\r\n".join((line, *headers)) + "\r\n\r\n").encode("latin-1") + body


def on(side: str, path: str) -> str:
    return "/math" + path if side == "outbound" and path.startswith("/") else path


SIDES = ["outbound", "inbound"]


# -- defect: bare LF heads ----------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "payload",
    [b"GET /mcp HTTP/1.1\nHost: x\n\n", b"GET /mcp HTTP/1.1\r\nHost: x\n\r\n"],
    ids=["bare-lf", "mixed"],
)
async def test_bare_lf_head_gets_400_at_once(
    mesh: Mesh, side: str, payload: bytes, tmp_path: Path
) -> None:
    """Not a silent close at header_timeout (the inbound's is 10 s, beyond the client's wait)."""
    async with connect(mesh, side, tmp_path) as c:
        await c.send(payload)
        answer = await asyncio.wait_for(c.response(), 5)
    assert answer.status == 400
    assert answer.json()["error"] == "malformed_request"
    assert mesh.upstream.requests == []


# -- defect: Host ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "host", ["a b", "user@math.local", "math.local/admin", "math.local:99999", "[::1", "a:b:c"]
)
async def test_invalid_host_gets_400(mesh: Mesh, side: str, host: str, tmp_path: Path) -> None:
    answer = await ask(
        mesh, side, tmp_path, request(f"GET {on(side, '/mcp')} HTTP/1.1", f"Host: {host}")
    )
    assert answer.status == 400
    assert answer.json()["error"] == "bad_host"
    assert mesh.upstream.requests == []


# -- defect: methods ------------------------------------------------------------------------------

JSONRPC_CALL = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add"}}'


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("method", ["post", "Post", "FOO", "PUT", "PATCH", "TRACE", "OPTIONS"])
async def test_methods_outside_mcp_get_405_with_allow(
    mesh: Mesh, side: str, method: str, tmp_path: Path
) -> None:
    """Methods are case-sensitive; OPTIONS only with allowed_origins (none set here)."""
    payload = request(f"{method} {on(side, '/mcp')} HTTP/1.1", "Host: x", body=JSONRPC_CALL)
    answer = await ask(mesh, side, tmp_path, payload)
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST, GET, DELETE, HEAD"
    assert answer.json()["error"] == "method_not_allowed"
    assert method[:4] in answer.json()["message"]
    assert mesh.upstream.requests == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("target", ["/mcp", "math.local:443"])
async def test_connect_is_refused_and_the_connection_closed(
    mesh: Mesh, side: str, target: str, tmp_path: Path
) -> None:
    async with connect(mesh, side, tmp_path) as c:
        await c.send(request(f"CONNECT {on(side, target)} HTTP/1.1", "Host: math.local:443"))
        answer = await c.response()
        assert await c.closed_by_server() == b""
    assert answer.status == 405
    assert answer.headers["Connection"] == "close"
    assert "Allow" in answer.headers
    assert "CONNECT" in answer.json()["message"] and "tunnel" in answer.json()["message"]
    assert mesh.upstream.requests == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("method", ["GET", "DELETE", "HEAD"])
async def test_only_post_may_carry_a_body(
    mesh: Mesh, side: str, method: str, tmp_path: Path
) -> None:
    path = on(side, "/mcp")
    answer = await ask(
        mesh,
        side,
        tmp_path,
        request(f"{method} {path} HTTP/1.1", "Host: x", body=JSONRPC_CALL),
        method,
    )
    assert answer.status == 400
    chunked = request(f"{method} {path} HTTP/1.1", "Host: x", "Transfer-Encoding: chunked")
    assert (await ask(mesh, side, tmp_path, chunked + b"0\r\n\r\n", method)).status == 400
    assert mesh.upstream.requests == []
    # without a body (or with an empty one) they pass
    empty = request(f"{method} {path} HTTP/1.1", "Host: x", "Content-Length: 0")
    assert (await ask(mesh, side, tmp_path, empty, method)).status == 200
    assert [seen.method for seen in mesh.upstream.requests] == [method]


async def test_mcp_guard_sees_every_body_that_reaches_the_server(tmp_path: Path) -> None:
    """Under a deny-all policy a tools/call body never reaches the server, whatever the
    method's spelling: only POST carries a body, and every POST body is inspected."""
    async with local_mesh(inbound={"mcp_policy": {"default": "deny"}}) as mesh:
        for method in ("POST", "post", "PUT", "GET", "DELETE", "OPTIONS", "FOO"):
            payload = request(f"{method} /mcp HTTP/1.1", "Host: x", body=JSONRPC_CALL)
            answer = await ask(mesh, "inbound", tmp_path, payload, method)
            assert answer.status in (400, 403, 405), (method, answer.status)
        assert mesh.upstream.requests == []


@pytest.mark.parametrize("side", SIDES)
async def test_options_passes_where_allowed_origins_admits_browsers(
    side: str, tmp_path: Path
) -> None:
    origins = {"allowed_origins": ["http://app.example"]}
    async with local_mesh(inbound=origins, outbound=origins) as mesh:
        preflight = request(
            f"OPTIONS {on(side, '/mcp')} HTTP/1.1",
            "Host: x",
            "Origin: http://app.example",
            "Access-Control-Request-Method: POST",
        )
        answer = await ask(mesh, side, tmp_path, preflight)
        assert answer.status == 200
        assert [seen.method for seen in mesh.upstream.requests] == ["OPTIONS"]
        foo = await ask(
            mesh, side, tmp_path, request(f"FOO {on(side, '/mcp')} HTTP/1.1", "Host: x")
        )
        assert foo.headers["Allow"] == "POST, GET, DELETE, HEAD, OPTIONS"


# -- defect: path traversal -----------------------------------------------------------------------

TRAVERSALS = [
    "/math/../admin",
    "/math/%2e%2e/admin",
    "/math/%2E%2E/admin",
    "/math/.%2e/admin",
    "/math/x/../../admin",
    "/math/..",
    "/math/%2E%2E",
    "/math/./../admin",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_outbound_traversal_never_leaves_the_route_prefix(mesh: Mesh, path: str) -> None:
    """The only route is /math: once normalised, these paths are outside it (404)."""
    answer = await ask(mesh, "outbound", Path(), request(f"GET {path} HTTP/1.1", "Host: x"))
    assert answer.status == 404, answer.body
    assert answer.json()["error"] == "no_route"
    assert mesh.upstream.requests == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "path",
    ["/mcp/%2e%2e%2fadmin", "/mcp/..%2Fadmin", "/mcp/..%5cadmin", "/mcp/..\\admin", "/mcp/%"],
)
async def test_encoded_slashes_and_backslashes_get_400(
    mesh: Mesh, side: str, path: str, tmp_path: Path
) -> None:
    answer = await ask(mesh, side, tmp_path, request(f"GET {on(side, path)} HTTP/1.1", "Host: x"))
    assert answer.status == 400
    assert answer.json()["error"] == "bad_path"
    assert mesh.upstream.requests == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    ("path", "seen"),
    [
        ("/mcp/a/../b", "/mcp/b"),
        ("/mcp/./x/%2e%2e/y?q=/../z&r=%2e%2e", "/mcp/y?q=/../z&r=%2e%2e"),  # query as sent
        ("/mcp/%252e%252e/admin", "/mcp/%252e%252e/admin"),  # double-encoded: data
        ("/mcp/%7euser", "/mcp/~user"),
        ("/mcp/../../../etc/passwd", "/etc/passwd"),
    ],
)
async def test_what_is_forwarded_is_the_normalised_path(
    mesh: Mesh, side: str, path: str, seen: str, tmp_path: Path
) -> None:
    """Through the outbound (prefix /math stripped) and straight into the inbound."""
    target = f"/math{path}" if side == "outbound" else path
    answer = await ask(mesh, side, tmp_path, request(f"GET {target} HTTP/1.1", "Host: x"))
    if side == "outbound" and not seen.startswith("/mcp"):
        assert answer.status == 404  # /math/mcp/../../../etc/passwd is not under /math
        assert mesh.upstream.requests == []
        return
    assert answer.status == 200
    assert [r.path for r in mesh.upstream.requests] == [seen]


# -- defect: headers named in the upstream's Connection header ------------------------------------

HOP_HEADERS = (
    b"Connection: X-Hop, Keep-Alive\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
    b"Proxy-Authenticate: Basic\r\nTrailer: X-T\r\nUpgrade: h2c\r\nX-Kept: yes\r\n"
)


class HopUpstream:
    """A raw HTTP/1.1 server whose answers name a header in ``Connection``: a small JSON body,
    a large one (streamed by the proxy) and an SSE stream."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":", 1)[1]))
                if path == b"/sse":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                        + HOP_HEADERS
                        + b"Transfer-Encoding: chunked\r\n\r\n"
                        + b"9\r\ndata: x\n\n\r\n0\r\n\r\n"
                    )
                else:
                    body = b"[" + b"1," * (300_000 if path == b"/big" else 10) + b"1]"
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + HOP_HEADERS
                        + b"Content-Length: %d\r\n\r\n" % len(body)
                        + body
                    )
                await writer.drain()
        writer.close()


@pytest.mark.parametrize("path", ["/small", "/big", "/sse"])
async def test_headers_named_in_the_upstreams_connection_header_are_not_forwarded(
    path: str,
) -> None:
    """RFC 9110 §7.6.1: through the inbound and then the outbound, JSON (one write or
    streamed) and SSE answers alike."""
    upstream = HopUpstream()
    port = await upstream.start()
    try:
        async with (
            local_mesh(upstream_port=port) as mesh,
            aiohttp.ClientSession() as session,
            session.get(f"{mesh.outbound_url}/math{path}") as resp,
        ):
            assert resp.status == 200
            await resp.read()
            names = {name.lower() for name in resp.headers}
    finally:
        await upstream.close()
    assert "x-kept" in names
    for hop in ("x-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in names, hop


# -- defect: HTTP proxy mode on the outbound ------------------------------------------------------


@pytest.fixture
async def proxy_mesh() -> AsyncIterator[Mesh]:
    async with local_mesh() as mesh:
        config = proxy_outbound_config(mesh.sockets["agent"], mesh.inbound_port)
        mesh.agent = await mesh.sidecar(config)  # the outbound under test
        yield mesh


async def test_outbound_as_http_proxy_routes_by_the_target_authority(proxy_mesh: Mesh) -> None:
    """aiohttp with proxy= sends ``POST http://math.local/mcp``: the agent keeps its ordinary
    URL, the outbound routes by host and path and upgrades to mTLS."""
    mesh = proxy_mesh
    async with aiohttp.ClientSession() as session:
        async with session.post(
            "http://math.local/mcp?x=1", proxy=mesh.outbound_url, data=b"{}"
        ) as resp:
            assert resp.status == 200, await resp.text()
            echoed = await resp.json()
        async with session.get("http://other.local/mcp", proxy=mesh.outbound_url) as resp:
            assert resp.status == 502  # routed to the dead end, not to math
    assert echoed["path"] == "/mcp?x=1"
    assert echoed["headers"]["x-forwarded-client-cert"][0].endswith(f";URI={AGENT}")
    assert [r.path for r in mesh.upstream.requests] == ["/mcp?x=1"]


async def test_http_proxy_env_is_honoured(
    proxy_mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HTTP_PROXY=http://127.0.0.1:OUT`` for a client that reads it (trust_env)."""
    for name in ("NO_PROXY", "no_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy_mesh.outbound_url)
    async with (
        aiohttp.ClientSession(trust_env=True) as session,
        session.get("http://math.local/mcp") as resp,
    ):
        assert resp.status == 200
    assert [r.path for r in proxy_mesh.upstream.requests] == ["/mcp"]


async def test_absolute_form_authority_wins_over_the_host_header(proxy_mesh: Mesh) -> None:
    async with client(proxy_mesh.agent.port("outbound")) as c:
        await c.send(request("GET http://math.local/mcp HTTP/1.1", "Host: other.local"))
        assert (await c.response()).status == 200
        await c.send(request("GET http://other.local/mcp HTTP/1.1", "Host: math.local"))
        assert (await c.response()).status == 502
    assert [r.path for r in proxy_mesh.upstream.requests] == ["/mcp"]


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("GET https://math.local/mcp HTTP/1.1", 400, "https_proxy_request"),
        ("GET http://math.local/../admin HTTP/1.1", 200, None),  # normalised: /admin on math
        ("GET http://user@math.local/mcp HTTP/1.1", 400, "malformed_request"),
        ("GET ftp://math.local/mcp HTTP/1.1", 400, "malformed_request"),
        ("CONNECT math.local:443 HTTP/1.1", 405, "method_not_allowed"),
    ],
)
async def test_proxy_requests_the_outbound_refuses(
    proxy_mesh: Mesh, line: str, status: int, reason: str | None
) -> None:
    answer = await ask(proxy_mesh, "outbound", Path(), request(line, "Host: math.local"))
    assert answer.status == status
    if reason is not None:
        assert answer.json()["error"] == reason
        assert proxy_mesh.upstream.requests == []
    else:
        assert [r.path for r in proxy_mesh.upstream.requests] == ["/admin"]


async def test_curl_through_the_outbound_as_http_proxy(proxy_mesh: Mesh) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    process = await asyncio.create_subprocess_exec(
        curl,
        "-sS",
        "--max-time",
        "10",
        "-x",
        proxy_mesh.outbound_url,
        "-H",
        "Content-Type: application/json",
        "-d",
        '{"jsonrpc":"2.0","id":1,"method":"ping"}',
        "http://math.local/mcp",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT)
    assert process.returncode == 0, err
    echoed = json.loads(out)
    assert (echoed["method"], echoed["path"]) == ("POST", "/mcp")
    assert json.loads(echoed["body"])["method"] == "ping"


async def test_inbound_serves_an_absolute_form_target_like_its_path(
    mesh: Mesh, tmp_path: Path
) -> None:
    payload = request("GET https://math.mcp.svc:8443/mcp?a=b HTTP/1.1", "Host: math.mcp.svc")
    answer = await ask(mesh, "inbound", tmp_path, payload)
    assert answer.status == 200
    seen = mesh.upstream.requests[0]
    assert seen.path == "/mcp?a=b"
    assert seen.headers["host"] == [f"127.0.0.1:{mesh.upstream.port}"]
