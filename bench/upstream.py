"""The canned upstream: a minimal uvloop HTTP/1.1 server standing in for the MCP server.

Raw ``asyncio.Protocol`` (no framework), keep-alive and pipelining, Content-Length and chunked
request bodies, write flow control. It answers:

* ``POST`` anything else (``/mcp``): a fixed JSON-RPC ``tools/call`` result of ``--response-size``
  bytes (default 256, the size of a small real tool result), ``Content-Type: application/json``.
* ``GET /sse?size=BYTES&rate=PER_SECOND&count=N``: an endless (or ``count``-long) SSE stream of
  ``notifications/progress`` events of exactly ``size`` bytes each, one chunk per event, sent as
  fast as the reader takes them (``rate=0``, the default: each event is one write, then the loop
  yields) or at ``rate`` events per second per stream.
* ``GET /health``: ``ok``.

Run: ``python -m bench.upstream --port 18000 [--response-size 256]``. It prints ``ready PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
DEFAULT_RESPONSE_SIZE = 256
DEFAULT_EVENT_SIZE = 200


def tool_result(size: int) -> bytes:
    """A JSON-RPC ``tools/call`` result padded (in the text content) to exactly ``size`` bytes."""

    def build(pad: int) -> bytes:
        doc = {
            "jsonrpc": "2.0",
            "id": 1,
            "result": {
                "content": [{"type": "text", "text": "5" + " " * pad}],
                "structuredContent": {"result": 5},
                "isError": False,
            },
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    base = len(build(0))
    return build(max(0, size - base))


def sse_event(size: int, seq: int = 0) -> bytes:
    """One SSE event (``event: message`` + ``data:`` JSON-RPC progress notification), ``size``
    bytes including the blank line that ends it (the sequence number is padded to 10 digits)."""
    head = b"event: message\ndata: "
    body = (
        b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"b",'
        b'"progress":' + str(seq).rjust(10, "0").encode() + b',"message":"'
    )
    tail = b'"}}\n\n'
    pad = max(0, size - len(head) - len(body) - len(tail))
    return head + body + b"x" * pad + tail


def burn(seconds: float) -> None:
    """Keep the CPU busy for ``seconds``: the work of an application that computes its answer."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _Http(asyncio.Protocol):
    def __init__(self, response: bytes, work: float = 0.0) -> None:
        self._work = work
        self._response = response
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._stream: asyncio.Task[None] | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._writable.set()
        if self._stream is not None:
            self._stream.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while not self._closing and self._stream is None and self._handle_one():
            pass

    def _handle_one(self) -> bool:
        """Answer one complete request from the buffer; False if more bytes are needed."""
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD:
                self._fail(b"431 Request Header Fields Too Large")
            return False
        lines = bytes(self._buf[:end]).split(b"\r\n")
        try:
            method, target, _version = lines[0].split(b" ", 2)
        except ValueError:
            self._fail(b"400 Bad Request")
            return False
        length = 0
        chunked = False
        close = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                length = int(value.strip())
            elif key == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif key == b"connection":
                close = b"close" in value.lower()
        pos = end + 4
        if chunked:
            consumed = _chunked_length(self._buf, pos)
            if consumed is None:
                return False
            pos = consumed
        else:
            if len(self._buf) < pos + length:
                return False
            pos += length
        del self._buf[:pos]
        self._dispatch(method, target.decode("latin-1"), close)
        return True

    def _dispatch(self, method: bytes, target: str, close: bool) -> None:
        assert self._transport is not None
        url = urlsplit(target)
        if method == b"GET" and url.path.endswith("/sse"):
            query = parse_qs(url.query)
            size = int(query.get("size", [DEFAULT_EVENT_SIZE])[0])
            rate = float(query.get("rate", ["0"])[0])
            count = int(query.get("count", ["0"])[0])
            self._stream = asyncio.get_running_loop().create_task(
                self._sse(size, rate, count, close)
            )
            return
        if method == b"GET":
            body = b"ok\n"
            ctype = b"text/plain"
        else:
            if self._work:
                burn(self._work)
            body = self._response
            ctype = b"application/json"
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + ctype
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"\r\n"
        )
        self._transport.write(head + body)
        if close:
            self._closing = True
            self._transport.close()

    async def _sse(self, size: int, rate: float, count: int, close: bool) -> None:
        transport = self._transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        interval = 1.0 / rate if rate > 0 else 0.0
        next_at = loop.time()
        seq = 0
        try:
            while not self._closing and (count == 0 or seq < count):
                event = sse_event(size, seq)
                transport.write(b"%x\r\n%s\r\n" % (len(event), event))
                seq += 1
                if not self._writable.is_set():
                    await self._writable.wait()
                if interval:
                    next_at += interval
                    await asyncio.sleep(max(0.0, next_at - loop.time()))
                else:
                    await asyncio.sleep(0)  # one event per write, like a real server
            if not self._closing:
                transport.write(b"0\r\n\r\n")
                if close:
                    transport.close()
        finally:
            self._stream = None
        if self._buf and not self._closing:
            self.data_received(b"")

    def _fail(self, status: bytes) -> None:
        assert self._transport is not None
        self._closing = True
        self._transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
        self._transport.close()


def _chunked_length(buf: bytearray, pos: int) -> int | None:
    """End offset of a complete chunked body starting at ``pos``, or None if incomplete."""
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # trailers (normally none) end with CRLF CRLF
            return None if end < 0 else end + 4
        if len(buf) < pos + size + 2:
            return None
        pos += size + 2


def serve_protocol(response_size: int, work: float = 0.0) -> Callable[[], asyncio.Protocol]:
    """The protocol factory of the upstream (also run in-process by ``bench.inproc``); ``work``
    seconds of CPU are spent on every POST before it is answered."""
    response = tool_result(response_size)
    return lambda: _Http(response, work)


async def serve(host: str, port: int, response_size: int, work: float = 0.0) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        serve_protocol(response_size, work), host, port, reuse_address=True, backlog=4096
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--response-size", type=int, default=DEFAULT_RESPONSE_SIZE)
    parser.add_argument(
        "--work-us", type=float, default=0.0, help="CPU µs spent on every POST (a busy app)"
    )
    args = parser.parse_args(argv)
    main_coro = serve(args.host, args.port, args.response_size, args.work_us / 1e6)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main_coro)
    else:
        uvloop.run(main_coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
