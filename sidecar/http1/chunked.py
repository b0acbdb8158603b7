"""Incremental, strict decoding of the chunked transfer coding (RFC 9112 §7.1).

Chunk data is never buffered: every ``feed`` returns the payload bytes it contains as slices of
its input, so memory stays bounded by the size-line and trailer limits whatever the chunk sizes.
"""

from __future__ import annotations

import re

from sidecar.http1.errors import HttpParseError

__all__ = ["ChunkedDecoder"]

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# chunk-size [ chunk-ext ] CRLF; extensions are skipped but may hold no CTL (bar HTAB).
_match_size_line = re.compile(
    rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\r\n"
).fullmatch
_match_trailer_line = re.compile(rb"[" + _TCHAR + rb"]+:[\t\x20-\x7e\x80-\xff]*\r\n").fullmatch

_SIZE = 0  # reading a chunk-size line
_DATA = 1  # inside chunk data, ``_remaining`` bytes to go
_DATA_CR = 2  # chunk data done, expecting CRLF
_DATA_LF = 3  # chunk data done and CR seen, expecting LF
_TRAILER = 4  # after the last chunk: trailer lines until an empty line
_DONE = 5
_FAILED = 6


class ChunkedDecoder:
    """Incremental decoder of a chunked body (RFC 9112 §7.1)."""

    __slots__ = ("_line", "_max_chunk_line", "_max_trailers", "_remaining", "_state", "_trailers")

    def __init__(self, *, max_chunk_line: int = 4096, max_trailers: int = 8192) -> None:
        self._max_chunk_line = max_chunk_line
        self._max_trailers = max_trailers
        self._state = _SIZE
        self._remaining = 0
        self._line = b""  # a size or trailer line split across feeds
        self._trailers = 0  # bytes of trailer section seen

    @property
    def done(self) -> bool:
        """The final 0-size chunk and the trailer section (ignored/dropped) were consumed."""
        return self._state == _DONE

    def _fail(self, message: str) -> HttpParseError:
        self._state = _FAILED
        return HttpParseError(message, reason="bad_chunk")

    def feed(self, data: bytes) -> tuple[list[bytes], int]:
        """Decode what ``data`` completes; returns (payload pieces, bytes consumed).

        Consumed < len(data) only when the body ended inside ``data`` (the rest belongs to the
        next message). Raises HttpParseError(reason="bad_chunk") on malformed input, and again on
        every later call.
        """
        state = self._state
        if state == _FAILED:
            raise HttpParseError("chunked body already refused", reason="bad_chunk")
        pieces: list[bytes] = []
        pos = 0
        end = len(data)
        while pos < end:
            if state == _DATA:
                stop = pos + self._remaining
                if stop >= end:
                    pieces.append(data[pos:])
                    self._remaining = stop - end
                    if not self._remaining:
                        state = _DATA_CR
                    pos = end
                    break
                pieces.append(data[pos:stop])
                self._remaining = 0
                pos = stop
                state = _DATA_CR
            elif state == _DATA_CR:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    state = _SIZE
                elif pos + 1 == end and data[pos] == 0x0D:
                    pos = end
                    state = _DATA_LF
                else:
                    raise self._fail("chunk data not followed by CRLF")
            elif state == _DATA_LF:
                if data[pos] != 0x0A:
                    raise self._fail("chunk data not followed by CRLF")
                pos += 1
                state = _SIZE
            elif state == _DONE:
                break
            else:  # _SIZE or _TRAILER: a CRLF-terminated line
                newline = data.find(b"\n", pos)
                if newline < 0:
                    self._line += data[pos:]
                    if state == _SIZE:
                        if len(self._line) > self._max_chunk_line:
                            raise self._fail("chunk-size line too long")
                    elif self._trailers + len(self._line) > self._max_trailers:
                        raise self._fail("trailer section too large")
                    pos = end
                    break
                line = data[pos : newline + 1]
                if self._line:
                    line = self._line + line
                    self._line = b""
                pos = newline + 1
                if state == _SIZE:
                    if len(line) > self._max_chunk_line:
                        raise self._fail("chunk-size line too long")
                    match = _match_size_line(line)
                    if match is None:
                        raise self._fail(f"malformed chunk-size line {line[:40]!r}")
                    self._remaining = int(match[1], 16)
                    state = _DATA if self._remaining else _TRAILER
                else:
                    self._trailers += len(line)
                    if self._trailers > self._max_trailers:
                        raise self._fail("trailer section too large")
                    if line == b"\r\n":
                        state = _DONE
                        break
                    if _match_trailer_line(line) is None:
                        raise self._fail(f"malformed trailer line {line[:40]!r}")
        self._state = state
        return pieces, pos
