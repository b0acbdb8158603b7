"""Which request a log line belongs to: the request id and the W3C trace id, per request.

A ``ContextVar`` set when the request starts is seen by everything that logs on its behalf
(access line, MCP audit lines, process log records) without passing it through every call: in
the request's task, or — for a request served on protocol callbacks — made current by each
callback for as long as it runs (``activate``). Pure apart from the context variable; no
OpenTelemetry.

``x-request-id``: kept when the client sent exactly one that is 1-128 printable ASCII
characters without spaces, otherwise (absent, repeated, too long, odd bytes) replaced by a new
random one — in the request itself, so it is forwarded upstream like any end-to-end header and
the next hop logs the same id.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar, Token
from typing import Final

from multidict import CIMultiDict

REQUEST_ID_HEADER: Final = "X-Request-Id"
TRACEPARENT: Final = "traceparent"
MAX_REQUEST_ID: Final = 128
# W3C Trace Context: version "00"-"fe", trace id, parent id, flags (lowercase hex); a future
# version may append fields after a dash
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE: Final = "0" * 32
_ZERO_SPAN: Final = "0" * 16
_random_bits = random.getrandbits


def new_request_id() -> str:
    """32 random hex digits. An id to join log lines, not a secret: the fast PRNG will do."""
    return "%032x" % _random_bits(128)  # noqa: UP031 - the fastest formatting here


def valid_request_id(value: str) -> bool:
    """1-128 printable ASCII characters, no spaces (what ``[!-~]{1,128}`` says, faster)."""
    return (
        0 < len(value) <= MAX_REQUEST_ID
        and value.isascii()
        and value.isprintable()
        and (" " not in value)
    )


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a valid ``traceparent`` header value, else ``None``."""
    if not traceparent:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_id, span_id, _, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE:
        return None
    if span_id == _ZERO_SPAN:
        return None
    return trace_id


class Correlation:
    """The ids of one request. ``trace_id`` is read from the client's ``traceparent`` when a log
    line first asks for it (tracing off), or set from our span (tracing on); ``span_id`` is our
    server span's id (tracing on only)."""

    __slots__ = ("_trace_id", "_traceparent", "request_id", "span_id")

    def __init__(self, request_id: str, traceparent: str | None) -> None:
        self.request_id = request_id
        self._traceparent = traceparent
        self._trace_id: str | None = None
        self.span_id: str | None = None

    @property
    def trace_id(self) -> str | None:
        if self._trace_id is None and self._traceparent is not None:
            self._trace_id = trace_id_of(self._traceparent)
            self._traceparent = None
        return self._trace_id

    def set_span(self, trace_id: str, span_id: str | None) -> None:
        self._trace_id, self.span_id, self._traceparent = trace_id, span_id, None


_current: ContextVar[Correlation | None] = ContextVar("mcp_sidecar_correlation", default=None)


def correlate(headers: CIMultiDict[str]) -> Correlation:
    """Settle the request id of the request with ``headers`` (see the module docstring); the
    ids of the request, not made current."""
    ids = headers.getall(REQUEST_ID_HEADER, ())
    if len(ids) == 1 and valid_request_id(ids[0]):
        request_id = ids[0]
    else:
        request_id = headers[REQUEST_ID_HEADER] = new_request_id()
    return Correlation(request_id, headers.get(TRACEPARENT))


def begin_request(headers: CIMultiDict[str]) -> Correlation:
    """``correlate``, made the current task's correlation."""
    correlation = correlate(headers)
    _current.set(correlation)
    return correlation


def activate(correlation: Correlation) -> Token[Correlation | None]:
    """Make ``correlation`` current for the callback running now (a request served on protocol
    callbacks has no task of its own); ``deactivate`` before the callback returns."""
    return _current.set(correlation)


def deactivate(token: Token[Correlation | None]) -> None:
    _current.reset(token)


def current() -> Correlation | None:
    """The correlation of the request this task serves, or ``None`` outside one."""
    return _current.get()


def current_request_id() -> str | None:
    correlation = _current.get()
    return correlation.request_id if correlation is not None else None


def current_trace_id() -> str | None:
    correlation = _current.get()
    return correlation.trace_id if correlation is not None else None
