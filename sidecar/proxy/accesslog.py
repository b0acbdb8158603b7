"""Structured access log: one compact JSON object per request, one request per line.

Sink choice: a **text stream** (default ``sys.stdout``, looked up at write time so redirection and
test capture work), not a ``logging.Logger``. The line must be pure JSON for log shippers
(no logging prefix), and the ``logging`` machinery reports its own failures by printing
tracebacks to stderr, which is exactly what a flood of requests must not trigger.

Safety: ``json.dumps`` with ``ensure_ascii`` escapes every control character (``\\n``, ``\\r``,
``\\x1b``...), every non-ASCII character (including U+2028/U+2029 line separators) and lone
surrogates, so a hostile path or header can neither break a line nor fail encoding. Whatever
still goes wrong (closed stream, full disk, broken pipe) is swallowed and counted in ``errors``:
the logger never raises into the request path.

This module is pure (no aiohttp); the proxy builds ``AccessRecord`` objects from its requests.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from sidecar.compat import compact_ascii_json_encoder
from sidecar.tracing.correlation import Correlation, current

MCP_SESSION_HEADER = "Mcp-Session-Id"


def rfc3339(moment: dt.datetime | None = None) -> str:
    """``2025-06-18T12:34:56.789Z``: RFC 3339, UTC, millisecond precision (default: now).
    A naive ``moment`` is taken to be UTC."""
    if moment is None:
        return _now()
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


FLUSH_INTERVAL = 0.05  # seconds a logged line may be held before it is written
MAX_PENDING = 64  # lines held at most (about 30 KiB) before they are written early

# The whole second last formatted and its text up to the seconds: one tuple, replaced whole, so
# a thread never sees the second of one pair with the text of another.
_second: tuple[int, str] = (-1, "")


def _now() -> str:
    """Now as ``rfc3339`` writes it; every log line asks, so the date and time up to the second
    are formatted once per second and only the milliseconds per call."""
    global _second
    now = time.time()
    second = int(now)
    micros = round((now - second) * 1_000_000)  # as datetime rounds a timestamp
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached_second, text = _second
    if cached_second != second:
        text = dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (second, text)
    return f"{text}.{micros // 1000:03d}Z"


_to_json = compact_ascii_json_encoder()


def mcp_session_id(headers: Mapping[str, str]) -> str | None:
    """The ``Mcp-Session-Id`` header of a request or response, or ``None``.

    Pass a case-insensitive mapping (a ``CIMultiDict``, as the engine parses them); for a plain
    ``dict`` the canonical and the lowercase spelling are tried.
    """
    value = headers.get(MCP_SESSION_HEADER)
    if value is None:
        value = headers.get(MCP_SESSION_HEADER.lower())
    return value or None


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRecord:
    """One request as the access log records it (keyword-only; JSON keys in this order).

    ``peer``: inbound the client's SPIFFE ID, outbound the route's server ID (``None`` when
    there is none, e.g. OAuth-only ingress or a request refused before routing).
    ``reason``: the refusal/error reason label when the sidecar answered itself.
    ``principal``: who the request was admitted as (SPIFFE ID, token subject, scopes, roles).
    ``correlation``: the request's ``x-request-id`` and trace ids (by default: the current task's).
    """

    time: str = field(default_factory=rfc3339)
    direction: str
    peer: str | None = None
    method: str
    path: str
    status: int
    bytes_in: int = 0
    bytes_out: int = 0
    duration_ms: float = 0.0
    mcp_session_id: str | None = None
    route: str | None = None
    reason: str | None = None
    upstream: str | None = None
    principal: Mapping[str, Any] | None = None
    correlation: Correlation | None = field(default_factory=current)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "kind": "access",
            "direction": self.direction,
            "peer": self.peer,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round(self.duration_ms, 3) if math.isfinite(self.duration_ms) else None,
            "mcp_session_id": self.mcp_session_id,
            "route": self.route,
            "reason": self.reason,
            "upstream": self.upstream,
            "principal": dict(self.principal) if self.principal is not None else None,
            **correlation_fields(self.correlation),
        }

    def to_json(self) -> str:
        """One line of compact JSON, ASCII only, no newline."""
        return _to_json(self.to_dict())


def correlation_fields(correlation: Correlation | None) -> dict[str, str | None]:
    """``x_request_id``, ``trace_id`` and ``span_id`` of a log line (``None`` when unknown)."""
    if correlation is None:
        return {"x_request_id": None, "trace_id": None, "span_id": None}
    return {
        "x_request_id": correlation.request_id,
        "trace_id": correlation.trace_id,
        "span_id": correlation.span_id,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One MCP request (one JSON-RPC message) and the policy's verdict on it.

    ``decision`` is the message's own verdict; ``batch`` (for the elements of a batch only) the
    verdict on the whole batch, which is forwarded only if every element is allowed - so an
    allowed element of a denied batch is ``decision: allow`` with ``batch: deny``. ``extra``
    fields (a dry-run policy's ``would_hide``...) follow the others when given."""

    time: str = field(default_factory=rfc3339)
    kind: str = "mcp_audit"
    principal: Mapping[str, Any] | None
    method: str | None
    tool: str | None  # tool / prompt name or resource URI
    request_id: str | int | None
    decision: str  # allow | deny | would_deny | would_filter | rate_limited | invalid
    rule: str | None
    batch: str | None = None  # allow | deny | would_deny | rate_limited, for batch elements
    status: int
    latency_ms: float
    mcp_session_id: str | None
    correlation: Correlation | None = field(default_factory=current)
    extra: Mapping[str, Any] | None = None

    def to_json(self) -> str:
        data = {
            "time": self.time,
            "kind": self.kind,
            "principal": dict(self.principal) if self.principal is not None else None,
            "method": self.method,
            "tool": self.tool,
            "request_id": self.request_id,
            "decision": self.decision,
            "rule": self.rule,
            "batch": self.batch,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3) if math.isfinite(self.latency_ms) else None,
            "mcp_session_id": self.mcp_session_id,
            **correlation_fields(self.correlation),
        }
        if self.extra is not None:
            data.update(self.extra)
        return _to_json(data)


