"""The HTTP/1.1 server engine (``sidecar.proxy.connection``) over real loopback sockets.

Every test runs a listener with a tiny handler and talks to it from a raw asyncio client that
writes bytes exactly as given and reads the answer's framing itself (no HTTP client library that
could paper over a framing mistake). Each test isolates one behaviour of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from multidict import CIMultiDict

from sidecar.config import Limits
from sidecar.proxy.connection import Listener, TlsPolicy, start_listener
from sidecar.proxy.errors import ProxyError
from sidecar.proxy.messages import Request, Response, json_response
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected
from tests.certfactory import CertFactory, IssuedCert

WAIT = 10.0  # bound on every wait for something that must happen
Handler = Callable[[Request], Awaitable[Response]]


# -- server side ------------------------------------------------------------------------------


def settings(**overrides: Any) -> Limits:
    values: dict[str, Any] = {
        "header_timeout": 30.0,
        "keepalive_timeout": 30.0,
        "max_header_size": 8190,
        "max_request_body": 1 << 20,
    }
    values.update(overrides)
    return Limits(**values)


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, *, tls: TlsPolicy | None = None, **overrides: Any
) -> AsyncIterator[Listener]:
    listener = await start_listener(
        "test", handler, "127.0.0.1", 0, tls=tls, limits=settings(**overrides)
    )
    try:
        yield listener
    finally:
        await asyncio.wait_for(listener.close(0.2), WAIT)


async def echo(request: Request) -> Response:
    """What the engine handed over, as JSON; body refusals as the proxies answer them."""
    try:
        body = await request.read_body()
    except ProxyError as exc:
        # not close=True on purpose: closing after a refused body is the engine's business
        return json_response(exc.to_json(), status=exc.status)
    return json_response(
        {
            "method": request.method,
            "path": request.raw_path,
            "version": request.version,
            "scheme": request.scheme,
            "body": body.decode("latin-1"),
            "headers": [[k, v] for k, v in request.headers.items()],
        }
    )


@dataclass
class Releases:
    """Counts ``Response.release`` calls; ``done`` is set on the first."""

    count: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self) -> None:
        self.count += 1
        self.done.set()


# -- client side ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    reason: str
    headers: CIMultiDict[str]
    body: bytes
    chunks: list[bytes]  # the chunk payloads, for a chunked answer
    head: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A raw HTTP/1.1 client: sends bytes as given, parses what comes back strictly."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, limit=1 << 20), WAIT
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), WAIT)

    async def trickle(self, *pieces: bytes) -> None:
        """Each piece in its own write, with a pause so the server reads them separately."""
        for piece in pieces:
            await self.send(piece)
            await asyncio.sleep(0.02)

    async def response(self, *, method: str = "GET") -> Answer:
        reader = self.reader
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head[:-4].decode("latin-1").split("\r\n")
        version, status_text, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        status = int(status_text)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, sep, value = line.partition(": ")
            assert sep, f"malformed header line {line!r}"
            headers.add(name, value)
        assert not ("Content-Length" in headers and "Transfer-Encoding" in headers), head
        chunks: list[bytes] = []
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "Content-Length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), WAIT)
        elif headers.get("Transfer-Encoding") == "chunked":
            while True:
                size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), WAIT)
                size = int(size_line[:-2], 16)
                if size == 0:
                    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
                    break
                chunks.append(await asyncio.wait_for(reader.readexactly(size), WAIT))
                assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
            body = b"".join(chunks)
        else:  # close-delimited
            body = await asyncio.wait_for(reader.read(), WAIT)
        return Answer(status, reason, headers, body, chunks, head)

    async def rest(self, timeout: float = WAIT) -> tuple[bytes, bool]:
        """Everything until the server ends the connection: (bytes, whether it was a reset)."""
        data = bytearray()
        try:
            while chunk := await asyncio.wait_for(self.reader.read(65536), timeout):
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            return bytes(data), True
        return bytes(data), False

    async def closed_by_server(self) -> bytes:
        """Wait (bounded) until the server ends the connection; returns what came before."""
        data, _ = await self.rest()
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), WAIT)


@contextlib.asynccontextmanager
async def client(port: int, ctx: ssl.SSLContext | None = None) -> AsyncIterator[Client]:
    c = await Client.connect(port, ctx)
    try:
        yield c
    finally:
        await c.close()


def get(path: str, *extra: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def post(path: str, body: bytes, *extra: str) -> bytes:
    return get(path, f"Content-Length: {len(body)}", *extra, method="POST") + body


# -- 1. keep-alive and pipelining -------------------------------------------------------------


async def test_keep_alive_connection_answers_several_requests_in_order() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        for n in range(4):
            await c.send(post(f"/req{n}", f"body {n}".encode()))
            answer = await c.response()
            assert answer.status == 200
            assert answer.json()["path"] == f"/req{n}"
            assert answer.json()["body"] == f"body {n}"
            assert "Connection" not in answer.headers  # HTTP/1.1: keep-alive is the default
        assert len(listener.server.connections) == 1


async def test_pipelined_requests_in_one_write_are_answered_in_order_one_at_a_time() -> None:
    events: list[str] = []

    async def handler(request: Request) -> Response:
        events.append(f"start {request.path}")
        if request.path == "/slow":
            await asyncio.sleep(0.1)  # a later request must still wait for this one
        response = await echo(request)
        events.append(f"end {request.path}")
        return response

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(
            get("/slow")
            + post("/with-body", b"hello")
            + get("/chunked", "Transfer-Encoding: chunked", method="POST")
            + b"3\r\nabc\r\n0\r\n\r\n"
            + get("/last")
        )
        answers = [await c.response() for _ in range(4)]
    assert [a.json()["path"] for a in answers] == ["/slow", "/with-body", "/chunked", "/last"]
    assert [a.json()["body"] for a in answers] == ["", "hello", "abc", ""]
    assert events == [
        "start /slow",
        "end /slow",
        "start /with-body",
        "end /with-body",
        "start /chunked",
        "end /chunked",
        "start /last",
        "end /last",
    ]


async def test_pipelined_flood_is_held_back_while_a_request_is_in_flight() -> None:
    """Requests queued behind a busy one are not read without bound: the server stops reading,
    so the client's writes back up (in the kernel, then in the client's own buffer)."""
    gate = asyncio.Event()

    async def handler(request: Request) -> Response:
        await gate.wait()
        return await echo(request)

    flood = get("/p") * ((32 << 20) // len(get("/p")))  # 32 MiB of pipelined requests
    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/busy"))
        c.writer.write(flood)
        transport = c.writer.transport
        last = -1
        async with asyncio.timeout(WAIT):
            while transport.get_write_buffer_size() != last:
                last = transport.get_write_buffer_size()
                await asyncio.sleep(0.2)
        assert last > len(flood) // 2  # most of it is still on the client's side
        transport.abort()


# -- 2. request bodies ------------------------------------------------------------------------


async def test_content_length_body_reaches_the_handler_intact() -> None:
    body = bytes(range(256)) * 40
    async with serving(echo) as listener, client(listener.port) as c:
        request = post("/upload", body)
        await c.trickle(request[:50], request[50:3000], request[3000:])
        answer = await c.response()
    assert answer.status == 200
    assert answer.json()["body"].encode("latin-1") == body


async def test_chunked_body_split_across_writes_reaches_the_handler_intact() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        await c.trickle(
            get("/chunked", "Transfer-Encoding: chunked", method="POST"),
            b"5\r\nhel",  # inside the data
            b"lo\r",  # between CR and LF
            b"\n6;ext=1\r\n wor",  # a chunk extension
            b"ld\r\n1",  # inside a size line
            b"0\r\n0123456789abcdef\r\n0\r",
            b"\nX-Trailer: dropped\r\n\r\n",
        )
        answer = await c.response()
        assert answer.status == 200
        assert answer.json()["body"] == "hello world0123456789abcdef"
        assert "X-Trailer" not in {k for k, _ in answer.json()["headers"]}
        # the trailer section was consumed exactly: the connection goes on
        await c.send(get("/after"))
        assert (await c.response()).json()["path"] == "/after"


async def test_chunked_body_over_the_limit_gets_413_json() -> None:
    seen: list[int] = []

    async def handler(request: Request) -> Response:
        try:
            seen.append(len(await request.read_body()))
        except ProxyError as exc:
            return json_response(exc.to_json(), status=exc.status)
        return json_response({"ok": True})

    async with serving(handler, max_request_body=100) as listener, client(listener.port) as c:
        await c.send(get("/big", "Transfer-Encoding: chunked", method="POST"))
        await c.trickle(b"40\r\n" + b"a" * 64 + b"\r\n", b"40\r\n" + b"b" * 64 + b"\r\n")
        answer = await c.response()
    assert answer.status == 413
    assert answer.json()["error"] == "request_body_too_large"
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Connection"] == "close"
    assert seen == []


async def test_declared_length_over_the_limit_gets_413_before_the_body_and_a_lingering_close() -> (
    None
):
    calls: list[str] = []

    async def handler(request: Request) -> Response:
        calls.append(request.path)
        return await echo(request)

    size = 2 << 20
    async with serving(handler, max_request_body=1000) as listener, client(listener.port) as c:
        await c.send(get("/huge", f"Content-Length: {size}", method="POST"))
        # the answer comes before a single byte of the body was sent
        answer = await c.response()
        assert answer.status == 413
        assert answer.json()["error"] == "request_body_too_large"
        assert answer.headers["Connection"] == "close"
        # ... and the client can go on sending the refused body without being reset
        piece = b"x" * 65536
        for _ in range(size // len(piece)):
            await c.send(piece)
        data, reset = await c.rest()
        assert (data, reset) == (b"", False)  # a clean close once the body was drained
    assert calls == ["/huge"]


async def test_refused_body_answer_survives_while_the_client_keeps_sending() -> None:
    """Lingering close: the server does not close (which would reset the connection and could
    destroy the 413 in flight) while the client is still sending the body it refused."""
    size = 2 << 20
    async with serving(echo, max_request_body=1000) as listener, client(listener.port) as c:
        request = get("/huge", f"Content-Length: {size}", method="POST")
        await c.send(request + b"y" * (256 * 1024))  # head and some body before reading
        await asyncio.sleep(0.1)  # the server answers in the meantime
        sent = 256 * 1024
        while sent < size:
            await c.send(b"y" * 65536)
            sent += 65536
        answer = await c.response()
        assert answer.status == 413
        assert answer.json()["error"] == "request_body_too_large"
        data, reset = await c.rest()
        assert (data, reset) == (b"", False)


# -- 3. Expect: 100-continue ------------------------------------------------------------------


async def test_expect_continue_gets_100_before_the_final_answer() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        await c.send(get("/ask", "Content-Length: 5", "Expect: 100-continue", method="POST"))
        interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"hello")
        answer = await c.response()
        assert answer.status == 200
        assert answer.json()["body"] == "hello"


async def test_expect_continue_client_waiting_for_100_is_not_cut() -> None:
    async def slow_then_read(request: Request) -> Response:
        await asyncio.sleep(0.6)  # e.g. validating a token, before looking at the body
        return await echo(request)

    async with (
        serving(slow_then_read, header_timeout=0.3, keepalive_timeout=60) as listener,
        client(listener.port) as c,
    ):
        await c.send(get("/ask", "Content-Length: 5", "Expect: 100-continue", method="POST"))
        interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"hello")
        answer = await c.response()
        assert answer.json()["body"] == "hello"


async def test_expect_continue_is_not_answered_when_the_body_is_refused() -> None:
    async with serving(echo, max_request_body=10) as listener, client(listener.port) as c:
        await c.send(get("/ask", "Content-Length: 50", "Expect: 100-continue", method="POST"))
        answer = await c.response()  # the first answer is the final one: no 100 Continue
        assert answer.status == 413
        assert answer.headers["Connection"] == "close"


async def test_expect_continue_from_an_http10_client_is_ignored() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        await c.send(b"POST /old HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        await asyncio.sleep(0.2)  # time for a (wrong) 100 Continue to be sent
        await c.send(b"hello")
        answer = await c.response()  # the first answer an HTTP/1.0 client sees is final
        assert answer.status == 200
        assert answer.json()["body"] == "hello"


# -- 4. bodiless answers and HTTP/1.0 ---------------------------------------------------------


async def test_head_answer_has_headers_but_no_body() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        await c.send(get("/thing", method="HEAD"))
        answer = await c.response(method="HEAD")
        assert answer.status == 200
        assert int(answer.headers["Content-Length"]) > 0  # the length a GET would have
        # had a body been sent, it would be taken for the next answer's status line
        await c.send(get("/next"))
        assert (await c.response()).json()["path"] == "/next"


async def test_204_answer_has_no_body() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/nothing":
            return Response(204, body=b"must not be sent")
        return await echo(request)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/nothing"))
        answer = await c.response()
        assert answer.status == 204
        assert "Content-Length" not in answer.headers
        assert "Transfer-Encoding" not in answer.headers
        await c.send(get("/next"))
        assert (await c.response()).json()["path"] == "/next"


async def test_http10_request_without_keep_alive_is_closed_after_the_answer() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        await c.send(b"GET /old HTTP/1.0\r\n\r\n")
        answer = await c.response()
        assert answer.status == 200
        assert answer.json()["version"] == 0
        assert answer.headers["Connection"] == "close"
        assert await c.closed_by_server() == b""


async def test_http10_request_with_keep_alive_stays_open() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        for n in range(2):
            await c.send(f"GET /old{n} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            answer = await c.response()
            assert answer.json()["path"] == f"/old{n}"
            assert answer.headers["Connection"] == "keep-alive"


async def test_http11_connection_close_is_honoured() -> None:
    async with serving(echo) as listener, client(listener.port) as c:
        await c.send(get("/bye", "Connection: close"))
        answer = await c.response()
        assert answer.headers["Connection"] == "close"
        assert await c.closed_by_server() == b""


# -- 5. streamed answers ----------------------------------------------------------------------


async def pieces(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        await asyncio.sleep(0)
        yield item


async def test_stream_is_sent_chunked_to_an_http11_client() -> None:
    releases = Releases()

    async def handler(request: Request) -> Response:
        if request.path == "/stream":
            return Response(200, stream=pieces(b"alpha", b"", b"beta-gamma"), release=releases)
        return await echo(request)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/stream"))
        answer = await c.response()
        assert answer.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in answer.headers
        # an empty piece is skipped: as a chunk it would end the body
        assert answer.chunks == [b"alpha", b"beta-gamma"]
        await c.send(get("/next"))  # the connection is kept
        assert (await c.response()).json()["path"] == "/next"
    assert releases.count == 1


@pytest.mark.parametrize("connection", ["", "Connection: keep-alive\r\n"])
async def test_stream_to_an_http10_client_is_close_delimited(connection: str) -> None:
    releases = Releases()

    async def handler(request: Request) -> Response:
        return Response(200, stream=pieces(b"alpha", b"beta"), release=releases)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(f"GET /stream HTTP/1.0\r\n{connection}\r\n".encode())
        answer = await c.response()
        assert "Transfer-Encoding" not in answer.headers  # HTTP/1.0 knows no chunking
        assert "Content-Length" not in answer.headers
        assert answer.headers["Connection"] == "close"
        assert answer.body == b"alphabeta"  # read up to the server's close
    assert releases.count == 1


async def test_stream_with_content_length_is_not_chunked() -> None:
    releases = Releases()

    async def handler(request: Request) -> Response:
        if request.path == "/stream":
            return Response(
                200,
                stream=pieces(b"0123456789", b"abcde"),
                content_length=15,
                release=releases,
            )
        return await echo(request)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/stream"))
        answer = await c.response()
        assert answer.headers["Content-Length"] == "15"
        assert "Transfer-Encoding" not in answer.headers
        assert answer.body == b"0123456789abcde"
        await c.send(get("/next"))
        assert (await c.response()).json()["path"] == "/next"
    assert releases.count == 1


async def test_framing_headers_set_by_a_handler_are_replaced_by_the_engines() -> None:
    async def handler(request: Request) -> Response:
        headers = CIMultiDict(
            [
                ("Content-Length", "999"),
                ("transfer-encoding", "gzip"),
                ("Connection", "close"),
                ("X-Kept", "yes"),
            ]
        )
        return Response(200, headers, b"four")

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/framing"))
        answer = await c.response()
        assert answer.headers.getall("Content-Length") == ["4"]
        assert "Transfer-Encoding" not in answer.headers
        assert "Connection" not in answer.headers
        assert answer.headers["X-Kept"] == "yes"
        assert answer.body == b"four"


@pytest.mark.parametrize("declared", [None, 100], ids=["chunked", "content-length"])
async def test_stream_failing_midway_aborts_the_connection(declared: int | None) -> None:
    releases = Releases()
    finished: list[str] = []

    async def broken() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.sleep(0)
            raise RuntimeError("upstream broke")
        finally:
            finished.append("stream closed")

    async def handler(request: Request) -> Response:
        return Response(200, stream=broken(), content_length=declared, release=releases)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/stream"))
        data, _ = await c.rest()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    if declared is None:
        assert body == b"5\r\nfirst\r\n"  # no terminating 0-chunk: the body cannot look complete
    else:
        assert body == b"first"  # fewer bytes than the declared length, then the end
    assert releases.count == 1
    assert finished == ["stream closed"]


@pytest.mark.parametrize("after_first_piece", [False, True])
async def test_client_leaving_mid_stream_releases_once_and_closes_the_stream(
    after_first_piece: bool,
) -> None:
    releases = Releases()
    stream_cancelled = asyncio.Event()
    first_sent = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            if after_first_piece:
                yield b"one"
            first_sent.set()
            await asyncio.Event().wait()
            yield b"never"
        except asyncio.CancelledError:
            stream_cancelled.set()
            raise

    async def handler(request: Request) -> Response:
        return Response(200, stream=endless(), release=releases)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/stream"))
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), WAIT)
        assert b"Transfer-Encoding: chunked" in head
        if after_first_piece:
            assert await asyncio.wait_for(c.reader.readuntil(b"one\r\n"), WAIT) == b"3\r\none\r\n"
        await asyncio.wait_for(first_sent.wait(), WAIT)
        c.writer.transport.abort()
        await asyncio.wait_for(releases.done.wait(), WAIT)
        await asyncio.wait_for(stream_cancelled.wait(), WAIT)
        await asyncio.sleep(0.05)  # a second release would come right after the first
    assert releases.count == 1


async def test_answer_produced_after_the_client_left_is_released_once() -> None:
    releases = Releases()
    entered = asyncio.Event()
    never_streamed: list[str] = []

    async def stream() -> AsyncIterator[bytes]:
        never_streamed.append("started")
        yield b"x"

    async def handler(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # e.g. an upstream answer that was taken just as the client went away
            return Response(200, stream=stream(), release=releases)
        raise AssertionError("not reached")

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/late"))
        await asyncio.wait_for(entered.wait(), WAIT)
        c.writer.transport.abort()
        await asyncio.wait_for(releases.done.wait(), WAIT)
        await asyncio.sleep(0.05)
    assert releases.count == 1
    assert never_streamed == []


async def test_plain_answer_with_release_is_released_once() -> None:
    releases = Releases()

    async def handler(request: Request) -> Response:
        return Response(200, body=b"done", release=releases)

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/plain"))
        assert (await c.response()).body == b"done"
    assert releases.count == 1


# -- 6. malformed heads -----------------------------------------------------------------------


class Calls:
    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, request: Request) -> Response:
        self.paths.append(request.path)
        return await echo(request)


async def refused(port: int, payload: bytes) -> tuple[Answer, bytes]:
    async with client(port) as c:
        await c.send(payload)
        answer = await c.response()
        rest = await c.closed_by_server()
    return answer, rest


async def test_malformed_head_gets_json_400_and_the_connection_closed() -> None:
    calls = Calls()
    async with serving(calls) as listener:
        answer, rest = await refused(
            listener.port, b"GET / HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n"
        )
    assert answer.status == 400
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers["Connection"] == "close"
    assert answer.json()["error"] == "malformed_request"
    assert answer.json()["status"] == 400
    assert rest == b""
    assert calls.paths == []


async def test_malformed_pipelined_request_is_refused_after_the_good_one() -> None:
    calls = Calls()
    async with serving(calls) as listener, client(listener.port) as c:
        await c.send(get("/good") + b"GET /bad HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + get("/x"))
        first = await c.response()
        second = await c.response()
        assert await c.closed_by_server() == b""
    assert first.json()["path"] == "/good"
    assert second.status == 400
    assert second.json()["error"] == "duplicate_host"
    assert calls.paths == ["/good"]


@pytest.mark.parametrize(
    "pieces",
    [
        (b"GET / HTTP/1.1\nHost: x\n\n",),  # bare LF throughout: never a CRLFCRLF
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n",),  # mixed
        (b"GET / HTTP/1.1\r\nHost: x\n",),  # the head is not even complete yet
        (b"GET / HTTP/1.1\rHost: x\r\r",),  # bare CR
        (b"GET / HTTP/1.1\r", b"\nHost: x\r", b"\r"),  # CR judged with the next read
        (b"GET / HT", b"TP/1.1\r\nHo", b"st: x\n"),  # the bare LF comes in a later read
    ],
    ids=["bare-lf", "mixed", "incomplete", "bare-cr", "split-cr", "split-lf"],
)
async def test_head_with_bare_lf_or_cr_gets_400_at_once(pieces: tuple[bytes, ...]) -> None:
    """No CRLFCRLF will ever end such a head: 400 as soon as the bare line end arrives, not a
    silent close at header_timeout (30 s here, longer than the client waits)."""
    calls = Calls()
    async with serving(calls) as listener, client(listener.port) as c:
        await c.trickle(*pieces)
        answer = await c.response()
        assert await c.closed_by_server() == b""
    assert answer.status == 400
    assert answer.json()["error"] == "malformed_request"
    assert "CR or LF" in answer.json()["message"]
    assert calls.paths == []


async def test_head_trickled_byte_by_byte_is_served() -> None:
    """CR and LF of one CRLF in separate reads are no bare line end."""
    async with serving(echo) as listener, client(listener.port) as c:
        data = get("/trickled", "X-A: 1")
        for i in range(0, len(data), 3):
            await c.send(data[i : i + 3])
            await asyncio.sleep(0.005)
        answer = await c.response()
    assert answer.status == 200
    assert answer.json()["path"] == "/trickled"


async def test_pipelined_request_with_bare_lf_is_refused_after_the_good_one() -> None:
    calls = Calls()
    async with serving(calls) as listener, client(listener.port) as c:
        await c.send(get("/good") + b"GET /bad HTTP/1.1\nHost: x\n\n")
        first = await c.response()
        second = await c.response()
        assert await c.closed_by_server() == b""
    assert first.json()["path"] == "/good"
    assert second.status == 400
    assert calls.paths == ["/good"]


async def test_oversized_header_line_gets_431() -> None:
    calls = Calls()
    async with serving(calls, max_header_size=1024) as listener:
        answer, _ = await refused(listener.port, get("/", "X-Big: " + "a" * 2000))
    assert answer.status == 431
    assert answer.json()["error"] == "header_too_large"
    assert answer.headers["Connection"] == "close"
    assert calls.paths == []


async def test_overlong_request_line_gets_431_before_the_head_is_complete() -> None:
    async with serving(echo, max_header_size=1024) as listener, client(listener.port) as c:
        await c.send(b"GET /" + b"a" * 3000)  # no CRLF yet, and never will be
        answer = await c.response()
    assert answer.status == 431
    assert answer.json()["error"] == "header_too_large"


@pytest.mark.parametrize(
    "payload",
    [b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    ids=["http2-request-line", "h2-preface"],
)
async def test_http2_gets_505(payload: bytes) -> None:
    calls = Calls()
    async with serving(calls) as listener:
        answer, _ = await refused(listener.port, payload)
    assert answer.status == 505
    assert answer.json()["error"] == "unsupported_version"
    assert calls.paths == []


# -- 7. deadlines -----------------------------------------------------------------------------


async def test_slow_request_head_is_cut_after_header_timeout() -> None:
    calls = Calls()
    async with (
        serving(calls, header_timeout=0.3, keepalive_timeout=60) as listener,
        client(listener.port) as c,
    ):
        await c.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n")

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for _ in range(2000):  # far longer than any bounded wait below
                    await c.send(b"X-Slow: 1\r\n")
                    await asyncio.sleep(0.025)

        feeder = asyncio.create_task(trickle())
        try:
            data, _ = await c.rest()  # bounded: WAIT is far beyond header_timeout
        finally:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
    assert data == b""  # cut without an answer
    assert calls.paths == []


async def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout() -> None:
    async with (
        serving(echo, header_timeout=60, keepalive_timeout=0.3) as listener,
        client(listener.port) as c,
    ):
        await c.send(get("/once"))
        assert (await c.response()).status == 200
        assert await c.closed_by_server() == b""
        assert listener.server.connections == set()


async def test_new_connection_without_a_request_is_closed_after_header_timeout() -> None:
    async with (
        serving(echo, header_timeout=0.3, keepalive_timeout=60) as listener,
        client(listener.port) as c,
    ):
        assert await c.closed_by_server() == b""


async def test_stalled_body_is_cut() -> None:
    cancelled = asyncio.Event()

    async def handler(request: Request) -> Response:
        try:
            return await echo(request)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with (
        serving(handler, header_timeout=0.3, keepalive_timeout=60) as listener,
        client(listener.port) as c,
    ):
        await c.send(post("/stall", b"0123456789")[:-7])  # 3 of the 10 body bytes
        data, _ = await c.rest()
        assert data == b""  # aborted without an answer
        await asyncio.wait_for(cancelled.wait(), WAIT)


async def test_body_that_never_starts_is_cut() -> None:
    """A head announcing a body, then silence: the body clock must run from the head on."""
    async with (
        serving(echo, header_timeout=0.3, keepalive_timeout=60) as listener,
        client(listener.port) as c,
    ):
        await c.send(get("/stall", "Content-Length: 10", method="POST"))
        data, _ = await c.rest(timeout=3.0)  # ten times header_timeout
        assert data == b""


# -- 8. client disconnect ---------------------------------------------------------------------


async def test_client_disconnect_cancels_the_handler() -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()  # e.g. waiting for the upstream
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    async with serving(handler) as listener:
        async with client(listener.port) as c:
            await c.send(get("/wait"))
            await asyncio.wait_for(entered.wait(), WAIT)
        await asyncio.wait_for(cancelled.wait(), WAIT)


# -- 9. drain ---------------------------------------------------------------------------------


async def test_drain_finishes_in_flight_requests_and_closes_idle_connections_at_once() -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await gate.wait()
        return await echo(request)

    async with (
        serving(handler) as listener,
        client(listener.port) as idle,
        client(listener.port) as busy,
    ):
        await idle.send(get("/quick"))
        assert (await idle.response()).status == 200
        await busy.send(get("/slow"))
        await asyncio.wait_for(entered.wait(), WAIT)

        port = listener.port
        closing = asyncio.create_task(listener.close(WAIT))
        # the idle connection goes while the busy one is still being answered
        assert await idle.closed_by_server() == b""
        assert not closing.done()
        # no new connections are taken
        with pytest.raises(OSError):
            await Client.connect(port)
        gate.set()
        answer = await busy.response()
        assert answer.status == 200
        assert answer.json()["path"] == "/slow"
        assert answer.headers["Connection"] == "close"
        assert await busy.closed_by_server() == b""
        await asyncio.wait_for(closing, WAIT)


async def test_drain_cuts_a_request_still_running_after_the_timeout() -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    async with serving(handler) as listener, client(listener.port) as c:
        await c.send(get("/forever"))
        await asyncio.wait_for(entered.wait(), WAIT)
        await asyncio.wait_for(listener.close(0.3), WAIT)
        data, _ = await c.rest()
        assert data == b""  # no answer at all
        await asyncio.wait_for(cancelled.wait(), WAIT)


# -- 10. handler failures ---------------------------------------------------------------------


async def test_handler_exception_gets_500_and_the_server_keeps_serving() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("bug in the handler")
        return await echo(request)

    async with serving(handler) as listener:
        async with client(listener.port) as c:
            await c.send(get("/boom"))
            answer = await c.response()
            assert answer.status == 500
            assert answer.json()["error"] == "internal_error"
            assert "bug in the handler" not in answer.body.decode()
            assert answer.headers["Connection"] == "close"
            assert await c.closed_by_server() == b""
        async with client(listener.port) as c:
            await c.send(get("/fine"))
            assert (await c.response()).json()["path"] == "/fine"


# -- 11. TLS listeners ------------------------------------------------------------------------

TD = "example.org"
CLIENT_ID = f"spiffe://{TD}/ns/agents/sa/agent"


@dataclass
class Pki:
    root: IssuedCert
    server: ssl.SSLContext
    client: ssl.SSLContext
    anonymous: ssl.SSLContext
    client_leaf: IssuedCert


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp: Path = tmp_path_factory.mktemp("pki")
    root = CertFactory.root(TD)
    server_leaf = root.issue_leaf(f"spiffe://{TD}/ns/mcp/sa/server")
    client_leaf = root.issue_leaf(CLIENT_ID)

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(*server_leaf.write(tmp, "server"))
    server.load_verify_locations(cadata=root.pem())
    server.verify_mode = ssl.CERT_REQUIRED

    def client_ctx(leaf: IssuedCert | None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=root.pem())
        if leaf is not None:
            ctx.load_cert_chain(*leaf.write(tmp, "client"))
        return ctx

    return Pki(root, server, client_ctx(client_leaf), client_ctx(None), client_leaf)


def peer_uri(ssl_object: Any) -> str:
    cert = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


async def peer_info(request: Request) -> Response:
    conn = request.conn
    rejection = conn.rejection
    return json_response(
        {
            "scheme": request.scheme,
            "peer": str(conn.peer) if conn.peer is not None else None,
            "rejection": rejection.reason if rejection is not None else None,
            "rejected_peer": str(rejection.peer) if rejection and rejection.peer else None,
            "cert_sha256": conn.peer_cert_sha256,
        }
    )


async def test_tls_listener_hands_the_verified_peer_to_the_handler(pki: Pki) -> None:
    verified: list[str] = []

    def verify(ssl_object: Any) -> SpiffeId:
        verified.append(peer_uri(ssl_object))
        return SpiffeId.parse(peer_uri(ssl_object))

    policy = TlsPolicy(context=lambda: pki.server, verify=verify, handshake_timeout=WAIT)
    async with serving(peer_info, tls=policy) as listener, client(listener.port, pki.client) as c:
        for _ in range(2):
            await c.send(get("/who"))
            info = (await c.response()).json()
            assert info == {
                "scheme": "https",
                "peer": CLIENT_ID,
                "rejection": None,
                "rejected_peer": None,
                "cert_sha256": hashlib.sha256(pki.client_leaf.der()).hexdigest(),
            }
    assert verified == [CLIENT_ID]  # once per connection, not per request


async def test_tls_listener_hands_a_rejection_to_the_handler(pki: Pki) -> None:
    rejected: list[PeerRejected] = []

    def verify(ssl_object: Any) -> SpiffeId:
        raise PeerRejected(
            "not on the allowlist",
            reason="peer_not_allowed",
            peer=SpiffeId.parse(peer_uri(ssl_object)),
        )

    policy = TlsPolicy(
        context=lambda: pki.server,
        verify=verify,
        handshake_timeout=WAIT,
        on_rejected=rejected.append,
    )
    async with serving(peer_info, tls=policy) as listener, client(listener.port, pki.client) as c:
        await c.send(get("/who"))
        info = (await c.response()).json()
    assert info["peer"] is None
    assert info["rejection"] == "peer_not_allowed"
    assert info["rejected_peer"] == CLIENT_ID
    assert [r.reason for r in rejected] == ["peer_not_allowed"]


async def test_tls_client_without_a_certificate_fails_the_handshake(pki: Pki) -> None:
    failures: list[str] = []
    failed = asyncio.Event()
    calls = Calls()

    def on_failure(reason: str) -> None:
        failures.append(reason)
        failed.set()

    def verify(ssl_object: Any) -> SpiffeId:
        raise AssertionError("no verification without a completed handshake")

    policy = TlsPolicy(
        context=lambda: pki.server, verify=verify, handshake_timeout=WAIT, on_failure=on_failure
    )
    async with serving(calls, tls=policy) as listener:
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            # TLS 1.3: the client may finish its side first and see the refusal on reading
            async with client(listener.port, pki.anonymous) as c:
                await c.send(get("/who"))
                data, _ = await c.rest()
                assert data == b""
        await asyncio.wait_for(failed.wait(), WAIT)
    assert len(failures) == 1
    assert "certificate" in failures[0]
    assert calls.paths == []


@dataclass
class Failures:
    reasons: list[str] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.seen.set()


def never_verified(ssl_object: Any) -> SpiffeId:
    raise AssertionError("no verification without a completed handshake")


async def test_tls_handshake_that_never_starts_is_cut_and_reported_as_a_timeout(
    pki: Pki,
) -> None:
    failures = Failures()
    policy = TlsPolicy(
        context=lambda: pki.server,
        verify=never_verified,
        handshake_timeout=0.3,
        on_failure=failures,
    )
    # header_timeout is long: only the handshake timeout can end this connection
    async with serving(echo, tls=policy, header_timeout=60) as listener:
        async with client(listener.port) as c:  # plain TCP: connects, says nothing
            assert await c.closed_by_server() == b""
        await asyncio.wait_for(failures.seen.wait(), WAIT)
    assert failures.reasons == ["handshake_timeout"]


async def test_plain_http_to_a_tls_listener_fails_the_handshake(pki: Pki) -> None:
    failures = Failures()
    calls = Calls()
    policy = TlsPolicy(
        context=lambda: pki.server,
        verify=never_verified,
        handshake_timeout=WAIT,
        on_failure=failures,
    )
    async with serving(calls, tls=policy) as listener:
        async with client(listener.port) as c:
            await c.send(get("/plain"))
            data, _ = await c.rest()
        await asyncio.wait_for(failures.seen.wait(), WAIT)
    assert data == b""  # never an answer in clear text
    assert failures.reasons == ["http_request"]
    assert calls.paths == []


async def test_tls_verify_failing_unexpectedly_closes_the_connection(pki: Pki) -> None:
    calls = Calls()

    def broken_verify(ssl_object: Any) -> SpiffeId:
        raise ValueError("bug in the verifier")

    policy = TlsPolicy(context=lambda: pki.server, verify=broken_verify, handshake_timeout=WAIT)
    async with (
        serving(calls, tls=policy, header_timeout=0.3, keepalive_timeout=0.3) as listener,
        client(listener.port, pki.client) as c,
    ):
        await c.send(get("/who"))
        data, _ = await c.rest(timeout=3.0)  # TimeoutError while the connection hangs
    assert not data.startswith(b"HTTP/1.1 200")
    assert calls.paths == []
