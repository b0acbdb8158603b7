"""The pooled upstream client (``sidecar.proxy.upstream``) against scripted raw upstreams.

Each upstream here is a few lines of asyncio that write exactly the bytes a test needs (odd
splits, interim answers, resets, garbage) and count the connections they accept, so a test can
say both what the pool returned and how many TCP connections it took to get there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509

from sidecar.proxy.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.proxy.upstream import UpstreamPool, UpstreamResponse
from sidecar.tls.contexts import PeerRejected
from tests.certfactory import CertFactory, IssuedCert
from tests.proxy.loopback import free_port

WAIT = 10.0  # bound on every wait for something that must happen
HOST = (("Host", "upstream.test"),)

Serve = Callable[[int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


# -- the scripted upstream --------------------------------------------------------------------


@dataclass
class ScriptedUpstream:
    """Runs ``serve(connection_number, reader, writer)`` for every accepted connection."""

    serve: Serve
    ssl_context: ssl.SSLContext | None = None
    accepts: int = 0
    port: int = 0
    errors: list[BaseException] = field(default_factory=list)  # a broken script, not the pool
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def start(self) -> ScriptedUpstream:
        self._server = await asyncio.start_server(
            self._on_connection, "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        number = self.accepts
        self.accepts += 1
        self._writers.append(writer)
        try:
            await self.serve(number, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the pool hung up on us: often what the test wants
        except Exception as exc:
            self.errors.append(exc)
        finally:
            writer.close()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WAIT)
        await asyncio.wait_for(self._server.wait_closed(), WAIT)
        assert self.errors == []


@contextlib.asynccontextmanager
async def upstream(
    serve: Serve, ctx: ssl.SSLContext | None = None
) -> AsyncIterator[ScriptedUpstream]:
    server = await ScriptedUpstream(serve, ctx).start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def pool_to(port: int, **options: Any) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool("127.0.0.1", port, **options)
    try:
        yield pool
    finally:
        pool.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request (head, body) as the pool sent it; None when the pool closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b"", exc.partial
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def ok(body: bytes, *headers: str, status: str = "200 OK", version: str = "1.1") -> bytes:
    lines = [f"HTTP/{version} {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo_forever(
    number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """A keep-alive upstream: answers each request with which connection and request it was."""
    count = 0
    while (request := await read_request(reader)) is not None:
        head, body = request
        line = head.split(b"\r\n", 1)[0]
        writer.write(ok(b"conn=%d req=%d %s %s" % (number, count, line, body)))
        await writer.drain()
        count += 1


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the pool still sends, until it closes the connection."""
    data = bytearray()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := await asyncio.wait_for(reader.read(65536), WAIT):
            data += chunk
    return bytes(data)


async def read_all(response: UpstreamResponse) -> bytes:
    body = bytearray()
    while piece := await asyncio.wait_for(response.read(), WAIT):
        body += piece
    return bytes(body)


async def fetch(
    pool: UpstreamPool,
    target: str = "/",
    *,
    method: str = "GET",
    body: bytes = b"",
    head_timeout: float = WAIT,
) -> tuple[UpstreamResponse, bytes]:
    response = await asyncio.wait_for(
        pool.request(method, target, HOST, body, head_timeout=head_timeout), WAIT
    )
    try:
        return response, await read_all(response)
    finally:
        response.release()


# -- 1. reuse ---------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection() -> None:
    async with upstream(echo_forever) as up, pool_to(up.port) as pool:
        for n in range(5):
            response, body = await fetch(pool, f"/r{n}")
            assert response.status == 200
            assert body == f"conn=0 req={n} GET /r{n} HTTP/1.1 ".encode()
        assert up.accepts == 1


async def test_exchanges_in_flight_together_use_separate_connections() -> None:
    async with upstream(echo_forever) as up, pool_to(up.port) as pool:
        first = await asyncio.wait_for(
            pool.request("GET", "/a", HOST, b"", head_timeout=WAIT), WAIT
        )
        second = await asyncio.wait_for(
            pool.request("GET", "/b", HOST, b"", head_timeout=WAIT), WAIT
        )
        assert up.accepts == 2  # one exchange at a time per connection
        assert await read_all(first) == b"conn=0 req=0 GET /a HTTP/1.1 "
        assert await read_all(second) == b"conn=1 req=0 GET /b HTTP/1.1 "
        first.release()
        second.release()
        first.release()  # idempotent: the connection is not put back twice
        bodies = {(await fetch(pool, "/c"))[1][:6] for _ in range(2)}
        assert up.accepts == 2
        assert bodies <= {b"conn=0", b"conn=1"}


