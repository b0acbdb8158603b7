"""The callback path (``proxy.exchange``) against the coroutine path, its oracle.

Each test drives the same client bytes through a fresh sidecar pair twice, once with both
sidecars' ``fast_path`` on and once off (every request in a task), in front of the same raw,
scripted upstream, and requires the same outcome both times: the same bytes at the upstream, the
same answers to the client (refusals included), the same access and audit lines, the same
counter values. Only what differs between any two runs is masked: times, durations, generated
ids, certificate hashes, tokens and ports. Each test also checks that the fast run really took
the callback path (the listeners' ``on_callbacks`` / ``handed_over``) and the slow run
never did, so a green test is never the oracle compared with itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.proxy.mcp_guard import McpGuard, Verdict
from sidecar.proxy.messages import Request
from sidecar.runtime import Sidecar
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.apikeys import new_key
from sidecar.tokens.claims import Principal
from tests.polling import until
from tests.proxy.mesh import AGENT, OTHER_AGENT, SERVER, Mesh, local_mesh, oauth_ingress
from tests.proxy.test_api_keys import write_keys
from tests.proxy.test_connection import Answer, Client
from tests.proxy.test_http_hardening import SMUGGLING, agent_context

RESET = b"<reset>"
"""In an upstream script: abort the connection here."""

POLICY = {
    "default": "deny",
    "rules": [{"name": "agents-call-add", "when": {"spiffe_ids": [AGENT]}, "tools": ["add"]}],
}
INBOUND = {
    "jwt_svid": {"audiences": [SERVER], "bind_to_peer": True},
    "mcp_policy": POLICY,
    "limits": {"idle_timeout": "400ms"},  # /mcp/hang: 504 without a long wait
}
ROUTE = {"jwt_svid_audience": SERVER}


def answer(status: str, body: bytes = b"", *headers: str, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


RESULT = b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"3"}]}}'
JSON = "Content-Type: application/json"
TOOLS = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "add"}, {"name": "sub"}]}}
).encode()
BIG = b'{"jsonrpc":"2.0","id":1,"result":{"pad":"' + b"x" * 300_000 + b'"}}'
SSE_HEAD = answer("200 OK", b"", "Content-Type: text/event-stream", "Cache-Control: no-cache")
SSE_HEAD = SSE_HEAD.replace(b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


# The upstream's scripts by request path: the pieces of its answer, each in its own write
# (with a pause between, so the sidecar reads them apart), or RESET.
SCRIPTS: dict[str, list[bytes]] = {
    "/mcp": [answer("200 OK", RESULT, JSON)],
    "/mcp/list": [answer("200 OK", TOOLS, JSON)],
    "/mcp/chunked": [
        answer("200 OK", b"", JSON, "Transfer-Encoding: chunked", length=False)
        + chunk(RESULT[:20])
        + chunk(RESULT[20:])
        + b"0\r\n\r\n"
    ],
    "/mcp/big": [answer("200 OK", BIG, JSON)],
    "/mcp/sse": [
        SSE_HEAD,
        chunk(b"event: message\ndata: " + RESULT + b"\n\n"),
        chunk(b"data: 2\n\n") + b"0\r\n\r\n",
    ],
    "/mcp/split": [answer("200 OK", RESULT, JSON)[:-20], answer("200 OK", RESULT, JSON)[-20:]],
    "/mcp/head-apart": [
        answer("200 OK", RESULT, JSON)[: -len(RESULT)],
        RESULT,
    ],
    "/mcp/hop": [
        answer(
            "200 OK",
            RESULT,
            JSON,
            "Connection: X-Hop, Keep-Alive",
            "X-Hop: secret",
            "Keep-Alive: timeout=5",
            "X-Kept: yes",
        )
    ],
    "/mcp/http10": [answer("200 OK", RESULT, JSON).replace(b"HTTP/1.1", b"HTTP/1.0", 1)],
    "/mcp/close": [answer("200 OK", RESULT, JSON, "Connection: close")],
    "/mcp/continue": [b"HTTP/1.1 100 Continue\r\n\r\n", answer("200 OK", RESULT, JSON)],
    "/mcp/204": [answer("204 No Content", length=False)],
    "/mcp/202": [answer("202 Accepted")],
    "/mcp/500": [answer("500 Internal Server Error", b'{"oops":1}', JSON)],
    "/mcp/reset": [RESET],
    "/mcp/reset-mid": [answer("200 OK", RESULT, JSON)[:-30], RESET],
    "/mcp/bad-head": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab"],
    "/mcp/bare-lf": [b"HTTP/1.1 200 OK\nContent-Length: 2\n\nab"],
    "/mcp/no-length": [answer("200 OK", RESULT, JSON, length=False), RESET],
    "/mcp/hang": [],
}


class RawUpstream:
    """Records every request as raw bytes and answers it by its path (``SCRIPTS``)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.ended = 0  # connections ended
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await _request_body(reader, head)
                self.received.append(head + body)
                path = head.split(b" ", 2)[1].decode().split("?")[0]
                script = SCRIPTS.get(path, SCRIPTS["/mcp"])
                if not script:  # /mcp/hang
                    await reader.read()  # until the sidecar gives up
                    return
                for i, piece in enumerate(script):
                    if piece == RESET:
                        writer.transport.abort()
                        return
                    if i:
                        await asyncio.sleep(0.05)  # a read of its own
                    writer.write(piece)
                    await writer.drain()
                if b"Connection: close" in script[-1] or script[-1].startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            self.ended += 1
            writer.close()


