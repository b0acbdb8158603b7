"""Strict JSON-RPC parsing: what is accepted, and every ambiguity refused."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.mcp.jsonrpc import JsonRpcError, Kind, parse_body


def call(name: object = "add", arguments: object = None, **extra: object) -> bytes:
    params: dict[str, object] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params, **extra}
    ).encode()


def test_tools_call_is_parsed() -> None:
    parsed = parse_body(call("add", {"a": 1, "b": 2}))
    assert not parsed.batch
    (msg,) = parsed.messages
    assert msg.kind is Kind.REQUEST and msg.method == "tools/call" and msg.id == 1
    assert msg.target == "add" and dict(msg.arguments or {}) == {"a": 1, "b": 2}


def test_notification_response_and_resource_read() -> None:
    note = parse_body(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').messages[0]
    assert note.kind is Kind.NOTIFICATION and note.id is None
    resp = parse_body(b'{"jsonrpc":"2.0","id":"x","result":{}}').messages[0]
    assert resp.kind is Kind.RESPONSE and resp.method is None
    read = parse_body(
        b'{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a"}}'
    ).messages[0]
    assert read.target == "file:///a"


def test_unicode_escapes_are_decoded_not_bypassed() -> None:
    # "\u0061dd" is "add": the policy sees the decoded name, as the server will.
    msg = parse_body(TC + b'{"name":"\\u0061dd"}}')
    assert msg.messages[0].target == "add"


def test_batch_is_parsed_element_by_element() -> None:
    body = json.dumps([json.loads(call("add")), json.loads(call("multiply"))]).encode()
    parsed = parse_body(body)
    assert parsed.batch and [m.target for m in parsed.messages] == ["add", "multiply"]


TC = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'

BAD = {
    "duplicate_name": TC + b'{"name":"add","name":"rm"}}',
    "duplicate_method": b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}',
    "duplicate_nested": TC + b'{"name":"a","arguments":{"x":1,"x":2}}}',
    "duplicate_escaped": TC + b'{"name":"a","n\\u0061me":"b"}}',
    "not_utf8": TC + b'{"name":"\xff"}}',
    "lone_surrogate": TC + b'{"name":"\\ud800"}}',
    "bom": b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}',
    "nan": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}',
    "bool_id": b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
    "float_id": b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
    "huge_id": b'{"jsonrpc":"2.0","id":' + b"9" * 400 + b',"method":"ping"}',
    "null_params": TC + b"null}",
    "array_params": TC + b'["add"]}',
    "name_not_string": TC + b'{"name":["add"]}}',
    "arguments_not_object": TC + b'{"name":"a","arguments":[1]}}',
    "no_jsonrpc": b'{"id":1,"method":"ping"}',
    "wrong_version": b'{"jsonrpc":"1.0","id":1,"method":"ping"}',
    "empty_batch": b"[]",
    "scalar": b"42",
    "trailing_garbage": b'{"jsonrpc":"2.0","id":1,"method":"ping"} {}',
    "deep": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":'
    + b"[" * 100
    + b"]" * 100
    + b"}}",
    "request_with_result": b'{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}',
}


@pytest.mark.parametrize("body", list(BAD.values()), ids=list(BAD))
def test_ambiguous_or_invalid_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(JsonRpcError) as err:
        parse_body(body)
    assert err.value.status == 400


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_our_error(body: bytes) -> None:
    with contextlib.suppress(JsonRpcError):
        parse_body(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"]), json_values
    )
)
def test_arbitrary_message_shapes_raise_only_our_error(message: dict[str, object]) -> None:
    with contextlib.suppress(JsonRpcError):
        parse_body(json.dumps(message).encode())
