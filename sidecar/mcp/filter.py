"""Filtering the answers to ``tools/list``, ``resources/list``, ``resources/templates/list`` and
``prompts/list`` so a caller only sees what the policy lets it use. Pure: no I/O.

The answer to a request body holding list requests (its ``Exchange``) is rewritten by a
``ListRewrite`` - the ``AnswerRewrite`` that ``sidecar.proxy.rewrite`` applies under its one rule
(read and rewritten, or replaced; never forwarded unread). It handles ``application/json`` bodies
(``json``) and ``text/event-stream`` streams (``sse``) alike.

**Ids match exactly.** A JSON-RPC response (an object with ``result`` or ``error``) answers a
request of the exchange only if its ``id`` has the same JSON type and value: ``"5"``, ``5.0`` or
``true`` do not answer ``5``. A ``result`` answering a list request is filtered; one answering
another request of the exchange (a batch) passes unchanged; a ``result`` answering *no* request -
another type, an altered id, no id - is replaced by the error: with the id of the request when
the body held one request (its answer, whatever the id says), with its own id in a batch. Lax
clients match ids loosely (the SDKs read ``"5"`` as ``5``, the Python SDK takes any response on
a request's SSE stream as that request's answer), so no unfiltered list can reach them that way,
and the error reaches the request that waits for it.

**Fail closed.** The error is a JSON-RPC error ``INTERNAL_ERROR_CODE`` (-32603) with
``data.reason: unfilterable_list_response`` and ``data.detail`` saying why. It replaces:

* a list ``result`` that is not an object or whose item list is not a list (items that are not
  objects with a string ``name`` / ``uri`` / ``uriTemplate`` are dropped, the rest kept);
* a JSON body our strict reading refuses (duplicate keys, ``NaN``, numbers too large for a
  double, invalid UTF-8, a byte-order mark, too deep) or that is not an object or an array: one
  error per request of the exchange (an array for a batch);
* in a stream, an event whose data cannot be read that way: one error event per request of the
  exchange not answered yet (nothing, if all were); likewise when the stream fails half-way
  (``fail``: an event larger than ``max_event_size``, a corrupt content coding) or ends inside
  an event that has data.

Everything else passes through byte for byte; a rewritten message is re-serialised as compact
JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sidecar.errors import SidecarError
from sidecar.mcp.jsonrpc import Kind, Parsed
from sidecar.mcp.policy import TargetKind

__all__ = [
    "INTERNAL_ERROR_CODE",
    "LIST_FIELDS",
    "MAX_SSE_EVENT",
    "Allow",
    "Exchange",
    "FilterError",
    "ListRewrite",
    "SseFilter",
    "filter_list_result",
    "list_exchange",
    "request_key",
    "unfilterable_response",
]

INTERNAL_ERROR_CODE: Final = -32603
"""JSON-RPC ``error.code`` replacing a list answer that could not be filtered."""
MAX_SSE_EVENT: Final = 4 * 1024 * 1024
"""Default largest SSE event (bytes, up to its terminating blank line) an ``SseFilter`` holds."""

Allow = Callable[[TargetKind, str], bool]
"""``allow(kind, name)``: whether a list item is shown (``sidecar.mcp.policy.visibility``)."""
RequestKey = tuple[bool, str | int]
"""A request id with its JSON type: ``(True, 5)`` for ``5``, ``(False, "5")`` for ``"5"``."""

LIST_FIELDS: Final[Mapping[str, tuple[str, TargetKind, str]]] = {
    "tools/list": ("tools", "tool", "name"),
    "resources/list": ("resources", "resource", "uri"),
    "resources/templates/list": ("resourceTemplates", "resource", "uriTemplate"),
    "prompts/list": ("prompts", "prompt", "name"),
}
"""List method -> (result key, item kind, item key naming it)."""


class FilterError(SidecarError):
    """A list result cannot be filtered safely."""

    status = 502
    reason = "unfilterable_response"


def request_key(value: Any) -> RequestKey | None:
    """``value`` as a request id with its JSON type, or None if no request can have it (JSON-RPC
    ids are strings or integers; ``parse_body`` refuses every other id)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (True, value)
    if isinstance(value, str):
        return (False, value)
    return None


