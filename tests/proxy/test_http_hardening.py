"""Raw-socket tests of the listener: request smuggling shapes, slow headers, oversized heads.

Each smuggling shape must get a 400 and never reach the upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tests.proxy.mesh import WAIT, Mesh, local_mesh


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