async def test_request_is_written_as_given_with_a_content_length() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def record(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request)
            writer.write(ok(b""))
            await writer.drain()

    async with upstream(record) as up, pool_to(up.port) as pool:
        big = bytes(range(256)) * 4096  # 1 MiB: more than the kernel takes in one write
        await fetch(pool, "/p?q=1", method="POST", body=b"hello")
        await fetch(pool, "/empty", method="POST")
        await fetch(pool, "/get")
        await fetch(pool, "/big", method="PUT", body=big)
    heads = [head.decode() for head, _ in seen]
    assert heads[0] == "POST /p?q=1 HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: 5\r\n\r\n"
    assert heads[1] == "POST /empty HTTP/1.1\r\nHost: upstream.test\r\nContent-Length: 0\r\n\r\n"
    assert heads[2] == "GET /get HTTP/1.1\r\nHost: upstream.test\r\n\r\n"
    assert [body for _, body in seen[:3]] == [b"hello", b"", b""]
    assert hashlib.sha256(seen[3][1]).digest() == hashlib.sha256(big).digest()


async def test_header_injection_in_a_request_is_refused() -> None:
    async with upstream(echo_forever) as up, pool_to(up.port) as pool:
        with pytest.raises(ValueError):
            await pool.request("GET", "/", [("X-Evil", "a\r\nInjected: 1")], b"", head_timeout=WAIT)
        assert up.accepts == 0


# -- 2. answers that end the connection -------------------------------------------------------


def answer_then_wait_for_close(answer: bytes, closed: list[bytes]) -> Serve:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(answer)
            await writer.drain()
            closed.append(await until_closed(reader))  # the pool must hang up, not come back
            return
        await echo_forever(number, reader, writer)

    return serve


@pytest.mark.parametrize(
    "answer",
    [
        ok(b"first", "Connection: close"),
        ok(b"first", version="1.0"),
        ok(b"first", "Connection: keep-alive, close"),
    ],
    ids=["connection-close", "http10", "close-in-a-list"],
)
async def test_answer_that_ends_the_connection_is_not_reused(answer: bytes) -> None:
    closed: list[bytes] = []
    async with upstream(answer_then_wait_for_close(answer, closed)) as up, pool_to(up.port) as pool:
        _, body = await fetch(pool, "/one")
        assert body == b"first"
        _, body = await fetch(pool, "/two")
        assert body == b"conn=1 req=0 GET /two HTTP/1.1 "
        assert up.accepts == 2
    assert closed == [b""]  # connection 0 was closed by the pool without another request


async def test_http10_keep_alive_answer_is_reused() -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            writer.write(ok(b"kept", "Connection: keep-alive", version="1.0"))
            await writer.drain()

    async with upstream(serve) as up, pool_to(up.port) as pool:
        for _ in range(3):
            assert (await fetch(pool))[1] == b"kept"
        assert up.accepts == 1


async def test_close_delimited_body_is_read_to_eof_and_not_reused() -> None:
    parts = [b"no length, ", b"the body ends ", b"with the connection"]

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
            for part in parts:
                await asyncio.sleep(0.02)
                writer.write(part)
                await writer.drain()
            return  # closing ends the body
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        response, body = await fetch(pool, "/until-close")
        assert response.content_length is None
        assert response.content_type == "text/plain"
        assert body == b"".join(parts)
        assert (await fetch(pool, "/next"))[1].startswith(b"conn=1 ")
        assert up.accepts == 2


# -- 3. chunked answers -----------------------------------------------------------------------