class JsonLogFormatter(logging.Formatter):
    """The process log (``log.format: json``) as JSON lines shaped like the access lines:
    ``time``, ``kind: "log"``, ``level``, ``logger``, ``message``, the request's correlation
    ids when logged on behalf of one, and ``exception`` (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": rfc3339(dt.datetime.fromtimestamp(record.created, dt.UTC)),
            "kind": "log",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **correlation_fields(current()),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return _to_json(data)


class LogRecord(Protocol):
    def to_json(self) -> str: ...


class AccessLogger:
    """Writes ``AccessRecord`` lines to ``stream`` (``None``: ``sys.stdout`` at write time).

    ``enabled`` may be flipped at any time. Inside an event loop, lines are held and written
    together, in one write and one flush, ``flush_interval`` seconds after the first of them
    (or as soon as ``MAX_PENDING`` are held), as Envoy's file access log does with its flush
    interval: a write per line costs a system call per line whatever the stream's buffering
    (``PYTHONUNBUFFERED``, as in our image, writes through). Outside a loop, each line is
    written at once. With ``flush`` off, writes are not followed by a flush. A process killed
    outright can lose the held lines; ``flush_pending`` (the runtime calls it on the way out)
    writes them. ``written`` and ``errors`` count lines written and lines lost; ``log`` never
    raises.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        enabled: bool = True,
        flush: bool = True,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.enabled = enabled
        self.flush = flush
        self.flush_interval = flush_interval
        self.written = 0
        self.errors = 0
        self._stream = stream
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where the next flush runs

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def log(self, record: LogRecord) -> None:
        if not self.enabled:
            return
        try:
            line = record.to_json() + "\n"
        except Exception:  # logging must never break the request path
            self.errors += 1
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:  # whole lines only: lines never interleave across threads
            if loop is None:
                self._write([line])
                return
            self._pending.append(line)
            if len(self._pending) >= MAX_PENDING:
                self._write_pending()
            elif self._flush_loop is not loop:  # (a loop that stopped before its flush: not this)
                self._flush_loop = loop
                loop.call_later(self.flush_interval, self.flush_pending)

    def flush_pending(self) -> None:
        """Write the lines held for the next flush now."""
        with self._lock:
            self._flush_loop = None
            self._write_pending()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        if lines:
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        try:
            stream = self.stream
            stream.write("".join(lines))
            if self.flush:
                stream.flush()
            self.written += len(lines)
        except Exception:  # a closed stream, a full disk, a broken pipe: counted, never raised
            self.errors += len(lines)