@dataclass(frozen=True, slots=True)
class Exchange:
    """The requests of one body holding list requests: what its answer may answer."""

    requests: Mapping[RequestKey, str]
    """Every request of the body (by id and id type) -> its method. Should a batch reuse an id,
    a list method wins (its answer is filtered)."""
    ids: tuple[str | int, ...]
    """Their ids, in body order, each once."""
    keys: tuple[RequestKey, ...]
    """The same, as keys of ``requests``."""
    batch: bool


def list_exchange(parsed: Parsed) -> Exchange | None:
    """The exchange of a parsed request body, or None if it holds no list request (its answer
    is then never touched)."""
    for m in parsed.messages:  # the common case, a body without list request, costs one loop
        if m.method in LIST_FIELDS and m.kind is Kind.REQUEST:
            break
    else:
        return None
    requests: dict[RequestKey, str] = {}
    ids: list[str | int] = []
    keys: list[RequestKey] = []
    for m in parsed.messages:
        if m.kind is not Kind.REQUEST or m.id is None or m.method is None:
            continue
        key = request_key(m.id)
        assert key is not None  # parse_body admits string and integer ids only
        if key not in requests:
            ids.append(m.id)
            keys.append(key)
            requests[key] = m.method
        elif m.method in LIST_FIELDS:
            requests[key] = m.method
    return Exchange(requests, tuple(ids), tuple(keys), parsed.batch)


def filter_list_result(method: str, response: Mapping[str, Any], allow: Allow) -> dict[str, Any]:
    """A copy of ``response`` (a JSON-RPC response to ``method``) keeping only the listed items
    ``allow(kind, name)`` accepts; everything else (``nextCursor``, ``_meta``...) is kept.

    Raises ``FilterError`` if the result is not an object or its item list is not a list.
    Non-list methods and error responses are returned unchanged (as a copy).
    """
    fields = LIST_FIELDS.get(method)
    if fields is None or "result" not in response:
        return dict(response)
    key, kind, name_key = fields
    result = response["result"]
    if not isinstance(result, Mapping):
        raise FilterError(f"{method} result is not an object")
    if key not in result:
        return dict(response)
    items = result[key]
    if not isinstance(items, list):
        raise FilterError(f"{method} result.{key} is not a list")
    kept = [
        item
        for item in items
        if isinstance(item, Mapping)
        and isinstance(item.get(name_key), str)
        and allow(kind, item[name_key])
    ]
    return {**response, "result": {**result, key: kept}}


def unfilterable_response(message_id: Any, detail: str) -> dict[str, Any]:
    """The error replacing a list answer that could not be filtered (-32603); ``message_id``
    becomes null unless it is a JSON-RPC id (a string or an integer)."""
    return {
        "jsonrpc": "2.0",
        "id": message_id if request_key(message_id) is not None else None,
        "error": {
            "code": INTERNAL_ERROR_CODE,
            "message": "Internal error: the list answer could not be filtered by policy",
            "data": {"reason": "unfilterable_list_response", "detail": detail},
        },
    }


class ListRewrite:
    """Rewrites the answer to one ``Exchange`` (``sidecar.proxy.rewrite.AnswerRewrite``).

    ``failure`` is the first reason an answer (or part of it) was replaced, for the access log.
    """

    def __init__(
        self, exchange: Exchange, allow: Allow, *, max_event_size: int = MAX_SSE_EVENT
    ) -> None:
        self.exchange = exchange
        self._allow = allow
        self._max_event_size = max_event_size
        self.failure: str | None = None

    def json(self, body: bytes) -> bytes:
        """An ``application/json`` answer: ``body`` itself unless something in it was rewritten."""
        value, unreadable = _read(body)
        if unreadable:
            return self.replacement(f"the answer {unreadable}")
        new, changed = self.rewrite_value(value, None)
        return _dumps(new) if changed else body

    def sse(self) -> SseFilter:
        return SseFilter(self, max_event_size=self._max_event_size)

    def replacement(self, reason: str) -> bytes:
        """The body answering every request of the exchange with the error."""
        errors = self.errors(self.exchange.ids, reason)
        return _dumps(errors if self.exchange.batch else errors[0])

    def errors(self, ids: tuple[Any, ...], reason: str) -> list[dict[str, Any]]:
        if self.failure is None:
            self.failure = reason
        return [unfilterable_response(i, reason) for i in ids]

    def rewrite_value(self, value: Any, answered: set[RequestKey] | None) -> tuple[Any, bool]:
        """``value`` (a message or a batch) rewritten, and whether anything changed; the keys of
        the requests it answers are added to ``answered``."""
        if not isinstance(value, list):
            return self._rewrite_message(value, answered)
        changed = False
        items: list[Any] = []
        for item in value:
            new, item_changed = self._rewrite_message(item, answered)
            items.append(new)
            changed = changed or item_changed
        return items, changed

    def _rewrite_message(self, message: Any, answered: set[RequestKey] | None) -> tuple[Any, bool]:
        if not isinstance(message, dict) or ("result" not in message and "error" not in message):
            return message, False  # a request or a notification: the server may send those
        message_id = message.get("id")
        key = request_key(message_id) if "id" in message else None
        method = self.exchange.requests.get(key) if key is not None else None
        if method is not None and answered is not None:
            assert key is not None
            answered.add(key)
        if "result" not in message:
            return message, False  # an error answer lists nothing
        if method is None:
            why = f"the answer's id {_shown(message)} matches no request id (type and value)"
            if self.exchange.batch:
                return self.errors((message_id,), why)[0], True
            # A lone request's stream or body answers that request, whatever the id says.
            if answered is not None:
                answered.add(self.exchange.keys[0])
            return self.errors(self.exchange.ids, why)[0], True
        if method not in LIST_FIELDS:
            return message, False
        try:
            return filter_list_result(method, message, self._allow), True
        except FilterError as exc:
            return self.errors((message_id,), exc.message)[0], True


