"""List filtering: JSON bodies and SSE streams, byte-identical pass-through, fail-closed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.mcp.filter import (
    INTERNAL_ERROR_CODE,
    FilterError,
    SseFilter,
    filter_json_body,
    filter_list_result,
    pending_list_requests,
)
from sidecar.mcp.jsonrpc import parse_body
from sidecar.mcp.policy import TargetKind

ALLOWED = {("tool", "add"), ("resource", "file:///docs/a"), ("resource", "file:///docs/{x}")}
ALLOWED |= {("prompt", "summarise")}


def allow(kind: TargetKind, name: str) -> bool:
    return (kind, name) in ALLOWED


def tools_result(
    id: Any = 1, names: tuple[str, ...] = ("add", "multiply", "echo")
) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "result": {
            "tools": [{"name": n, "inputSchema": {"type": "object"}} for n in names],
            "nextCursor": "c2",
        },
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_filter_list_result_for_every_list_method() -> None:
    assert filter_list_result("tools/list", tools_result(), allow) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": [{"name": "add", "inputSchema": {"type": "object"}}],
            "nextCursor": "c2",
        },
    }
    resources = {"result": {"resources": [{"uri": "file:///docs/a"}, {"uri": "file:///etc/x"}]}}
    assert filter_list_result("resources/list", resources, allow)["result"] == {
        "resources": [{"uri": "file:///docs/a"}]
    }
    templates = {
        "result": {
            "resourceTemplates": [{"uriTemplate": "file:///docs/{x}"}, {"uriTemplate": "db://{t}"}],
            "_meta": {"k": 1},
        }
    }
    assert filter_list_result("resources/templates/list", templates, allow)["result"] == {
        "resourceTemplates": [{"uriTemplate": "file:///docs/{x}"}],
        "_meta": {"k": 1},
    }
    prompts = {"result": {"prompts": [{"name": "summarise"}, {"name": "leak"}]}}
    assert filter_list_result("prompts/list", prompts, allow)["result"] == {
        "prompts": [{"name": "summarise"}]
    }


def test_filter_list_result_malformed() -> None:
    odd = {"result": {"tools": [{"name": "add"}, "add", {"name": ["add"]}, {"title": "x"}]}}
    assert filter_list_result("tools/list", odd, allow)["result"] == {"tools": [{"name": "add"}]}
    with pytest.raises(FilterError):
        filter_list_result("tools/list", {"result": {"tools": {"name": "add"}}}, allow)
    with pytest.raises(FilterError):
        filter_list_result("tools/list", {"result": ["add"]}, allow)
    untouched = {"result": {"other": 1}}
    assert filter_list_result("tools/list", untouched, allow) == untouched
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": 1, "message": "x"}}
    assert filter_list_result("tools/list", error, allow) == error


def test_pending_list_requests() -> None:
    parsed = parse_body(
        dumps(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                {"jsonrpc": "2.0", "id": "p", "method": "prompts/list", "params": {}},
                {"jsonrpc": "2.0", "method": "tools/list"},  # a notification: no answer
                {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "add"}},
            ]
        )
    )
    assert pending_list_requests(parsed) == {1: "tools/list", "p": "prompts/list"}


# ---------------------------------------------------------------------------------------- JSON


def test_json_single_and_batch() -> None:
    out = json.loads(filter_json_body(dumps(tools_result()), {1: "tools/list"}, allow))
    assert [t["name"] for t in out["result"]["tools"]] == ["add"]
    assert out["result"]["nextCursor"] == "c2"
    batch = [
        tools_result("a"),
        {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "x"}]}},
        tools_result(3),
    ]
    out = json.loads(filter_json_body(dumps(batch), {"a": "tools/list"}, allow))
    assert [t["name"] for t in out[0]["result"]["tools"]] == ["add"]
    assert out[1] == batch[1]
    assert out[2] == batch[2]  # id 3 was not a pending list request


@pytest.mark.parametrize(
    "body",
    [
        dumps({"jsonrpc": "2.0", "id": 2, "result": {"tools": [{"name": "multiply"}]}}),
        dumps(tools_result(True)),  # true answers nothing
        dumps(tools_result("1")),  # "1" is not 1
        b'{"jsonrpc": "2.0",  "id": 7, "result": {"content": []}}\n',
        dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "no"}}),
    ],
)
def test_other_responses_are_untouched_byte_for_byte(body: bytes) -> None:
    assert filter_json_body(body, {1: "tools/list"}, allow) is body
    assert filter_json_body(body, {}, allow) is body


def test_float_id_answers_integer_request() -> None:
    out = json.loads(filter_json_body(dumps(tools_result(1.0)), {1: "tools/list"}, allow))
    assert [t["name"] for t in out["result"]["tools"]] == ["add"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add"},{"name":"rm"}],"tools":[]}}',
        b'{"jsonrpc":"2.0","id":1,"id":2,"result":{"tools":[{"name":"rm"}]}}',
        b'{"jsonrpc":"2.0","id":2,"id":1,"result":{"tools":[{"name":"rm"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm","x":NaN}]}}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm\xff"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"rm"}}}',
    ],
)
def test_unfilterable_list_responses_become_errors(body: bytes) -> None:
    out = json.loads(filter_json_body(body, {1: "tools/list"}, allow))
    assert out["id"] == 1
    assert out["error"]["code"] == INTERNAL_ERROR_CODE
    assert out["error"]["data"] == {"reason": "unfilterable_list_response"}
    assert b"rm" not in filter_json_body(body, {1: "tools/list"}, allow)


def test_unreadable_body_with_pending_lists_fails_closed() -> None:
    pending = {1: "tools/list"}
    for body in (b"<html>oops</html>", b"[" * 5000 + b"]" * 5000, b""):
        out = json.loads(filter_json_body(body, pending, allow))
        assert out["error"]["code"] == INTERNAL_ERROR_CODE and out["id"] == 1
    out = json.loads(filter_json_body(b"garbage", {1: "tools/list", 2: "prompts/list"}, allow))
    assert [e["id"] for e in out] == [1, 2]
    out = json.loads(filter_json_body(b"garbage", pending, allow, batch=True))
    assert isinstance(out, list)


def test_lenient_batch_only_errors_for_answered_ids() -> None:
    body = b'[{"jsonrpc":"2.0","id":1,"result":{"tools":[],"tools":[{"name":"rm"}]}}]'
    out = json.loads(filter_json_body(body, {1: "tools/list", 5: "prompts/list"}, allow))
    assert [e["id"] for e in out] == [1]
    unrelated = b'{"jsonrpc":"2.0","id":9,"result":{"a":1,"a":2}}'
    assert filter_json_body(unrelated, {1: "tools/list"}, allow) is unrelated


# ----------------------------------------------------------------------------------------- SSE


def sse_event(value: Any, *, event_id: str | None = None, eol: str = "\n") -> bytes:
    lines = ["event: message"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(value))
    return (eol.join(lines) + eol + eol).encode()


def run(filter_: SseFilter, chunks: list[bytes]) -> bytes:
    return b"".join(filter_.feed(c) for c in chunks) + filter_.flush()


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
OTHER = {"jsonrpc": "2.0", "id": 2, "result": {"content": []}}


def test_sse_list_response_is_rewritten_and_the_rest_kept() -> None:
    stream = (
        b": keepalive\n\n"
        + sse_event(PROGRESS, event_id="e1")
        + sse_event(tools_result(), event_id="e2")
        + b"retry: 500\n\n"
        + sse_event(OTHER)
    )
    out = run(SseFilter({1: "tools/list"}, allow), [stream])
    expected_list = (
        b"event: message\nid: e2\ndata: "
        + json.dumps(
            filter_list_result("tools/list", tools_result(), allow), separators=(",", ":")
        ).encode()
        + b"\n\n"
    )
    assert out == (
        b": keepalive\n\n"
        + sse_event(PROGRESS, event_id="e1")
        + expected_list
        + b"retry: 500\n\n"
        + sse_event(OTHER)
    )


def test_sse_without_pending_lists_is_passed_through_unbuffered() -> None:
    filter_ = SseFilter({}, allow)
    assert filter_.feed(b"data: {partial") == b"data: {partial"
    assert filter_.flush() == b""


def test_sse_multi_line_data_and_line_endings() -> None:
    text = json.dumps(tools_result(), indent=1)
    for eol in ("\n", "\r\n", "\r"):
        body = "id: 9" + eol + "".join(f"data:{line}{eol}" for line in text.split("\n")) + eol
        out = run(SseFilter({1: "tools/list"}, allow), [body.encode()])
        assert out.startswith(b"id: 9\ndata: {")
        data = json.loads(out.split(b"\n")[1][len(b"data: ") :])
        assert [t["name"] for t in data["result"]["tools"]] == ["add"]
        passthrough = (eol.join(["event: x", "data: 1", "data: 2", ": c"]) + eol + eol).encode()
        assert run(SseFilter({1: "tools/list"}, allow), [passthrough]) == passthrough


def test_sse_events_are_emitted_as_soon_as_complete() -> None:
    filter_ = SseFilter({1: "tools/list"}, allow)
    first = sse_event(PROGRESS)
    assert filter_.feed(first[:-1]) == b""
    assert filter_.feed(first[-1:]) == first
    listed = sse_event(tools_result(), eol="\r")
    out = filter_.feed(listed)  # ends with a CR: complete, even if an LF could follow
    assert out.endswith(b"\n\n") and b"multiply" not in out
    assert filter_.feed(b"\n: after\n\n") == b": after\n\n"  # the LF belonged to the CR


def test_sse_unparseable_list_response_is_not_leaked() -> None:
    dup = b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm"}],"tools":[]}}\n\n'
    out = run(SseFilter({1: "tools/list"}, allow), [dup])
    assert b"rm" not in out
    data = json.loads(out.removeprefix(b"data: "))
    assert data["error"]["code"] == INTERNAL_ERROR_CODE and data["id"] == 1
    not_json = b"data: hello\n\n"
    assert run(SseFilter({1: "tools/list"}, allow), [not_json]) == not_json


def test_sse_incomplete_event_at_end() -> None:
    partial = sse_event(PROGRESS)[:-1]
    assert run(SseFilter({1: "tools/list"}, allow), [partial]) == partial
    partial_list = sse_event(tools_result())[:-1]
    assert run(SseFilter({1: "tools/list"}, allow), [partial_list]) == b""


def test_sse_event_size_limit() -> None:
    filter_ = SseFilter({1: "tools/list"}, allow, max_event_size=100)
    filter_.feed(b"data: " + b"x" * 50 + b"\n\n")
    with pytest.raises(FilterError) as err:
        filter_.feed(b"data: " + b"x" * 200)
    assert err.value.reason == "sse_event_too_large"


def test_sse_too_deep_to_read_aborts() -> None:
    deep = b"data: " + b"[" * 5000 + b"]" * 5000 + b"\n\n"
    with pytest.raises(FilterError):
        SseFilter({1: "tools/list"}, allow).feed(deep)


STREAM_PARTS = [
    b": hello\r\n\r\n",
    sse_event(PROGRESS, event_id="1", eol="\r"),
    sse_event(tools_result(), event_id="2", eol="\r\n"),
    b"data\n\n",
    sse_event(OTHER, eol="\n"),
    sse_event(tools_result(), eol="\r"),
    b"\n",
    sse_event({"jsonrpc": "2.0", "id": "p", "result": {"prompts": [{"name": "x"}]}}, eol="\r"),
    b"event: end\rdata: {}\r\r",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(STREAM_PARTS))), min_size=1, max_size=8),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_sse_output_does_not_depend_on_chunking(
    parts: list[int], tail: bool, cuts: list[int]
) -> None:
    stream = b"".join(STREAM_PARTS[i] for i in parts) + (b"data: no-end" if tail else b"")
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    pending = {1: "tools/list", "p": "prompts/list"}
    whole = run(SseFilter(pending, allow), [stream])
    assert run(SseFilter(pending, allow), chunks) == whole
    assert b"multiply" not in whole
    assert run(SseFilter({}, allow), chunks) == stream


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_sse_arbitrary_bytes(stream: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    pending = {1: "tools/list"}
    assert run(SseFilter(pending, allow), chunks) == run(SseFilter(pending, allow), [stream])
