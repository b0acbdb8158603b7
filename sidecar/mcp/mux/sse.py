"""Reading and writing ``text/event-stream`` for the multiplexer (pure).

Every event a target sends is parsed and re-written (ids of server-to-client requests, resource
URIs), so the relay works on whole events: ``SseReader`` splits a stream into the ``data`` of
its events as they complete (lines end with LF, CRLF or CR, one leading byte-order mark is
ignored, comments and the ``id`` / ``event`` / ``retry`` fields are dropped), and
``sse_event`` writes one. Event ids are not relayed: a multiplexed stream cannot be resumed
with ``Last-Event-ID`` (it would need one position per target).
"""

from __future__ import annotations

from typing import Final

from sidecar.errors import SidecarError

MAX_EVENT: Final = 4 * 1024 * 1024
"""Largest event (bytes of its data) a reader holds; a bigger one is an error."""
_BOM: Final = b"\xef\xbb\xbf"


class SseError(SidecarError):
    """The stream cannot be read safely (an oversized event): it must be cut."""

    status = 502
    reason = "sse_event_too_large"


class SseReader:
    """Incremental: ``feed(chunk)`` returns the data of every event completed by ``chunk``."""

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._max = max_event
        self._buf = bytearray()
        self._data: list[bytes] = []
        self._size = 0
        self._start = True

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        buf = self._buf
        buf += chunk
        if self._start and buf:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                return events  # maybe the start of a byte-order mark
            self._start = False
            if buf.startswith(_BOM):
                del buf[: len(_BOM)]
        pos = 0
        size = len(buf)
        while pos < size:
            lf = buf.find(b"\n", pos)
            cr = buf.find(b"\r", pos, lf if lf >= 0 else size)
            if cr >= 0:
                if cr + 1 == size:
                    break  # a CR at the end: an LF may follow in the next chunk
                end, after = cr, cr + 2 if buf[cr + 1] == 0x0A else cr + 1
            elif lf >= 0:
                end, after = lf, lf + 1
            else:
                break
            self._line(bytes(buf[pos:end]), events)
            pos = after
        del buf[:pos]
        if len(buf) + self._size > self._max:
            raise SseError(f"SSE event larger than {self._max} bytes")
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        if not line:
            if self._data:
                events.append(b"\n".join(self._data))
            self._data = []
            self._size = 0
            return
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if field == b"data":
            value = value[1:] if value.startswith(b" ") else value
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                raise SseError(f"SSE event larger than {self._max} bytes")


def sse_event(data: bytes) -> bytes:
    """One ``message`` event carrying ``data`` (compact JSON: no line breaks)."""
    return b"event: message\ndata: " + data + b"\n\n"
