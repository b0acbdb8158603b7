"""Strict JSON-RPC 2.0 parsing of MCP request bodies (pure, no I/O).

A policy decision is only as good as the parse it is made on, and the proxy and the MCP server
must see the *same* message. So anything two JSON parsers could read differently is refused
instead of guessed: duplicate keys (at any depth — Python keeps the last, others the first), lone
surrogates and non-UTF-8 bytes, ``NaN``/``Infinity``, a byte-order mark, excessive nesting, ids
that are not a string or a 64-bit integer, non-object ``params``. Batches (arrays) are parsed
element by element so every element is judged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from sidecar.errors import SidecarError

MAX_DEPTH = 64
MAX_BATCH = 100
MAX_ID_LENGTH = 256
INT64 = 2**63


class JsonRpcError(SidecarError):
    """The body is not one unambiguous JSON-RPC 2.0 message (or batch): 400, never forwarded.

    ``code`` is the JSON-RPC error code to answer with (-32700 parse error, -32600 invalid request).
    """

    status = 400
    reason = "invalid_jsonrpc"

    def __init__(self, message: str, *, code: int = -32600, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.code = code


class Kind(Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"


# MCP methods whose target is named in params, and the param that names it.
TARGET_PARAM = {
    "tools/call": "name",
    "prompts/get": "name",
    "resources/read": "uri",
    "resources/subscribe": "uri",
    "resources/unsubscribe": "uri",
}


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message as the policy sees it."""

    kind: Kind
    method: str | None
    id: str | int | None
    target: str | None  # tool / prompt name or resource URI, for methods in TARGET_PARAM
    arguments: Mapping[str, Any] | None  # tools/call arguments, prompts/get arguments
    params: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Parsed:
    messages: tuple[Message, ...]
    batch: bool


def parse_body(body: bytes) -> Parsed:
    """Parse an HTTP request body into JSON-RPC messages or raise ``JsonRpcError``."""
    return parse_value(loads(body))


def loads(body: bytes) -> Any:
    """The JSON value of ``body``, read strictly (see the module docstring), or
    ``JsonRpcError`` (-32700). Also for answers the proxy must rewrite: what it cannot read
    unambiguously it does not forward."""
    try:
        text = body.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise JsonRpcError(f"body is not UTF-8: {exc.reason}", code=-32700) from exc
    if text.startswith("\ufeff"):
        raise JsonRpcError("body starts with a byte-order mark", code=-32700)
    try:
        data = _DECODER.decode(text)
    except JsonRpcError:
        raise
    except RecursionError as exc:
        raise JsonRpcError("JSON nested too deeply", code=-32700) from exc
    except ValueError as exc:
        raise JsonRpcError(f"not JSON: {exc}", code=-32700) from exc
    if "\\u" in text or text.count("{") + text.count("[") > MAX_DEPTH:
        # Only a ``\u`` escape can smuggle a lone surrogate into valid UTF-8 text, and the
        # nesting depth cannot exceed the number of brackets: without either, nothing to walk.
        _check_depth_and_strings(data, 0)
    return data


def parse_value(data: Any) -> Parsed:
    """The JSON-RPC messages of an already decoded (``loads``) body, or ``JsonRpcError``."""
    if isinstance(data, list):
        if not data:
            raise JsonRpcError("empty batch")
        if len(data) > MAX_BATCH:
            raise JsonRpcError(f"batch of {len(data)} messages exceeds {MAX_BATCH}")
        return Parsed(tuple(_message(item) for item in data), batch=True)
    return Parsed((_message(data),), batch=False)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # some key came twice: name the first repeat
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonRpcError(
                    f"duplicate key {key[:64]!r}", code=-32700, reason="duplicate_key"
                )
            seen.add(key)
    return result


def _no_constants(name: str) -> Any:
    raise JsonRpcError(f"{name} is not valid JSON", code=-32700)


# One decoder for every body (``json.loads`` with hooks builds a new one per call).
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_no_constants)


def _check_depth_and_strings(value: Any, depth: int) -> None:
    """Refuse deep nesting and lone surrogates (from ``\\ud800`` escapes) anywhere."""
    if depth > MAX_DEPTH:
        raise JsonRpcError(f"JSON nested deeper than {MAX_DEPTH}", code=-32700)
    if isinstance(value, str):
        _check_string(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_string(key)
            _check_depth_and_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_depth_and_strings(item, depth + 1)


def _check_string(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JsonRpcError("string with a lone surrogate escape", code=-32700) from exc


def _message(data: Any) -> Message:
    if not isinstance(data, dict):
        raise JsonRpcError(f"a message must be an object, got {type(data).__name__}")
    if data.get("jsonrpc") != "2.0":
        raise JsonRpcError('"jsonrpc" must be "2.0"')
    msg_id = _id(data)
    if "method" not in data:
        if "result" not in data and "error" not in data:
            raise JsonRpcError("neither a request nor a response")
        if "result" in data and "error" in data:
            raise JsonRpcError("a response cannot carry both result and error")
        if msg_id is None:
            raise JsonRpcError("a response needs an id")
        return Message(Kind.RESPONSE, None, msg_id, None, None, None)
    method = data["method"]
    if not isinstance(method, str) or not method:
        raise JsonRpcError('"method" must be a non-empty string')
    if "result" in data or "error" in data:
        raise JsonRpcError("a request cannot carry result or error")
    params = data.get("params")
    if "params" in data and not isinstance(params, dict):
        raise JsonRpcError('"params" must be an object', reason="bad_params")
    kind = Kind.REQUEST if "id" in data else Kind.NOTIFICATION
    target, arguments = _target(method, params)
    frozen = MappingProxyType(params) if params is not None else None
    return Message(kind, method, msg_id, target, arguments, frozen)


def _id(data: Mapping[str, Any]) -> str | int | None:
    if "id" not in data:
        return None
    value = data["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise JsonRpcError('"id" must be a string or an integer', reason="bad_id")
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise JsonRpcError('"id" does not fit in 64 bits', reason="bad_id")
    if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
        raise JsonRpcError(f'"id" longer than {MAX_ID_LENGTH} characters', reason="bad_id")
    return value


def _target(
    method: str, params: Mapping[str, Any] | None
) -> tuple[str | None, Mapping[str, Any] | None]:
    param = TARGET_PARAM.get(method)
    if param is None:
        return None, None
    if params is None or not isinstance(params.get(param), str) or not params[param]:
        raise JsonRpcError(
            f'{method} needs a non-empty string "params.{param}"', reason="bad_params"
        )
    arguments = params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise JsonRpcError(f'{method} "params.arguments" must be an object', reason="bad_params")
    return params[param], MappingProxyType(arguments) if arguments is not None else None