async def test_chunked_answer_split_oddly_concatenates_and_drops_trailers() -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nWiki\r\n"
        b"6;name=value\r\npedia \r\n"
        b"E\r\nin \r\n\r\nchunks.\r\n"
        b"0\r\nExpires: never\r\nX-Trailer: 1\r\n\r\n"
    )
    head_end = wire.index(b"\r\n\r\n") + 4
    # cuts inside the head, right after it, inside a size line, between CR and LF, inside chunk
    # data, inside the extension, in the last chunk and inside the trailer section
    cuts = [10, head_end, head_end + 1, head_end + 4, head_end + 8, head_end + 12]
    cuts += [head_end + 20, head_end + 31, head_end + 47, len(wire) - 20, len(wire) - 3]

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            start = 0
            for cut in [*cuts, len(wire)]:
                writer.write(wire[start:cut])
                await writer.drain()
                await asyncio.sleep(0.01)  # its own read on the pool's side
                start = cut

    async with upstream(serve) as up, pool_to(up.port) as pool:
        for _ in range(2):
            response, body = await fetch(pool, "/chunked")
            assert body == b"Wikipedia in \r\n\r\nchunks."
            assert response.content_length is None
            assert "Expires" not in response.headers
            assert "X-Trailer" not in response.headers
        # the trailer section was consumed exactly: the connection was clean for reuse
        assert up.accepts == 1


# -- 4. idle connections ----------------------------------------------------------------------


async def test_idle_connection_closed_by_the_upstream_is_replaced() -> None:
    closed = asyncio.Event()

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(ok(b"then I hang up"))  # keep-alive, as far as the head says
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            closed.set()
            return
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        assert (await fetch(pool, "/one"))[1] == b"then I hang up"
        await asyncio.wait_for(closed.wait(), WAIT)
        await asyncio.sleep(0.05)  # let the pool's side see the FIN (loopback: immediate)
        _, body = await fetch(pool, "/two")
        assert body == b"conn=1 req=0 GET /two HTTP/1.1 "
        assert up.accepts == 2


async def test_idle_connection_older_than_keepalive_timeout_is_replaced() -> None:
    async with upstream(echo_forever) as up, pool_to(up.port, keepalive_timeout=0.2) as pool:
        await fetch(pool, "/one")
        await fetch(pool, "/two")
        assert up.accepts == 1
        await asyncio.sleep(0.4)
        assert (await fetch(pool, "/three"))[1].startswith(b"conn=1 ")
        assert up.accepts == 2


async def test_idle_connections_beyond_max_idle_are_closed() -> None:
    async with upstream(echo_forever) as up, pool_to(up.port, max_idle=1) as pool:
        first = await pool.request("GET", "/a", HOST, b"", head_timeout=WAIT)
        second = await pool.request("GET", "/b", HOST, b"", head_timeout=WAIT)
        await read_all(first)
        await read_all(second)
        first.release()
        second.release()  # the pool keeps one idle connection; this one is closed
        for _ in range(3):
            await fetch(pool)
        assert up.accepts == 2
        bodies = {(await fetch(pool))[1][:6] for _ in range(3)}
        assert bodies == {b"conn=0"}


# -- 5. abandoned exchanges -------------------------------------------------------------------


@pytest.mark.parametrize("pieces_read", [0, 1])
async def test_abandoned_exchange_is_not_reused(pieces_read: int) -> None:
    leftovers: list[bytes] = []

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
            await writer.drain()
            leftovers.append(await until_closed(reader))  # the rest is never sent
            return
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        response = await pool.request("GET", "/big", HOST, b"", head_timeout=WAIT)
        for _ in range(pieces_read):
            assert await asyncio.wait_for(response.read(), WAIT) == b"a" * 1000
        response.release()  # before the body's end
        _, body = await fetch(pool, "/next")
        assert body == b"conn=1 req=0 GET /next HTTP/1.1 "
        assert up.accepts == 2
    assert leftovers == [b""]


# -- 6. failures ------------------------------------------------------------------------------


@dataclass
class Connects:
    """Wraps the running loop's ``create_connection`` to count (and optionally break) connects."""

    original: Callable[..., Awaitable[Any]]
    fail_first: BaseException | None = None
    hang: bool = False
    attempts: int = 0

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_first is not None and self.attempts == 1:
            raise self.fail_first
        return await self.original(*args, **kwargs)