async def _request_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if length is not None:
        return await reader.readexactly(int(length.group(1)))
    if re.search(rb"\r\ntransfer-encoding: *chunked", head, re.IGNORECASE):
        body = bytearray()
        while not body.endswith(b"0\r\n\r\n"):
            body += await reader.readuntil(b"\r\n")
        return bytes(body)
    return b""


# -- the client side ---------------------------------------------------------------------------


@dataclass
class Step:
    """Bytes the client sends on its connection, then the answers it reads (by the request
    method each answers); ``fresh``: on a new connection."""

    data: bytes
    reads: Sequence[str] = ("POST",)
    fresh: bool = False
    abandon: bool = False
    """Close the connection once the request reached the upstream, and wait until the
    upstream's connection is closed in turn (the exchange ended on every hop)."""


_ids = iter(range(1_000_000))


def post(path: str, body: bytes | str, *extra: str, rid: str | None = None) -> bytes:
    """A request to the outbound's route ``/math``, or (``path`` without it) to the inbound;
    ``rid``: its x-request-id (else a new one)."""
    data = body.encode() if isinstance(body, str) else body
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: x",
        JSON,
        "Accept: application/json, text/event-stream",
        f"X-Request-Id: {rid or f'diff-{next(_ids)}'}",
        *extra,
        f"Content-Length: {len(data)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def call(tool: str, rid: int = 1) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": tool}}
    )


