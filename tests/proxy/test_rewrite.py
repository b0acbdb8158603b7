"""The one rewrite rule on its own (no sockets): what each response head leads to, the headers of
a rewritten answer, whole JSON bodies and streams through a content coding; and the tap a
dry-run policy reads a copy of the answer with."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import pytest
from multidict import CIMultiDict

from sidecar.mcp.filter import ListRewrite, list_exchange
from sidecar.mcp.jsonrpc import parse_body
from sidecar.mcp.policy import TargetKind
from sidecar.proxy.rewrite import (
    MAX_REWRITTEN_BODY,
    AnswerTap,
    Plan,
    Shape,
    decoding_stream,
    plan_rewrite,
    rewrite_json,
    rewritten_headers,
)

LISTED = {
    "jsonrpc": "2.0",
    "id": 1,
    "result": {"tools": [{"name": "add"}, {"name": "multiply"}]},
}


def allow(kind: TargetKind, name: str) -> bool:
    return name == "add"


def list_rewrite() -> ListRewrite:
    exchange = list_exchange(parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'))
    assert exchange is not None
    return ListRewrite(exchange, allow)


def head(*headers: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(headers)


@pytest.mark.parametrize(
    ("status", "headers", "plan"),
    [
        (200, [("Content-Type", "application/json")], Plan(Shape.JSON)),
        (200, [("content-type", "Application/JSON ; charset=UTF-8")], Plan(Shape.JSON)),
        (200, [("Content-Type", "text/event-stream")], Plan(Shape.SSE)),
        (404, [("Content-Type", "application/json")], Plan(Shape.JSON)),
        (200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], None),
        (200, [("Content-Type", "text/event-stream"), ("Content-Encoding", "deflate")], None),
        (204, [], Plan(Shape.NO_BODY)),
        (304, [("Content-Encoding", "br")], Plan(Shape.NO_BODY)),
    ],
)
def test_answers_that_are_read_and_rewritten(
    status: int, headers: list[tuple[str, str]], plan: Plan | None
) -> None:
    got = plan_rewrite(status, head(*headers))
    if plan is None:  # a readable coding: decoded, then rewritten
        assert got.shape in (Shape.JSON, Shape.SSE) and got.coding in ("gzip", "deflate")
    else:
        assert got == plan


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([], "no Content-Type"),
        ([("Content-Type", "text/plain")], "'text/plain'"),
        ([("Content-Type", "application/octet-stream")], "'application/octet-stream'"),
        ([("Content-Type", "application/json-rpc")], "'application/json-rpc'"),
        ([("Content-Type", "text/plain; x=application/json")], "'text/plain'"),
        (
            [("Content-Type", "application/json"), ("Content-Type", "application/json")],
            "several",
        ),
        ([("Content-Type", "application/json"), ("Content-Encoding", "br")], "'br'"),
        ([("Content-Type", "text/event-stream"), ("Content-Encoding", "zstd")], "'zstd'"),
        ([("Content-Type", "application/json"), ("Content-Encoding", "gzip, gzip")], "gzip"),
        ([("Content-Type", "application/json"), ("Content-Encoding", "x-unknown")], "unknown"),
    ],
)
def test_answers_that_are_replaced(headers: list[tuple[str, str]], why: str) -> None:
    plan = plan_rewrite(200, head(*headers))
    assert plan.shape is Shape.REPLACE
    assert why in plan.reason


def test_rewritten_headers_drop_what_described_the_old_body() -> None:
    upstream = head(
        ("Content-Type", "text/plain"),
        ("Content-Type", "application/json"),
        ("Content-Encoding", "gzip"),
        ("Content-Length", "10"),
        ("ETag", '"x"'),
        ("Content-Digest", "sha-256=:abc=:"),
        ("Mcp-Session-Id", "s1"),
        ("Vary", "Accept-Encoding"),
    )
    out = rewritten_headers(upstream, "application/json")
    assert out.getall("Content-Type") == ["application/json; charset=utf-8"]
    assert dict(out) == {
        "Content-Type": "application/json; charset=utf-8",
        "Mcp-Session-Id": "s1",
        "Vary": "Accept-Encoding",
    }
    assert rewritten_headers(upstream, "text/event-stream")["Content-Type"] == "text/event-stream"


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("identity", lambda b: b), ("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_rewrite_json_through_a_coding(coding: str, encode: Any) -> None:
    out = json.loads(rewrite_json(encode(json.dumps(LISTED).encode()), coding, list_rewrite()))
    assert out["result"]["tools"] == [{"name": "add"}]


@pytest.mark.parametrize(
    ("raw", "coding", "why"),
    [
        (gzip.compress(json.dumps(LISTED).encode())[:-4], "gzip", "truncated"),
        (json.dumps(LISTED).encode(), "gzip", "corrupt"),
        (gzip.compress(b" " * (MAX_REWRITTEN_BODY + 1)), "gzip", "decodes to more than"),
        (b" " * (MAX_REWRITTEN_BODY + 1), "identity", "larger than"),
    ],
)
def test_rewrite_json_replaces_what_cannot_be_decoded(raw: bytes, coding: str, why: str) -> None:
    rewrite = list_rewrite()
    out = json.loads(rewrite_json(raw, coding, rewrite))
    assert out["id"] == 1 and out["error"]["code"] == -32603
    assert rewrite.failure is not None and why in rewrite.failure


def sse(value: Any) -> bytes:
    return b"event: message\ndata: " + json.dumps(value).encode() + b"\n\n"


def test_decoding_stream_feeds_the_filter_decoded_events() -> None:
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    encoded = compressor.compress(sse(LISTED)) + compressor.flush()
    stream = decoding_stream("gzip", list_rewrite().sse())
    out = b"".join(stream.feed(encoded[i : i + 7]) for i in range(0, len(encoded), 7))
    out += stream.finish()
    assert b"multiply" not in out and b'"add"' in out
    identity = list_rewrite().sse()
    assert decoding_stream("identity", identity) is identity


@pytest.mark.parametrize(
    "encoded",
    [
        gzip.compress(sse(LISTED))[:-20],  # truncated: finish fails
        b"\x1f\x8b\x08\x00garbage",  # corrupt: feed fails
        gzip.compress(b": pad\n\n" * 3_000_000),  # a bomb in one read
    ],
)
def test_decoding_stream_failure_ends_with_errors(encoded: bytes) -> None:
    rewrite = list_rewrite()
    stream = decoding_stream("gzip", rewrite.sse())
    out = stream.feed(encoded) + stream.finish()
    assert b"multiply" not in out
    assert stream.done and rewrite.failure is not None
    errors = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: ")]
    assert [(e["id"], e["error"]["code"]) for e in errors] == [(1, -32603)]
    assert stream.feed(gzip.compress(sse(LISTED))) == b""


class Seen:
    """An ``allow`` that keeps everything and records what it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, kind: TargetKind, name: str) -> bool:
        self.asked.append(name)
        return True