def count_connects(monkeypatch: pytest.MonkeyPatch, **options: Any) -> Connects:
    loop = asyncio.get_running_loop()
    connects = Connects(loop.create_connection, **options)
    monkeypatch.setattr(loop, "create_connection", connects)
    return connects


async def test_connect_refused_is_retried_once_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    connects = count_connects(monkeypatch)
    async with pool_to(free_port()) as pool:
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool)
    assert caught.value.reason == "upstream_connect_failed"
    assert caught.value.status == 502
    assert connects.attempts == 2


async def test_one_failed_connect_is_retried_transparently(monkeypatch: pytest.MonkeyPatch) -> None:
    connects = count_connects(monkeypatch, fail_first=ConnectionRefusedError("refused"))
    async with upstream(echo_forever) as up, pool_to(up.port) as pool:
        _, body = await fetch(pool, "/after-retry")
    assert body == b"conn=0 req=0 GET /after-retry HTTP/1.1 "
    assert connects.attempts == 2
    assert up.accepts == 1


async def test_connect_timeout_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    connects = count_connects(monkeypatch, hang=True)
    async with pool_to(free_port(), connect_timeout=0.2) as pool:
        with pytest.raises(UpstreamTimeout) as caught:
            await fetch(pool)
    assert caught.value.reason == "upstream_connect_timeout"
    assert connects.attempts == 1


async def test_no_response_head_within_head_timeout() -> None:
    abandoned: list[bytes] = []

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(b"HTTP/1.1 200 OK\r\n")  # half a head, then nothing
            await writer.drain()
            abandoned.append(await until_closed(reader))
            return
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        with pytest.raises(UpstreamTimeout) as caught:
            await fetch(pool, head_timeout=0.3)
        assert caught.value.reason == "upstream_timeout"
        assert caught.value.status == 504
        assert (await fetch(pool, "/next"))[1].startswith(b"conn=1 ")  # not reused
    assert abandoned == [b""]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize("how", ["rst", "fin"])
async def test_upstream_hanging_up_after_the_request_is_a_reset(how: str) -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert await read_request(reader) is not None
        if how == "rst":
            reset(writer)
        else:
            writer.close()

    async with upstream(serve) as up, pool_to(up.port) as pool:
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool)
        assert caught.value.reason == "upstream_reset"
        assert up.accepts == 1  # a request that may have arrived is never sent twice


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",  # then the connection ends
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["inside-the-head", "length-body", "chunked-body"],
)
async def test_answer_cut_short_is_never_taken_as_complete(answer: bytes) -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert await read_request(reader) is not None
        writer.write(answer)
        await writer.drain()

    async with upstream(serve) as up, pool_to(up.port) as pool:
        with pytest.raises((UpstreamUnavailable, ConnectionError)):
            await fetch(pool)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    ],
    ids=["no-colon", "two-lengths", "length-and-chunked", "http2", "not-http"],
)
async def test_malformed_response_head_is_upstream_unavailable(answer: bytes) -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(answer)
            await writer.drain()
            await until_closed(reader)
            return
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool)
        assert caught.value.reason == "upstream_unavailable"
        assert caught.value.status == 502
        assert (await fetch(pool, "/next"))[1].startswith(b"conn=1 ")


async def test_endless_response_head_is_refused() -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert await read_request(reader) is not None
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            for _ in range(4096):  # 4 MiB of header lines, and no end of the head
                writer.write(b"X-Filler: " + b"f" * 1000 + b"\r\n")
                await writer.drain()
        await until_closed(reader)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        with pytest.raises(UpstreamUnavailable):
            await fetch(pool)


async def test_bytes_after_a_complete_answer_make_the_connection_unusable() -> None:
    smuggled = ok(b"smuggled answer")

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(ok(b"real answer") + smuggled)  # one write: a desynchronised upstream
            await writer.drain()
            await until_closed(reader)
            return
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        response = await pool.request("GET", "/one", HOST, b"", head_timeout=WAIT)
        body = bytearray()
        with contextlib.suppress(UpstreamUnavailable):
            while piece := await asyncio.wait_for(response.read(), WAIT):
                body += piece
        response.release()
        assert body == b"real answer"
        # the smuggled answer must never be taken for the answer to the next request
        _, next_body = await fetch(pool, "/two")
        assert next_body == b"conn=1 req=0 GET /two HTTP/1.1 "
        assert up.accepts == 2


