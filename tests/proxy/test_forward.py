"""The forwarder on its own: the Origin check, header filtering, and answers a policy rewrites
over every framing and coding, against scripted raw upstreams. (Framing — duplicate
Content-Length, Content-Length with Transfer-Encoding — is refused by the HTTP/1.1 parser:
tests/http1 and test_http_hardening.)"""

from __future__ import annotations

import asyncio
import gzip
import json

import pytest
from multidict import CIMultiDict

from sidecar.config import Limits
from sidecar.mcp.filter import ListRewrite, list_exchange
from sidecar.mcp.jsonrpc import parse_body
from sidecar.proxy.errors import Forbidden
from sidecar.proxy.forward import answer_headers, check_origin, forward, forwardable_headers
from sidecar.proxy.messages import Request
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected
from tests.proxy.test_upstream import HOST, pool_to, read_request, upstream


def request(*headers: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(headers)


def test_origin_must_be_listed_when_a_list_is_set() -> None:
    allowed = ("http://localhost:6274",)
    with pytest.raises(Forbidden):
        check_origin(request(("Origin", "http://evil.test")), allowed)
    check_origin(request(("Origin", "http://localhost:6274/")), allowed)
    check_origin(request(), allowed)  # no Origin: not a browser


# -- answers the policy rewrites, over every framing ------------------------------------------

LISTED = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "add"}, {"name": "multiply"}]}}
).encode()
SSE = b"event: message\ndata: " + LISTED + b"\n\n"


def list_rewrite() -> ListRewrite:
    exchange = list_exchange(parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'))
    assert exchange is not None
    return ListRewrite(exchange, lambda kind, name: name == "add")


def framed(framing: str, content_type: str, body: bytes, coding: str | None) -> bytes:
    """An HTTP/1.1 answer with ``body`` framed by length, chunks (odd sizes) or the close."""
    if coding == "gzip":
        body = gzip.compress(body)
    head = ["HTTP/1.1 200 OK", f"Content-Type: {content_type}"]
    if coding:
        head.append(f"Content-Encoding: {coding}")
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        body = (
            b"".join(
                b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7])
                for i in range(0, len(body), 7)
            )
            + b"0\r\n\r\n"
        )
    else:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("coding", [None, "gzip"])
@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
async def test_rewritten_answers_over_every_framing(
    framing: str, content_type: str, coding: str | None
) -> None:
    answer = framed(framing, content_type, SSE if "event" in content_type else LISTED, coding)

    async def serve(_: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        for i in range(0, len(answer), 5):  # in small pieces
            writer.write(answer[i : i + 5])
            await writer.drain()

    async with upstream(serve) as server, pool_to(server.port) as pool:
        request = Request("POST", "/mcp", 1, CIMultiDict(), "http", NO_PEER, _no_body)
        response = await forward(
            request, pool, "/mcp", CIMultiDict(HOST), b"{}", Limits(), rewrite=list_rewrite()
        )
        body = response.body
        if response.stream is not None:
            body = b"".join([piece async for piece in response.stream])
            assert response.release is not None
            response.release()
    assert "Content-Encoding" not in response.headers
    assert response.headers.getall("Content-Type")[0].startswith(content_type)
    assert b"multiply" not in body
    data = body.removeprefix(b"event: message\ndata: ").rstrip(b"\n")
    assert json.loads(data)["result"]["tools"] == [{"name": "add"}]


async def _no_body() -> bytes:
    return b""


class _NoPeer:
    peer: SpiffeId | None = None
    rejection: PeerRejected | None = None
    peer_cert_sha256: str | None = None


NO_PEER = _NoPeer()


def test_answer_headers_drop_hop_by_hop_and_connection_named_ones() -> None:
    """RFC 9110 §7.6.1: what the upstream's Connection header names is hop-by-hop too."""
    upstream = request(
        ("Content-Type", "application/json"),
        ("Connection", "X-Hop ,  keep-alive"),
        ("Connection", "x-other"),
        ("X-Hop", "secret"),
        ("x-other", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"),
        ("Mcp-Session-Id", "s1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    )
    assert list(answer_headers(upstream).items()) == [
        ("Content-Type", "application/json"),
        ("Mcp-Session-Id", "s1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_request_headers_drop_connection_named_ones_in_both_directions_alike() -> None:
    sent = request(("Connection", "X-Hop"), ("X-Hop", "1"), ("Accept", "*/*"), ("Host", "h"))
    assert list(forwardable_headers(sent).items()) == [("Accept", "*/*")]
    assert list(answer_headers(sent).items()) == [("Accept", "*/*"), ("Host", "h")]