def watching() -> tuple[ListRewrite, Seen]:
    seen = Seen()
    exchange = list_exchange(parse_body(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'))
    assert exchange is not None
    return ListRewrite(exchange, seen), seen


def test_tap_reads_a_json_answer_in_pieces_once_it_is_whole() -> None:
    rewrite, seen = watching()
    body = gzip.compress(json.dumps(LISTED).encode())
    tap = AnswerTap(
        200, head(("Content-Type", "application/json"), ("Content-Encoding", "gzip")), rewrite
    )
    for i in range(0, len(body), 5):
        tap.feed(body[i : i + 5])
    assert seen.asked == []  # a JSON answer is read once it is complete
    tap.finish()
    assert seen.asked == ["add", "multiply"] and rewrite.failure is None


def test_tap_reads_an_sse_answer_as_it_flows() -> None:
    rewrite, seen = watching()
    tap = AnswerTap(200, head(("Content-Type", "text/event-stream")), rewrite)
    event = sse(LISTED)
    tap.feed(event[:10])
    tap.feed(event[10:])
    assert seen.asked == ["add", "multiply"]
    tap.finish()
    assert rewrite.failure is None


@pytest.mark.parametrize(
    ("headers", "pieces", "why"),
    [
        ([("Content-Type", "text/plain")], [b"hello"], "content type 'text/plain'"),
        ([("Content-Type", "application/json")], [b'{"id": 1, "id": 2}'], "not strict JSON"),
        (
            [("Content-Type", "application/json")],
            [b" " * MAX_REWRITTEN_BODY, b"{}"],
            f"larger than {MAX_REWRITTEN_BODY}",
        ),
        ([("Content-Type", "text/event-stream")], [b"data: {oops\n\n"], "not strict JSON"),
    ],
)
def test_tap_notes_what_the_rewrite_would_have_replaced(
    headers: list[tuple[str, str]], pieces: list[bytes], why: str
) -> None:
    rewrite, seen = watching()
    tap = AnswerTap(200, head(*headers), rewrite)
    for piece in pieces:
        tap.feed(piece)
    tap.finish()
    assert rewrite.failure is not None and why in rewrite.failure
    assert seen.asked == []


def test_tap_of_an_answer_without_body_sees_nothing() -> None:
    rewrite, seen = watching()
    tap = AnswerTap(204, head(), rewrite)
    tap.feed(b"")
    tap.finish()
    assert rewrite.failure is None and seen.asked == []