async def test_bytes_arriving_on_an_idle_connection_make_it_unusable() -> None:
    sent_late = asyncio.Event()

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if number == 0:
            assert await read_request(reader) is not None
            writer.write(ok(b"real answer"))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(ok(b"unsolicited"))  # e.g. a 408 some servers send before closing
            await writer.drain()
            sent_late.set()
            await until_closed(reader)
            return
        await echo_forever(number, reader, writer)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        assert (await fetch(pool, "/one"))[1] == b"real answer"
        await asyncio.wait_for(sent_late.wait(), WAIT)
        await asyncio.sleep(0.05)  # the pool's side reads it (loopback: immediate)
        assert (await fetch(pool, "/two"))[1] == b"conn=1 req=0 GET /two HTTP/1.1 "
        assert up.accepts == 2


# -- bodiless answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
async def test_bodiless_answers_end_at_their_head_and_keep_the_connection(
    method: str, answer: bytes
) -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            writer.write(answer)
            await writer.drain()

    async with upstream(serve) as up, pool_to(up.port) as pool:
        for _ in range(2):
            response, body = await fetch(pool, method=method)
            assert body == b""
        assert up.accepts == 1
    if method == "HEAD":
        assert response.headers["Content-Length"] == "1234"  # what a GET would have had


# -- 7. TLS -----------------------------------------------------------------------------------

TD = "example.org"
SERVER_ID = f"spiffe://{TD}/ns/mcp/sa/server"