def _shown(message: Mapping[str, Any]) -> str:
    return json.dumps(message["id"])[:64] if "id" in message else "(none)"


# ----------------------------------------------------------------------------------------- SSE

_LF: Final = 0x0A
_CR: Final = 0x0D
_EOL_RE: Final = re.compile(rb"[\r\n]")


class SseFilter:
    """Rewrites the answers inside a ``text/event-stream`` as it flows (a ``StreamRewriter``).

    ``feed(chunk)`` returns the bytes that can be sent now: every event completed by this chunk,
    as soon as its terminating blank line arrives (nothing is held back longer); ``finish()`` at
    the end of the stream. Lines end with LF, CRLF or CR (a CR at the end of a chunk is resolved
    by the next chunk). Events without data (comments, keep-alives, ``retry:``) and events whose
    messages need no rewrite pass through byte-identical; a rewritten event keeps its other lines
    (``event:``, ``id:``, ``retry:``, comments) and carries the JSON in one ``data:`` line, with
    LF line ends; error events are ``data: <error>`` lines. The output never depends on how the
    input was split into chunks. ``fail(reason)`` ends the stream with error events for the
    requests not answered yet; so does an event larger than ``max_event_size``. Never raises.
    """

    def __init__(self, owner: ListRewrite, *, max_event_size: int = MAX_SSE_EVENT) -> None:
        self._owner = owner
        self._max = max_event_size
        self._answered: set[RequestKey] = set()
        self._done = False
        self._buf = bytearray()
        self._scan = 0  # next index of _buf to look for a line end
        self._line_start = 0  # start of the current, incomplete line
        self._lines: list[tuple[int, int]] = []  # complete lines of the current event (no EOL)
        self._skip_lf = False  # the last line ended in a CR at the end of _buf: LF may follow
        self._orphan: bool | None = None  # an event ended in such a CR: drop (True) / pass a LF
        self._stream_start = True

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, chunk: bytes) -> bytes:
        if self._done or not chunk:
            return b""
        out = bytearray()
        if self._orphan is not None:
            if chunk[0] == _LF:
                if not self._orphan:
                    out += b"\n"
                chunk = chunk[1:]
            self._orphan = None
        self._buf += chunk
        self._process(out)
        if len(self._buf) > self._max:
            out += self.fail(f"SSE event larger than {self._max} bytes")
        return bytes(out)

    def finish(self) -> bytes:
        """The end of the stream. An incomplete event left over is passed on unless it has data
        (SSE clients discard it; a lax one might not): then the requests not answered yet get
        the error instead."""
        if self._done:
            return b""
        self._done = True
        if not self._buf:
            return b""
        lines = list(self._lines)
        if self._line_start < len(self._buf):
            lines.append((self._line_start, len(self._buf)))
        rest = bytes(self._buf)
        self._buf.clear()
        data, _ = self._fields(rest, lines)
        if not data or not "\n".join(data):
            return rest
        return self._errors("the stream ended inside an event")

    def fail(self, reason: str) -> bytes:
        """End the stream now: the requests not answered yet get the error (as events)."""
        if self._done:
            return b""
        self._done = True
        self._buf.clear()
        return self._errors(reason)

    def _errors(self, reason: str) -> bytes:
        exchange = self._owner.exchange
        unanswered = tuple(
            i
            for i, key in zip(exchange.ids, exchange.keys, strict=True)
            if key not in self._answered
        )
        self._answered.update(exchange.requests)
        errors = self._owner.errors(unanswered, reason)
        return b"".join(b"data: " + _dumps(error) + b"\n\n" for error in errors)

    def _process(self, out: bytearray) -> None:
        buf = self._buf
        i = self._scan
        while i < len(buf):
            if self._skip_lf:
                self._skip_lf = False
                if buf[i] == _LF:
                    i += 1
                    self._line_start = i
                    continue
            match = _EOL_RE.search(buf, i)
            if match is None:
                i = len(buf)
                break
            j = match.start()
            end_of_data = False
            if buf[j] == _CR:
                if j + 1 < len(buf):
                    eol_end = j + 2 if buf[j + 1] == _LF else j + 1
                else:
                    eol_end = j + 1
                    end_of_data = True
            else:
                eol_end = j + 1
            if j == self._line_start:  # a blank line: the event is complete
                raw = bytes(buf[:eol_end])
                rewritten = self._event(raw, self._lines)
                out += raw if rewritten is None else rewritten
                del buf[:eol_end]
                self._lines = []
                self._line_start = i = 0
                if end_of_data:
                    self._orphan = rewritten is not None
                continue
            self._lines.append((self._line_start, j))
            self._line_start = i = eol_end
            self._skip_lf = end_of_data
        self._scan = i

    def _fields(
        self, raw: bytes, lines: list[tuple[int, int]]
    ) -> tuple[list[str], list[tuple[bytes, bool]]]:
        """The event's data values, and every line with whether it is a data line."""
        data: list[str] = []
        fields: list[tuple[bytes, bool]] = []
        for start, end in lines:
            line = raw[start:end].decode("utf-8", "replace")
            if self._stream_start:
                self._stream_start = False
                line = line.removeprefix("\ufeff")  # SSE: one leading BOM is ignored
            name, _, value = line.partition(":")
            is_data = name == "data"
            if is_data:
                data.append(value[1:] if value.startswith(" ") else value)
            fields.append((raw[start:end], is_data))
        return data, fields

    def _event(self, raw: bytes, lines: list[tuple[int, int]]) -> bytes | None:
        """The event to send instead of ``raw`` (possibly nothing), or None to pass ``raw``."""
        data, fields = self._fields(raw, lines)
        text = "\n".join(data)
        if not text:  # no data: SSE dispatches nothing
            return None
        value, unreadable = _read(text)
        if unreadable:
            return self._errors(f"an SSE event {unreadable}")
        new, changed = self._owner.rewrite_value(value, self._answered)
        if not changed:
            return None
        result = bytearray()
        wrote = False
        for line_bytes, is_data in fields:
            if not is_data:
                result += line_bytes + b"\n"
            elif not wrote:
                result += b"data: " + _dumps(new) + b"\n"
                wrote = True
        return bytes(result + b"\n")


# ------------------------------------------------------------------------------------- helpers


class _Refused(Exception):
    """Our strict reading refuses the JSON text."""


def _read(text: str | bytes) -> tuple[Any, str]:
    """The message or batch ``text`` holds, or why it cannot be read (then the value is None)."""
    try:
        value = _strict(text)
    except _Refused as exc:
        return None, f"is not strict JSON ({exc})"
    if not isinstance(value, dict | list):
        return None, "is not a JSON-RPC message"
    return value, ""


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (escaped in the input): keep it escaped
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def _strict(text: str | bytes) -> Any:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if text.startswith("\ufeff"):
            raise _Refused("a byte-order mark")
        return json.loads(
            text, object_pairs_hook=_unique, parse_constant=_no_constant, parse_float=_finite
        )
    except UnicodeError:
        raise _Refused("not UTF-8") from None
    except RecursionError:
        raise _Refused("nested too deeply") from None
    except ValueError as exc:
        raise _Refused(str(exc).partition(":")[0]) from None


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number as a float; one that no double holds (``1e400``) would be written back as
    ``Infinity``, which is not JSON."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value
