"""Filtering ``tools/list``, ``resources/list``, ``resources/templates/list`` and ``prompts/list``
results so a caller only sees what the policy lets it use - in ``application/json`` bodies and in
``text/event-stream`` responses alike. Pure: no I/O.

Only responses whose ``id`` is one of the *pending list requests* of the exchange are touched
(``pending_list_requests`` finds them in the parsed request); everything else passes through
byte-for-byte. A rewritten response is re-serialised as compact JSON.

**Fail closed.** A response to a pending list request that cannot be filtered is replaced by a
JSON-RPC error ``INTERNAL_ERROR_CODE`` (-32603, ``data.reason: unfilterable_list_response``)
rather than forwarded with unfiltered items:

* a result that is not an object, or whose item list is not a list (items that are not objects
  with a string ``name`` / ``uri`` / ``uriTemplate`` are dropped, the rest kept);
* a message our strict reading refuses (duplicate keys, ``NaN``, invalid UTF-8, a byte-order
  mark...) but that a laxer client could still read: it is re-read leniently only to find which
  ids it answers (every ``id`` key counts, duplicates included), and those get the error;
* a JSON body that is not JSON at all (or nested too deeply to read) while list requests are
  pending: every pending list request gets the error (the body answers exactly those requests).

In an SSE stream an event whose data is not JSON even leniently passes through (no JSON client can
read it either, and it cannot be tied to a request); data nested too deeply to read, or an event
larger than ``max_event_size``, raises ``FilterError``: the caller aborts the stream.

Response ids are compared as JSON values: ``1.0`` answers request ``1`` (as in JavaScript);
``true`` answers nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from sidecar.errors import SidecarError
from sidecar.mcp.jsonrpc import Kind, Parsed
from sidecar.mcp.policy import LIST_METHODS, TargetKind

__all__ = [
    "INTERNAL_ERROR_CODE",
    "LIST_FIELDS",
    "MAX_SSE_EVENT",
    "Allow",
    "FilterError",
    "SseFilter",
    "filter_json_body",
    "filter_list_result",
    "pending_list_requests",
    "unfilterable_response",
]

INTERNAL_ERROR_CODE: Final = -32603
"""JSON-RPC ``error.code`` replacing a list response that could not be filtered."""
MAX_SSE_EVENT: Final = 4 * 1024 * 1024
"""Default largest SSE event (bytes, up to its terminating blank line) an ``SseFilter`` holds."""

Allow = Callable[[TargetKind, str], bool]
"""``allow(kind, name)``: whether a list item is shown (``sidecar.mcp.policy.visibility``)."""
Pending = Mapping[Any, str]
"""Request id (str or int) -> list method, of the list requests awaiting their response."""

LIST_FIELDS: Final[Mapping[str, tuple[str, TargetKind, str]]] = {
    "tools/list": ("tools", "tool", "name"),
    "resources/list": ("resources", "resource", "uri"),
    "resources/templates/list": ("resourceTemplates", "resource", "uriTemplate"),
    "prompts/list": ("prompts", "prompt", "name"),
}
"""List method -> (result key, item kind, item key naming it)."""


class FilterError(SidecarError):
    """A response cannot be filtered safely; the proxy must not forward it (502)."""

    status = 502
    reason = "unfilterable_response"


def pending_list_requests(parsed: Parsed) -> dict[str | int, str]:
    """The list requests of a parsed request body: ``{id: method}``."""
    pending: dict[str | int, str] = {}
    for m in parsed.messages:
        method = m.method
        if m.kind is Kind.REQUEST and m.id is not None and method in LIST_METHODS:
            assert method is not None
            pending[m.id] = method
    return pending


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


def unfilterable_response(message_id: str | int | None) -> dict[str, Any]:
    """The error replacing a list response that could not be filtered (-32603)."""
    return {
        "jsonrpc": "2.0",
        "id": message_id,
        "error": {
            "code": INTERNAL_ERROR_CODE,
            "message": "Internal error: the list response could not be filtered by policy",
            "data": {"reason": "unfilterable_list_response"},
        },
    }


def filter_json_body(
    body: bytes, request_ids_to_method: Pending, allow: Allow, *, batch: bool = False
) -> bytes:
    """Filter an ``application/json`` response body (one response or a batch).

    Returned unchanged (the same bytes) unless it answers a pending list request. If the body
    cannot be read at all while list requests are pending, the result is one -32603 error per
    pending list request: a single object when there is one and ``batch`` is false, else an
    array.
    """
    if not request_ids_to_method:
        return body
    try:
        outcome = _rewrite(body, request_ids_to_method, allow)
    except FilterError:  # nested too deeply to read
        outcome = _NOT_JSON
    if outcome is _UNCHANGED:
        return body
    if outcome is _NOT_JSON:
        errors = [unfilterable_response(i) for i in request_ids_to_method]
        outcome = errors[0] if len(errors) == 1 and not batch else errors
    return _dumps(outcome)


# ----------------------------------------------------------------------------------------- SSE

_LF: Final = 0x0A
_CR: Final = 0x0D
_EOL_RE: Final = re.compile(rb"[\r\n]")


class SseFilter:
    """Rewrites list responses inside a ``text/event-stream`` as it flows.

    ``feed(chunk)`` returns the bytes that can be sent now: every event completed by this chunk,
    as soon as its terminating blank line arrives (nothing is held back longer); ``flush()`` at
    the end of the stream. Lines end with LF, CRLF or CR (a CR at the end of a chunk is resolved
    by the next chunk). Events that are not a JSON-RPC response to a pending list request -
    comments, keep-alives, notifications, other responses, incomplete events at the end - pass
    through byte-identical; a rewritten event keeps its other lines (``event:``, ``id:``,
    ``retry:``, comments) and carries the JSON in one ``data:`` line, with LF line ends.
    The output never depends on how the input was split into chunks.

    Without pending list requests the stream is passed through without any buffering.
    An event larger than ``max_event_size`` raises ``FilterError`` (abort the stream).
    """

    def __init__(
        self,
        request_ids_to_method: Pending,
        allow: Allow,
        *,
        max_event_size: int = MAX_SSE_EVENT,
    ) -> None:
        self._pending = dict(request_ids_to_method)
        self._allow = allow
        self._max = max_event_size
        self._buf = bytearray()
        self._scan = 0  # next index of _buf to look for a line end
        self._line_start = 0  # start of the current, incomplete line
        self._lines: list[tuple[int, int]] = []  # complete lines of the current event (no EOL)
        self._skip_lf = False  # the last line ended in a CR at the end of _buf: LF may follow
        self._orphan: bool | None = None  # an event ended in such a CR: drop (True) / pass a LF
        self._stream_start = True

    def feed(self, chunk: bytes) -> bytes:
        if not self._pending:
            return bytes(chunk)
        if not chunk:
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
            raise FilterError(
                f"SSE event larger than {self._max} bytes", reason="sse_event_too_large"
            )
        return bytes(out)

    def flush(self) -> bytes:
        """The incomplete event left at the end of the stream, unchanged - SSE clients discard
        it - or nothing if it would have been rewritten (so a lax client cannot use it)."""
        if not self._buf:
            return b""
        lines = list(self._lines)
        if self._line_start < len(self._buf):
            lines.append((self._line_start, len(self._buf)))
        rest = bytes(self._buf)
        rewritten = self._event(rest, lines) if lines else None
        self._buf.clear()
        self._lines = []
        self._scan = self._line_start = 0
        return rest if rewritten is None else b""

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

    def _event(self, raw: bytes, lines: list[tuple[int, int]]) -> bytes | None:
        """The rewritten event, or None to pass ``raw`` through."""
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
        if not data:
            return None
        outcome = _rewrite("\n".join(data), self._pending, self._allow)
        if outcome is _UNCHANGED or outcome is _NOT_JSON:
            return None
        text = _dumps(outcome)
        result = bytearray()
        wrote = False
        for line_bytes, is_data in fields:
            if not is_data:
                result += line_bytes + b"\n"
            elif not wrote:
                result += b"data: " + text + b"\n"
                wrote = True
        return bytes(result + b"\n")


# ------------------------------------------------------------------------------------- helpers


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_UNCHANGED: Final = _Marker("UNCHANGED")
_NOT_JSON: Final = _Marker("NOT_JSON")


class _Refused(Exception):
    """Our strict reading refuses the JSON text."""


def _dumps(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (escaped in the input): keep it escaped
        return json.dumps(value, separators=(",", ":")).encode("ascii")


def _rewrite(text: str | bytes, pending: Pending, allow: Allow) -> Any:
    """The JSON value to send instead of ``text``, ``_UNCHANGED``, or ``_NOT_JSON`` (not readable
    even leniently, nor deep enough to tie to a request)."""
    try:
        value = _strict(text)
    except _Refused:
        return _lenient(text, pending)
    new, changed = _rewrite_value(value, pending, allow)
    return new if changed else _UNCHANGED


def _strict(text: str | bytes) -> Any:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if text.startswith("\ufeff"):
            raise _Refused
        value = json.loads(text, object_pairs_hook=_unique, parse_constant=_no_constant)
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise _Refused from exc
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Object(list[tuple[str, Any]]):
    """A JSON object read leniently: every (key, value) pair, duplicates kept."""


def _lenient(text: str | bytes, pending: Pending) -> Any:
    """For a text our strict reading refused: errors for the pending list requests it answers
    (as a laxer parser could read it), ``_UNCHANGED`` if none, ``_NOT_JSON`` if unreadable."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        value = json.loads(text.lstrip("\ufeff"), object_pairs_hook=_Object)
    except RecursionError:
        raise FilterError("response nested too deeply to filter", reason="too_deep") from None
    except ValueError:
        return _NOT_JSON
    candidates = [value] if isinstance(value, _Object) else value if isinstance(value, list) else []
    answered: list[Any] = []
    for candidate in candidates:
        if not isinstance(candidate, _Object):
            continue
        for key, item in candidate:
            if key == "id":
                method_id = _pending_id(item, pending)
                if method_id is not None and method_id not in answered:
                    answered.append(method_id)
    if not answered:
        return _UNCHANGED
    errors = [unfilterable_response(i) for i in answered]
    return errors[0] if isinstance(value, _Object) else errors


def _pending_id(value: Any, pending: Pending) -> str | int | None:
    """The pending request id ``value`` answers (as JSON values compare), or None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    if value != value:  # NaN
        return None
    for key in pending:
        same_kind = type(key) is type(value) or (isinstance(key, int) and isinstance(value, float))
        if same_kind and key == value:
            return key  # type: ignore[no-any-return]
    return None


def _rewrite_value(value: Any, pending: Pending, allow: Allow) -> tuple[Any, bool]:
    if isinstance(value, list):
        changed = False
        items: list[Any] = []
        for item in value:
            new, item_changed = _rewrite_message(item, pending, allow)
            items.append(new)
            changed = changed or item_changed
        return items, changed
    return _rewrite_message(value, pending, allow)


def _rewrite_message(message: Any, pending: Pending, allow: Allow) -> tuple[Any, bool]:
    if not isinstance(message, dict) or "result" not in message or "id" not in message:
        return message, False
    message_id = _pending_id(message["id"], pending)
    if message_id is None:
        return message, False
    try:
        return filter_list_result(pending[message_id], message, allow), True
    except FilterError:
        return unfilterable_response(message_id), True