@dataclass
class Pki:
    tmp: Path
    root: IssuedCert
    server: ssl.SSLContext
    stranger: ssl.SSLContext  # a server whose certificate another CA signed
    client_leaf: IssuedCert

    def client(self) -> ssl.SSLContext:
        """A fresh client context (a new object each call, as after an SVID rotation)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=self.root.pem())
        ctx.load_cert_chain(*self.client_leaf.write(self.tmp, "client"))
        return ctx


def server_context(tmp: Path, leaf: IssuedCert, trusted: IssuedCert, stem: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*leaf.write(tmp, stem))
    ctx.load_verify_locations(cadata=trusted.pem())
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    root = CertFactory.root(TD)
    other = CertFactory.root(TD)  # same trust domain name, different keys
    return Pki(
        tmp,
        root,
        server_context(tmp, root.issue_leaf(SERVER_ID), root, "server"),
        server_context(tmp, other.issue_leaf(SERVER_ID), root, "stranger"),
        root.issue_leaf(f"spiffe://{TD}/ns/agents/sa/agent"),
    )


def peer_uri(ssl_object: Any) -> str:
    cert = x509.load_der_x509_certificate(ssl_object.getpeercert(binary_form=True))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


async def test_tls_pool_verifies_the_upstream_once_per_connection(pki: Pki) -> None:
    verified: list[str] = []

    def verify(ssl_object: Any) -> object:
        verified.append(peer_uri(ssl_object))
        return verified[-1]

    ctx = pki.client()
    async with (
        upstream(echo_forever, pki.server) as up,
        pool_to(up.port, context=lambda: ctx, verify=verify) as pool,
    ):
        for n in range(3):
            assert (await fetch(pool, f"/{n}"))[1] == f"conn=0 req={n} GET /{n} HTTP/1.1 ".encode()
        assert up.accepts == 1
    assert verified == [SERVER_ID]


async def test_tls_upstream_with_the_wrong_identity_gets_no_request_bytes(pki: Pki) -> None:
    received: list[bytes] = []
    done = asyncio.Event()

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            received.append(await until_closed(reader))  # handshake done: what follows?
        finally:
            done.set()

    def verify(ssl_object: Any) -> object:
        raise PeerRejected(
            f"server presented {peer_uri(ssl_object)}", reason="unexpected_server_id"
        )

    ctx = pki.client()
    async with (
        upstream(serve, pki.server) as up,
        pool_to(up.port, context=lambda: ctx, verify=verify) as pool,
    ):
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool, method="POST", body=b"secret payload")
        assert caught.value.reason == "upstream_identity_mismatch"
        await asyncio.wait_for(done.wait(), WAIT)
        assert up.accepts == 1  # not retried
    assert received == [b""]


async def test_tls_upstream_signed_by_another_ca_fails(pki: Pki) -> None:
    verified: list[str] = []
    ctx = pki.client()
    async with (
        upstream(echo_forever, pki.stranger) as up,
        pool_to(up.port, context=lambda: ctx, verify=verified.append) as pool,
    ):
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool)
    assert caught.value.reason == "upstream_tls_failed"
    assert verified == []


async def test_tls_context_rotation_opens_a_new_connection(pki: Pki) -> None:
    current = [pki.client()]
    async with (
        upstream(echo_forever, pki.server) as up,
        pool_to(up.port, context=lambda: current[0], verify=peer_uri) as pool,
    ):
        await fetch(pool, "/a")
        await fetch(pool, "/b")
        assert up.accepts == 1
        current[0] = pki.client()  # an SVID rotation built new contexts
        assert (await fetch(pool, "/c"))[1] == b"conn=1 req=0 GET /c HTTP/1.1 "
        assert (await fetch(pool, "/d"))[1] == b"conn=1 req=1 GET /d HTTP/1.1 "
        assert up.accepts == 2


@pytest.mark.parametrize("server_name", ["math.mcp.svc", None])
async def test_tls_pool_sends_its_server_name_and_still_checks_only_the_spiffe_id(
    pki: Pki, server_name: str | None
) -> None:
    # The server's certificate has a URI SAN only: no host name check may stand in the way.
    seen: list[str | None] = []
    server = server_context(pki.tmp, pki.root.issue_leaf(SERVER_ID), pki.root, "sni-server")
    server.sni_callback = lambda ssl_object, name, ctx: seen.append(name)
    verified: list[str] = []
    ctx = pki.client()
    async with (
        upstream(echo_forever, server) as up,
        pool_to(
            up.port,
            context=lambda: ctx,
            verify=lambda obj: verified.append(peer_uri(obj)),
            server_name=server_name,
        ) as pool,
    ):
        assert (await fetch(pool, "/sni"))[0].status == 200
    assert seen == [server_name]
    assert verified == [SERVER_ID]


@dataclass
class RefusingTlsServer:
    """A blocking OpenSSL server in a thread (no asyncio in between: its alerts go out as
    OpenSSL writes them) that refuses every client certificate not from ``trusted``; it counts
    the connections it accepts and whatever application data it ever read."""

    ctx: ssl.SSLContext
    port: int = 0
    accepts: int = 0
    data: bytes = b""
    errors: list[str] = field(default_factory=list)

    def serve(self, listening: socket.socket) -> None:
        listening.settimeout(WAIT)
        with contextlib.suppress(TimeoutError, OSError):
            while True:
                raw, _ = listening.accept()
                self.accepts += 1
                with raw:
                    raw.settimeout(WAIT)
                    try:
                        with self.ctx.wrap_socket(raw, server_side=True) as conn:
                            self.data += conn.recv(65536)
                    except ssl.SSLError as exc:
                        self.errors.append(str(exc.reason))


@contextlib.asynccontextmanager
async def refusing_server(pki: Pki, version: ssl.TLSVersion) -> AsyncIterator[RefusingTlsServer]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki.root.issue_leaf(SERVER_ID).write(pki.tmp, "refusing"))
    ctx.load_verify_locations(cadata=CertFactory.root(TD).pem())  # not our client's CA
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.maximum_version = version
    server = RefusingTlsServer(ctx)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        server.port = listening.getsockname()[1]
        thread = asyncio.create_task(asyncio.to_thread(server.serve, listening))
        try:
            yield server
        finally:
            listening.shutdown(socket.SHUT_RDWR)
            await asyncio.wait_for(thread, WAIT)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("certificate", ["untrusted", "none"])
async def test_a_server_refusing_our_certificate_is_named_by_its_alert_and_not_retried(
    pki: Pki, version: ssl.TLSVersion, certificate: str
) -> None:
    ctx = pki.client() if certificate == "untrusted" else ssl.create_default_context()
    if certificate == "none":
        ctx.load_verify_locations(cadata=pki.root.pem())
    ctx.check_hostname = False
    verified: list[str] = []
    async with refusing_server(pki, version) as server:
        async with pool_to(
            server.port, context=lambda: ctx, verify=lambda obj: verified.append(peer_uri(obj))
        ) as pool:
            with pytest.raises(UpstreamUnavailable) as caught:
                await fetch(pool, method="POST", body=b"must never be processed")
        accepts = server.accepts
    alert = {
        "untrusted": "unknown_ca",
        "none": "handshake_failure"
        if version is ssl.TLSVersion.TLSv1_2
        else "certificate_required",
    }[certificate]
    assert caught.value.reason == f"upstream_tls_refused_{alert}"
    assert f"TLS alert {alert}" in caught.value.message
    assert caught.value.status == 502
    assert accepts == 1  # a refusal is final: never sent again
    assert server.data == b""  # the server never read the request
    # TLS 1.3: our side of the handshake completed (and checked the server) before the refusal
    assert verified == ([SERVER_ID] if version is ssl.TLSVersion.TLSv1_3 else [])


@pytest.mark.parametrize("certificate", ["untrusted", "none"])
def test_a_tls13_refusal_is_named_under_uvloop_too(pki: Pki, certificate: str) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            test_a_server_refusing_our_certificate_is_named_by_its_alert_and_not_retried(
                pki, ssl.TLSVersion.TLSv1_3, certificate
            )
        )


# -- 8. flow control --------------------------------------------------------------------------


async def test_large_body_read_slowly_arrives_complete_and_the_upstream_is_held_back() -> None:
    block = 64 * 1024
    blocks = 512  # 32 MiB
    total = block * blocks
    progress = [0]  # bytes the upstream got rid of (its writes that completed)
    finished = asyncio.Event()

    def block_of(n: int) -> bytes:
        return n.to_bytes(4, "big") * (block // 4)

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert await read_request(reader) is not None
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n".encode())
        for n in range(blocks):
            writer.write(block_of(n))
            await writer.drain()
            progress[0] += block
        finished.set()
        await until_closed(reader)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        response = await pool.request("GET", "/big", HOST, b"", head_timeout=WAIT)
        # nobody reads: once the pool's buffer is full it stops reading, and the upstream stalls
        # (its writes stop completing) long before it could get rid of the whole body
        last = -1
        async with asyncio.timeout(WAIT):
            while progress[0] != last:
                last = progress[0]
                await asyncio.sleep(0.2)
        assert not finished.is_set()
        assert progress[0] < total // 2
        # then a slow reader gets every byte, in order
        digest = hashlib.sha256()
        expected = hashlib.sha256()
        for n in range(blocks):
            expected.update(block_of(n))
        received = 0
        pieces = 0
        while piece := await asyncio.wait_for(response.read(), WAIT):
            digest.update(piece)
            received += len(piece)
            pieces += 1
            if pieces % 16 == 0:
                await asyncio.sleep(0.001)
        response.release()
        assert received == total
        assert digest.digest() == expected.digest()
        await asyncio.wait_for(finished.wait(), WAIT)


# -- 9. interim answers -----------------------------------------------------------------------


async def test_interim_answers_are_skipped() -> None:
    wire = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        + ok(b"final", "X-Final: yes")
    )

    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await read_request(reader) is not None:
            for start in range(0, len(wire), 7):  # heads split across reads
                writer.write(wire[start : start + 7])
                await writer.drain()
                await asyncio.sleep(0.002)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        for _ in range(2):
            response, body = await fetch(pool, method="POST", body=b"x")
            assert response.status == 200
            assert body == b"final"
            assert response.headers["X-Final"] == "yes"
            assert "Link" not in response.headers
        assert up.accepts == 1


async def test_switching_protocols_is_upstream_unavailable() -> None:
    async def serve(
        number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert await read_request(reader) is not None
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await until_closed(reader)

    async with upstream(serve) as up, pool_to(up.port) as pool:
        with pytest.raises(UpstreamUnavailable) as caught:
            await fetch(pool)
        assert caught.value.status == 502