def request(line: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [line, "Host: x", f"X-Request-Id: diff-{next(_ids)}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def drive(
    port: int, steps: Sequence[Step], ctx: ssl.SSLContext | None, upstream: RawUpstream
) -> list[str]:
    """What the client saw, step by step: each answer, or how it ended; what came after an
    answer that closed the connection."""
    seen: list[str] = []
    conn: Client | None = None
    try:
        for step in steps:
            if conn is None or step.fresh:
                if conn is not None:
                    await conn.close()
                conn = await Client.connect(port, ctx)
            received, ended = len(upstream.received), upstream.ended
            await conn.send(step.data)
            if step.abandon:
                await until(_more(lambda: len(upstream.received), received), "the request upstream")
                await conn.close()
                conn = None
                await until(_more(lambda: upstream.ended, ended), "the upstream connection to end")
                continue
            for method in step.reads:
                try:
                    got = await conn.response(method=method)
                except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
                    seen.append(f"ended: {type(exc).__name__}")
                    conn = None
                    break
                seen.append(_answer_text(got))
                if got.headers.get("Connection", "").lower() == "close":
                    rest, reset = await conn.rest()
                    seen.append(f"then: {rest!r} reset={reset}")
                    await conn.close()
                    conn = None
                    break
    finally:
        if conn is not None:
            await conn.close()
    return seen


def _more(count: Callable[[], int], than: int) -> Callable[[], bool]:
    return lambda: count() > than


def _answer_text(got: Answer) -> str:
    return _mask((got.head + got.body).decode("latin-1"))


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    upstream: list[str]
    client: list[str]
    lines: list[str]
    counters: dict[str, float]
    callbacks: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per listener: (requests whose checks ran on callbacks, of those handed over to a task)."""


_MASKS = [
    (re.compile(r'"(time|duration_ms|latency_ms|expires_at|exp|iat)": ?[^,}]+'), r'"\1": *'),
    (re.compile(r"\b[0-9a-f]{32}\b"), "<id>"),
    (re.compile(r"Hash=[0-9a-f]+"), "Hash=*"),
    (re.compile(r"(Bearer |\")ey[A-Za-z0-9_.-]+"), r"\1<jwt>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:*"),
]


def _mask(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def _counters(sidecar: Sidecar) -> dict[str, float]:
    """Counter values and histogram counts (times and gauges depend on the moment)."""
    text = generate_latest(sidecar.metrics.registry).decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "histogram"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_total", "_count")):
                labels = ",".join(f"{k}={_mask(v)}" for k, v in sorted(sample.labels.items()))
                values[f"{sample.name}{{{labels}}}"] = sample.value
    return values


@dataclass
class Target:
    """What one run drives: the listener the client talks to, and the sidecars it watches."""

    port: int
    ctx: ssl.SSLContext | None
    sidecars: dict[str, Sidecar]
    lines: Callable[[], list[str]]
    token: Callable[[], str] = lambda: ""
    """A good token for ``port`` (the inbound's JWT-SVID, the ingress's OAuth token)."""
    mesh: Mesh | None = None


Start = Callable[[bool, int], contextlib.AbstractAsyncContextManager[Target]]
"""A target with fast_path on or off, in front of the upstream's port."""


def pair(side: str = "outbound", **inbound: Any) -> Start:
    """The sidecar pair of ``local_mesh`` (``INBOUND`` with ``inbound`` keys); the client
    talks to the outbound, or (``side="inbound"``) to the inbound with the agent's SVID."""

    @contextlib.asynccontextmanager
    async def start(fast: bool, upstream_port: int) -> AsyncIterator[Target]:
        async with local_mesh(
            inbound={**INBOUND, **inbound},
            route=ROUTE,
            upstream_port=upstream_port,
            fast_path=fast,
        ) as mesh:
            ctx = None
            if side == "inbound":
                with tempfile.TemporaryDirectory(prefix="diff-") as tmp:
                    ctx = agent_context(mesh, Path(tmp))  # the files are read here
            port = mesh.agent.port("outbound") if side == "outbound" else mesh.inbound_port
            yield Target(
                port,
                ctx,
                {"agent": mesh.agent, "server": mesh.server},
                lambda: mesh.agent_lines() + mesh.server_lines(),
                lambda: jwt_svid(mesh, AGENT, SERVER),
                mesh,
            )

    return start


def ingress(**inbound: Any) -> Start:
    """An OAuth-only ingress (``mtls: off``) with ``inbound`` keys."""

    @contextlib.asynccontextmanager
    async def start(fast: bool, upstream_port: int) -> AsyncIterator[Target]:
        async with oauth_ingress(upstream_port, fast_path=fast, **inbound) as edge:
            yield Target(
                edge.sidecar.port("inbound"),
                None,
                {"ingress": edge.sidecar},
                edge.lines,
                lambda: edge.issuer.token(aud=edge.url),
            )

    return start


def jwt_svid(mesh: Mesh, subject: str, audience: str) -> str:
    return mesh.api.ca.issue_jwt_svid(SpiffeId.parse(subject), [audience], dt.timedelta(hours=1))


Steps = Sequence[Step] | Callable[[Target], Sequence[Step]]
"""The client's steps, or how to make them for a target (e.g. with tokens of its issuer)."""


async def run(fast: bool, upstream: RawUpstream, steps: Steps, start: Start) -> Run:
    upstream.received.clear()
    async with start(fast, upstream.port) as target:
        if callable(steps):
            steps = steps(target)
        before = {name: _counters(s) for name, s in target.sidecars.items()}
        seen = await drive(target.port, steps, target.ctx, upstream)
        counters: dict[str, float] = {}
        for name, sidecar in target.sidecars.items():
            for key, value in _counters(sidecar).items():
                delta = value - before[name].get(key, 0.0)
                if delta:
                    counters[f"{name} {key}"] = delta
        lines = [_mask(line) for line in target.lines()]
        callbacks = {
            f"{name}/{listener}": (served.server.on_callbacks, served.server.handed_over)
            for name, s in target.sidecars.items()
            for listener, served in s.listeners.items()
            if listener in ("inbound", "outbound")
        }
    received = [_mask(r.decode("latin-1")) for r in upstream.received]
    return Run(received, seen, lines, counters, callbacks)


async def differential(steps: Steps, start: Start | None = None) -> Run:
    """The same steps through the slow and the fast target; asserts they agree and returns
    the fast run."""
    start = start or pair()
    upstream = await RawUpstream().start()
    try:
        slow = await run(False, upstream, steps, start)
        fast = await run(True, upstream, steps, start)
    finally:
        await upstream.close()
    assert all(counts == (0, 0) for counts in slow.callbacks.values()), slow.callbacks
    assert fast.client == slow.client
    assert fast.upstream == slow.upstream
    assert fast.lines == slow.lines
    assert fast.counters == slow.counters
    return fast


def on_callbacks(run: Run, listener: str) -> int:
    return run.callbacks[listener][0]


# -- the tests ---------------------------------------------------------------------------------


def warm(path: str = "/math/mcp") -> Step:
    """A first call: the pools are empty, so it takes the coroutine path in both runs."""
    return Step(post(path, call("add")))


async def test_mcp_exchanges_agree() -> None:
    big = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","pad":"%s"}}'
    steps = [
        warm(),
        Step(post("/math/mcp", call("add"))),
        Step(post("/math/mcp", call("sub"))),  # denied by the policy
        Step(post("/math/mcp/list", '{"jsonrpc":"2.0","id":2,"method":"tools/list"}')),
        Step(post("/math/mcp", call("add"))),  # after the list: "add" is a known tool label
        Step(post("/math/mcp", '{"jsonrpc":"2.0","method":"notifications/initialized"}')),
        Step(post("/math/mcp", f"[{call('add', 1)},{call('sub', 2)}]")),  # batch
        Step(post("/math/mcp", "{nope")),
        Step(post("/math/mcp", '{"a":1}')),
        Step(post("/math/mcp", b"")),
        Step(post("/math/mcp", call("add"), "Origin: https://evil.example")),
        Step(request("GET /math/mcp HTTP/1.1"), ("GET",)),
        Step(request("DELETE /math/mcp HTTP/1.1", "Mcp-Session-Id: s1"), ("DELETE",)),
        Step(request("HEAD /math/mcp HTTP/1.1"), ("HEAD",)),
        Step(post("/math/mcp", call("add")) + post("/math/mcp", call("sub")), ("POST", "POST")),
        Step(post("/math/mcp", call("add"), "Expect: 100-continue")),
        Step(post("/math/mcp", call("add"), "Connection: close")),
        Step(post("/math/mcp", call("add")), fresh=True),
        Step(post("/math/mcp", call("add")).replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        Step(post("/math/mcp", call("add")), fresh=True),
        Step(post("/math/mcp", big % ("y" * 60_000))),  # larger than a request served on callbacks
        Step(
            request("POST /math/mcp HTTP/1.1", JSON, "Transfer-Encoding: chunked")
            + chunk(call("add").encode())
            + b"0\r\n\r\n"
        ),
        Step(post("/math/mcp", call("add"))),
    ]
    fast = await differential(steps)
    assert on_callbacks(fast, "agent/outbound") >= 10
    assert on_callbacks(fast, "server/inbound") >= 10


DISCARDING = {
    "/http10",
    "/close",
    "/reset",
    "/reset-mid",
    "/bad-head",
    "/bare-lf",
    "/no-length",
    "/hang",
}
"""Answers after which the inbound's upstream connection is not reused."""


@pytest.mark.parametrize(
    "path",
    [
        "/chunked",
        "/big",
        "/sse",
        "/split",
        "/head-apart",
        "/hop",
        "/continue",
        "/204",
        "/202",
        "/500",
        *sorted(DISCARDING),
    ],
)
async def test_upstream_answers_agree(path: str) -> None:
    """Every shape of answer (streamed, large, late, broken, silent) on a warm pool, then a
    plain call on the same client connection."""
    steps = [
        warm(),
        Step(post(f"/math/mcp{path}", call("add"))),
        Step(post("/math/mcp", call("add"))),
    ]
    fast = await differential(steps)
    # the answer under test began on callbacks; so did the call after it, on a kept connection
    assert on_callbacks(fast, "server/inbound") == (1 if path in DISCARDING else 2)


REFUSED_SHAPES = {
    **{f"smuggling-{name}": shape for name, shape in SMUGGLING.items()},
    "bare-lf": b"GET /math/mcp HTTP/1.1\nHost: x\n\n",
    "mixed-line-ends": b"GET /math/mcp HTTP/1.1\r\nHost: x\n\r\n",
    "bad-host": b"GET /math/mcp HTTP/1.1\r\nHost: a b\r\n\r\n",
    "method": request("FOO /math/mcp HTTP/1.1"),
    "connect": request("CONNECT math.local:443 HTTP/1.1"),
    "get-with-body": request("GET /math/mcp HTTP/1.1", body=b"{}"),
    "traversal": request("GET /math/%2e%2e/admin HTTP/1.1"),
    "encoded-slash": request("POST /math/mcp/..%2Fadmin HTTP/1.1", JSON, body=b"{}"),
    "no-route": post("/elsewhere/mcp", call("add")),
    "https-target": post("https://math.local/math/mcp", call("add")),
    "huge-length": request("POST /math/mcp HTTP/1.1", "Content-Length: 99999999999"),
}


@pytest.mark.parametrize("shape", list(REFUSED_SHAPES))
async def test_refused_shapes_agree(shape: str) -> None:
    """The smuggling and malformed shapes of the hardening tests, after a call that warmed
    the pools, on the same connection, then a call on a fresh one."""
    steps = [
        warm(),
        Step(post("/math/mcp", call("add"))),
        Step(REFUSED_SHAPES[shape], ("GET",)),
        Step(post("/math/mcp", call("add")), fresh=True),
    ]
    fast = await differential(steps)
    assert on_callbacks(fast, "agent/outbound") >= 1  # the call before the shape


def bearer_calls(tokens: Sequence[str | None]) -> list[Step]:
    auth = [[f"Authorization: Bearer {t}"] if t is not None else [] for t in tokens]
    return [Step(post("/mcp", call("add"), *a, rid=f"tok-{i}")) for i, a in enumerate(auth)]


async def test_inbound_token_checks_agree() -> None:
    """Straight into the inbound (mTLS as the agent): JWT-SVIDs good, missing, broken, for
    another audience, for another workload than the peer."""

    def steps(target: Target) -> list[Step]:
        assert target.mesh is not None
        good = target.token()
        return bearer_calls(
            [
                good,
                good,
                None,
                "not-a-jwt",
                good[:-4] + "AAAA",
                jwt_svid(target.mesh, AGENT, "spiffe://example.org/elsewhere"),
                jwt_svid(target.mesh, OTHER_AGENT, SERVER),
                good,
            ]
        )

    fast = await differential(steps, pair("inbound"))
    assert on_callbacks(fast, "server/inbound") >= 6  # the refusals and the later calls


async def test_oauth_ingress_agrees() -> None:
    """OAuth access tokens: the first one is verified in a task (keys to fetch), the same one
    again on callbacks (remembered); refusals of bad tokens in both."""

    def steps(target: Target) -> list[Step]:
        good = target.token()
        return bearer_calls([good, good, None, "x.y.z", good[:-4] + "AAAA", good, target.token()])

    policy = {"default": "deny", "rules": [{"name": "users-call-add", "tools": ["add"]}]}
    fast = await differential(steps, ingress(mcp_policy=policy))
    assert on_callbacks(fast, "ingress/inbound") >= 3


@pytest.mark.parametrize(
    "inbound",
    [
        {"rate_limits": [{"per": "principal", "rate": "1/h", "burst": 4}]},
        {"rate_limits": [{"per": "principal_tool", "rate": "1/h", "burst": 2, "tools": ["add"]}]},
        {"mcp_policy": {**POLICY, "dry_run": True}},
        {"allowed_origins": ["https://app.example"]},
    ],
    ids=["rate-limit", "rate-limit-per-tool", "dry-run", "origins"],
)
async def test_inbound_options_agree(inbound: dict[str, Any]) -> None:
    """Rate limits (counted once, whichever path), a dry-run policy (answers watched),
    allowed origins."""
    steps = [
        warm(),
        *(Step(post("/math/mcp", call("add"))) for _ in range(3)),
        Step(post("/math/mcp", call("sub"))),
        Step(post("/math/mcp/list", '{"jsonrpc":"2.0","id":2,"method":"tools/list"}')),
        Step(post("/math/mcp", call("add"), "Origin: https://app.example")),
        Step(post("/math/mcp", call("add"), "Origin: https://evil.example")),
        Step(post("/math/mcp", call("add"))),
    ]
    fast = await differential(steps, pair(**inbound))
    assert on_callbacks(fast, "server/inbound") >= 3


async def test_api_keys_agree(tmp_path: Path) -> None:
    """API keys: derived in a task the first time, remembered on callbacks after; a wrong
    secret for a remembered key id goes back to the derivation and is refused in both runs."""
    key_id, key = new_key()
    path = tmp_path / "keys.yaml"
    write_keys(path, (key_id, key, "ci-bot", []))
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    keys = [key, key, wrong_secret, new_key()[1], "mcpk_nope", key]
    steps = [warm(), *(Step(post("/math/mcp", call("add"), f"X-API-Key: {k}")) for k in keys)]
    api_keys = {"file": str(path), "header": "X-API-Key", "reload_interval": 3600}
    policy = {"default": "deny", "rules": [{"name": "bot-add", "tools": ["add"]}]}
    fast = await differential(steps, pair(api_keys=api_keys, mcp_policy=policy))
    assert on_callbacks(fast, "server/inbound") >= 3


async def test_client_gone_mid_exchange_agrees() -> None:
    """The client leaves while the upstream is still working: the same upstream connection
    closed, the same 499 lines, whichever path forwarded the request."""
    steps = [
        warm(),
        Step(post("/math/mcp/hang", call("add")), abandon=True),
        warm(),
        Step(post("/math/mcp/hang", call("add")), abandon=True),
    ]
    fast = await differential(steps, pair(limits={"idle_timeout": "60s"}))
    assert fast.callbacks["agent/outbound"] == fast.callbacks["server/inbound"] == (2, 0)


async def test_differences_are_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison can fail: a callback path that dropped the tool policy's refusal is
    caught (the same break on both paths would not be: the policy's own tests see that)."""
    inspect = McpGuard.inspect

    def lax(
        self: McpGuard, request: Request, principal: Principal, body: bytes, **kw: bool
    ) -> Verdict | None:
        verdict = inspect(self, request, principal, body, **kw)
        if kw.get("rewrite_ok") is False and verdict is not None:
            verdict.refusal = None
        return verdict

    monkeypatch.setattr(McpGuard, "inspect", lax)
    with pytest.raises(AssertionError):
        await differential([warm(), Step(post("/math/mcp", call("sub")))])
