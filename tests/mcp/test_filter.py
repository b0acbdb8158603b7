"""List filtering: JSON bodies and SSE streams, exact id matching, byte-identical pass-through,
fail-closed replacement of whatever cannot be read."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.mcp.filter import (
    INTERNAL_ERROR_CODE,
    Exchange,
    FilterError,
    ListRewrite,
    filter_list_result,
    list_exchange,
    request_key,
)
from sidecar.mcp.jsonrpc import parse_body
from sidecar.mcp.policy import TargetKind

ALLOWED = {("tool", "add"), ("resource", "file:///docs/a"), ("resource", "file:///docs/{x}")}
ALLOWED |= {("prompt", "summarise")}
HIDDEN = b"multiply"


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


def exchange(*requests: tuple[Any, str], batch: bool | None = None) -> Exchange:
    """The exchange of a request body holding these (id, method) requests."""
    messages = [
        {"jsonrpc": "2.0", "id": i, "method": m, "params": {"name": "add"}} for i, m in requests
    ]
    is_batch = len(messages) > 1 if batch is None else batch
    found = list_exchange(parse_body(dumps(messages if is_batch else messages[0])))
    assert found is not None
    return found


def rewrite(*requests: tuple[Any, str], batch: bool | None = None, **kw: Any) -> ListRewrite:
    return ListRewrite(exchange(*(requests or ((1, "tools/list"),)), batch=batch), allow, **kw)


def names(message: dict[str, Any]) -> list[str]:
    return [t["name"] for t in message["result"]["tools"]]


def assert_error(message: Any, id: Any) -> None:
    assert message["id"] == id and type(message["id"]) is type(id)
    assert message["error"]["code"] == INTERNAL_ERROR_CODE
    assert message["error"]["data"]["reason"] == "unfilterable_list_response"


# ------------------------------------------------------------------------------ the pure parts


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


def test_list_exchange() -> None:
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
    found = list_exchange(parsed)
    assert found is not None and found.batch
    assert found.ids == (1, "p", 3)
    assert found.requests == {
        (True, 1): "tools/list",
        (False, "p"): "prompts/list",
        (True, 3): "tools/call",
    }
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}}
    assert list_exchange(parse_body(dumps(call))) is None  # nothing to rewrite: zero cost
    # A batch reusing an id: the list method wins, so that answer is filtered.
    reused = [call, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]
    found = list_exchange(parse_body(dumps(reused)))
    assert found is not None and found.requests == {(True, 1): "tools/list"}


def test_request_keys_keep_the_json_type() -> None:
    assert request_key(5) == (True, 5) and request_key("5") == (False, "5")
    assert request_key(5) != request_key("5")
    for not_an_id in (True, False, 5.0, None, [5], {"a": 5}):
        assert request_key(not_an_id) is None


# ---------------------------------------------------------------------------------------- JSON


def test_json_single_and_batch() -> None:
    out = json.loads(rewrite().json(dumps(tools_result())))
    assert names(out) == ["add"] and out["result"]["nextCursor"] == "c2"
    batch = [
        tools_result("a"),
        {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "x"}]}},
    ]
    out = json.loads(rewrite(("a", "tools/list"), (2, "tools/call")).json(dumps(batch)))
    assert names(out[0]) == ["add"]
    assert out[1] == batch[1]  # the answer to the tools/call passes unchanged


@pytest.mark.parametrize(
    "body",
    [
        dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -1, "message": "no"}}),
        dumps({"jsonrpc": "2.0", "id": 9, "error": {"code": -1, "message": "other id"}}),
        b'{"jsonrpc": "2.0",  "method": "notifications/message", "params": {}}\n',
        b"[]",
    ],
)
def test_answers_that_list_nothing_are_untouched_byte_for_byte(body: bytes) -> None:
    rw = rewrite()
    assert rw.json(body) is body
    assert rw.failure is None


@pytest.mark.parametrize(
    "answer_id",
    ["1", 1.0, True, None, 2, [1], {"id": 1}],
    ids=["string", "float", "true", "null", "other", "array", "object"],
)
def test_a_list_answer_with_another_id_or_id_type_fails_closed(answer_id: Any) -> None:
    """Request ``1`` is not answered by ``"1"`` or ``1.0`` (lax clients read both as ``1``):
    such a result is replaced by the error, never forwarded unfiltered."""
    rw = rewrite()
    out = rw.json(dumps(tools_result(answer_id)))
    assert HIDDEN not in out
    assert_error(json.loads(out), 1)  # the error goes to the one request that waits
    assert rw.failure is not None and "matches no request" in rw.failure
    in_batch = json.loads(
        rewrite((1, "tools/list"), batch=True).json(dumps([tools_result(answer_id)]))
    )
    assert_error(in_batch[0], answer_id if request_key(answer_id) is not None else None)


def test_a_result_without_an_id_fails_closed() -> None:
    answer = tools_result()
    del answer["id"]
    out = rewrite().json(dumps(answer))
    assert HIDDEN not in out
    assert_error(json.loads(out), 1)


def test_string_request_ids_match_exactly() -> None:
    rw = rewrite(("7", "tools/list"))
    assert names(json.loads(rw.json(dumps(tools_result("7"))))) == ["add"]
    assert_error(json.loads(rw.json(dumps(tools_result(7)))), "7")


def test_a_batch_answer_with_a_stranger_fails_closed_for_that_element() -> None:
    batch = [tools_result(1), tools_result("1"), tools_result(3)]
    out = json.loads(rewrite((1, "tools/list"), (3, "tools/call")).json(dumps(batch)))
    assert names(out[0]) == ["add"]
    assert_error(out[1], "1")
    assert out[2] == batch[2]  # id 3 is the tools/call's: its answer is not a list


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"add"},{"name":"rm"}],"tools":[]}}',
        b'{"jsonrpc":"2.0","id":1,"id":2,"result":{"tools":[{"name":"rm"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm","x":NaN}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm","x":1e400}]}}',
        b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm\xff"}]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm"}]}} trailing',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"rm"}}}',
        b'{"jsonrpc":"2.0","id":1,"result":["rm"]}',
        b"[" * 5000 + b"]" * 5000,
        b"<html>rm</html>",
        b'"rm"',
        b"42",
        b"null",
        b"",
    ],
)
def test_unreadable_json_answers_become_errors(body: bytes) -> None:
    rw = rewrite()
    out = rw.json(body)
    assert b"rm" not in out
    assert_error(json.loads(out), 1)
    assert rw.failure is not None


def test_unreadable_batch_answer_errors_every_request_in_order() -> None:
    out = json.loads(rewrite((1, "tools/list"), ("c", "tools/call")).json(b"garbage"))
    assert isinstance(out, list)
    assert_error(out[0], 1)
    assert_error(out[1], "c")
    one = json.loads(rewrite((1, "tools/list"), batch=True).json(b"garbage"))
    assert isinstance(one, list) and len(one) == 1  # a batch is answered by an array


def test_replacement_answers_the_exchange() -> None:
    rw = rewrite()
    out = json.loads(rw.replacement("content coding 'br' is not readable"))
    assert_error(out, 1)
    assert out["error"]["data"]["detail"] == "content coding 'br' is not readable"
    assert rw.failure == "content coding 'br' is not readable"


def test_rewritten_json_keeps_odd_strings() -> None:
    body = (
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":['
        b'{"name":"add","d":"\\ud800 \\u2028 \xc3\xa9"},{"name":"multiply"}]}}'
    )
    out = rewrite().json(body)
    assert HIDDEN not in out
    assert json.loads(out)["result"]["tools"] == [{"name": "add", "d": "\ud800 \u2028 é"}]


# ----------------------------------------------------------------------------------------- SSE


def sse_event(value: Any, *, event_id: str | None = None, eol: str = "\n") -> bytes:
    lines = ["event: message"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(value))
    return (eol.join(lines) + eol + eol).encode()


def run(rw: ListRewrite, chunks: list[bytes]) -> bytes:
    sse = rw.sse()
    return b"".join(sse.feed(c) for c in chunks) + sse.finish()


def events(stream: bytes) -> list[Any]:
    """The JSON data of each event of a stream this filter wrote (LF line ends)."""
    found = []
    for event in stream.split(b"\n\n"):
        data = [line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")]
        if data:
            found.append(json.loads(b"\n".join(data)))
    return found


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
OTHER = {"jsonrpc": "2.0", "id": 2, "result": {"content": []}}


def test_sse_list_answer_is_rewritten_and_the_rest_kept() -> None:
    stream = (
        b": keepalive\n\n"
        + sse_event(PROGRESS, event_id="e1")
        + sse_event(tools_result(), event_id="e2")
        + b"retry: 500\n\n"
    )
    out = run(rewrite(), [stream])
    expected_list = (
        b"event: message\nid: e2\ndata: "
        + json.dumps(
            filter_list_result("tools/list", tools_result(), allow), separators=(",", ":")
        ).encode()
        + b"\n\n"
    )
    assert out == (
        b": keepalive\n\n" + sse_event(PROGRESS, event_id="e1") + expected_list + b"retry: 500\n\n"
    )


def test_sse_multi_line_data_and_line_endings() -> None:
    text = json.dumps(tools_result(), indent=1)
    for eol in ("\n", "\r\n", "\r"):
        body = "id: 9" + eol + "".join(f"data:{line}{eol}" for line in text.split("\n")) + eol
        out = run(rewrite(), [body.encode()])
        assert out.startswith(b"id: 9\ndata: {")
        assert [names(e) for e in events(out)] == [["add"]]
        passthrough = (eol.join(["event: x", "data: {}", "data: ", ": c"]) + eol + eol).encode()
        assert run(rewrite(), [passthrough]) == passthrough


def test_sse_events_are_emitted_as_soon_as_complete() -> None:
    sse = rewrite().sse()
    first = sse_event(PROGRESS)
    assert sse.feed(first[:-1]) == b""
    assert sse.feed(first[-1:]) == first
    listed = sse_event(tools_result(), eol="\r")
    out = sse.feed(listed)  # ends with a CR: complete, even if an LF could follow
    assert out.endswith(b"\n\n") and HIDDEN not in out
    assert sse.feed(b"\n: after\n\n") == b": after\n\n"  # the LF belonged to the CR


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm"}],"tools":[]}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm"}]}',  # cut short
        b"rm: not json",
        b'"rm"',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"rm","n":-1e400}]}}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_sse_unreadable_event_fails_closed_like_json(data: bytes) -> None:
    rw = rewrite()
    out = run(rw, [b"data: " + data + b"\n\n", sse_event(tools_result())])
    assert b"rm" not in out
    answers = events(out)
    assert_error(answers[0], 1)  # in place of the event no one could filter
    assert names(answers[1]) == ["add"]  # later answers are still filtered, never passed
    assert rw.failure is not None


def test_sse_unreadable_event_after_every_answer_is_dropped() -> None:
    out = run(rewrite(), [sse_event(tools_result()), b"data: {not json\n\n", b": bye\n\n"])
    assert [names(e) for e in events(out)] == [["add"]]
    assert out.endswith(b"\n\n: bye\n\n") and b"not json" not in out


@pytest.mark.parametrize("answer_id", ["1", 1.0, 99, None])
def test_sse_answer_with_a_mismatched_id_fails_closed(answer_id: Any) -> None:
    """The Python SDK takes *any* response on a request's SSE stream as that request's answer."""
    out = run(rewrite(), [sse_event(tools_result(answer_id)), b"data: {bad\n\n"])
    assert HIDDEN not in out
    assert [e["id"] for e in events(out)] == [1]  # that error answered the request: once
    assert_error(events(out)[0], 1)


def test_sse_batch_answers_in_one_event_and_across_events() -> None:
    rw = rewrite((1, "tools/list"), ("p", "prompts/list"), (3, "tools/call"))
    prompts = {"jsonrpc": "2.0", "id": "p", "result": {"prompts": [{"name": "leak"}]}}
    call = {"jsonrpc": "2.0", "id": 3, "result": {"content": [], "tools": [{"name": "x"}]}}
    out = events(run(rw, [sse_event([tools_result(), prompts]), sse_event(call)]))
    assert names(out[0][0]) == ["add"]
    assert out[0][1]["result"]["prompts"] == []
    assert out[1] == call  # the tools/call's own answer: not a list, passes


def test_sse_incomplete_event_at_end() -> None:
    comment = b": still"
    assert run(rewrite(), [comment]) == comment  # no data: nothing a client could read
    partial = sse_event(PROGRESS)[:-1]  # data, but no blank line: withheld, request errored
    out = run(rewrite(), [partial])
    assert [e["id"] for e in events(out)] == [1] and b"progress" not in out
    partial_list = sse_event(tools_result())[:-1]
    out = run(rewrite(), [partial_list])
    assert HIDDEN not in out
    assert_error(events(out)[0], 1)
    answered_then_cut = sse_event(tools_result()) + b"data: {}"
    assert [names(e) for e in events(run(rewrite(), [answered_then_cut]))] == [["add"]]


def test_sse_event_size_limit_ends_the_stream_with_errors() -> None:
    rw = rewrite(max_event_size=100)
    sse = rw.sse()
    assert sse.feed(b"data: " + b"{}" + b" " * 50 + b"\n\n") != b""
    out = sse.feed(b"data: " + b"x" * 200)
    assert sse.done and rw.failure == "SSE event larger than 100 bytes"
    assert_error(events(out)[0], 1)
    rw = rewrite(max_event_size=100)
    sse = rw.sse()
    out = sse.feed(b": hi\n\ndata: " + b"x" * 200)
    assert out.startswith(b": hi\n\n")
    assert_error(events(out)[0], 1)
    assert sse.feed(sse_event(tools_result())) == b"" and sse.finish() == b""


def test_sse_fail_errors_only_what_is_unanswered() -> None:
    rw = rewrite((1, "tools/list"), (2, "tools/call"))
    sse = rw.sse()
    first = sse.feed(sse_event(tools_result()))
    assert [names(e) for e in events(first)] == [["add"]]
    out = sse.fail("corrupt gzip body")
    assert_error(events(out)[0], 2)
    assert len(events(out)) == 1 and sse.done
    assert sse.fail("again") == b""


STREAM_PARTS = [
    b": hello\r\n\r\n",
    sse_event(PROGRESS, event_id="1", eol="\r"),
    sse_event(tools_result(), event_id="2", eol="\r\n"),
    b"data\n\n",
    sse_event(OTHER, eol="\n"),
    sse_event(tools_result(), eol="\r"),
    b"\n",
    sse_event({"jsonrpc": "2.0", "id": "p", "result": {"prompts": [{"name": "x"}]}}, eol="\r"),
    sse_event(tools_result("1")),
    b"data: {broken\n\n",
    b"event: end\rdata: {}\r\r",
]


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


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
    requests = ((1, "tools/list"), ("p", "prompts/list"), (2, "tools/call"))
    whole = run(rewrite(*requests), [stream])
    assert run(rewrite(*requests), chunked(stream, cuts)) == whole
    assert HIDDEN not in whole and b'"x"' not in whole and b"no-end" not in whole


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_sse_arbitrary_bytes(stream: bytes, cuts: list[int]) -> None:
    assert run(rewrite(), chunked(stream, cuts)) == run(rewrite(), [stream])


ANSWER_IDS = st.one_of(
    st.integers(-3, 3), st.sampled_from(["1", "p", "", 1.0, True, None]), st.just(2**63)
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(ANSWER_IDS, min_size=1, max_size=4),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=6),
)
def test_no_answer_shape_leaks_a_hidden_item(
    answer_ids: list[Any], as_sse: bool, cuts: list[int]
) -> None:
    """Whatever ids the server answers with, alone or batched, JSON or SSE: a hidden tool never
    appears, except in the answer to the non-list request of the exchange (id 2)."""
    rw = rewrite((1, "tools/list"), ("p", "tools/list"), (2, "tools/call"))
    answers = [tools_result(i) for i in answer_ids]
    body = dumps(answers if len(answers) > 1 else answers[0])
    if as_sse:
        out = run(rw, chunked(b"data: " + body + b"\n\n", cuts))
        (value,) = events(out) or [None]
    else:
        value = json.loads(rw.json(body))
    for message in value if isinstance(value, list) else [value] if value else []:
        if message.get("id") == 2 and type(message["id"]) is int:
            continue
        assert "multiply" not in json.dumps(message)
        if "result" in message:
            assert (type(message["id"]), message["id"]) in ((int, 1), (str, "p"))
