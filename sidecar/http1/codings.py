"""Content codings (RFC 9110 §8.4) a proxy that rewrites bodies must undo: which coding a
response declares, and bounded incremental decoding of ``gzip`` and ``deflate``. Pure: no I/O.

Only one coding is ever undone: ``identity`` (none), ``gzip`` (``x-gzip``) or ``deflate``.
Everything else - ``br``, ``zstd``, ``compress``, unknown names, parameters, stacked codings such
as ``gzip, gzip`` - is *unreadable* (``content_coding`` returns ``None``): a caller that must read
the body refuses it rather than guessing.

Decoding is bounded: one ``decode`` call never produces more than its ``limit`` bytes (a
decompression bomb raises ``CodingError`` after ``limit + 1`` bytes, not after gigabytes), and a
stream that stops before its end (truncated) or carries bytes after it fails at ``finish``.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from typing import Final

from sidecar.errors import SidecarError

__all__ = ["READABLE", "CodingError", "Decoder", "content_coding", "decode_all"]

READABLE: Final = frozenset({"identity", "gzip", "deflate"})
_ALIASES: Final = {"x-gzip": "gzip"}
_GZIP_MAGIC: Final = b"\x1f\x8b"


class CodingError(SidecarError):
    """A body cannot be decoded: corrupt, truncated, or larger than allowed once decoded."""

    status = 502
    reason = "undecodable_body"


def content_coding(values: Iterable[str]) -> str | None:
    """The one coding the ``Content-Encoding`` field values declare (``identity`` when none), or
    ``None`` if the body cannot be read: an unknown coding, or more than one coding applied."""
    codings = [
        _ALIASES.get(name, name)
        for value in values
        for name in (part.strip(" \t").lower() for part in value.split(","))
        if name and name != "identity"
    ]
    if not codings:
        return "identity"
    if len(codings) == 1 and codings[0] in READABLE:
        return codings[0]
    return None


class Decoder:
    """Incremental decoder of one content coding (``identity``, ``gzip`` or ``deflate``).

    ``deflate`` is the zlib format (RFC 9110 §8.4.1.2); a raw deflate stream, which some servers
    send instead, is recognised by its first two bytes not forming a zlib header. A gzip body may
    hold several members (RFC 1952 §2.2); anything after the last one is an error.
    """

    __slots__ = ("_coding", "_done", "_head", "_zlib")

    def __init__(self, coding: str) -> None:
        if coding not in READABLE:
            raise ValueError(f"unsupported content coding {coding!r}")
        self._coding = coding
        self._zlib: zlib._Decompress | None = None
        self._head = b""  # the first byte of a deflate stream, until the second one arrives
        self._done = False  # the last member ended: only another gzip member may follow

    def decode(self, data: bytes, limit: int) -> bytes:
        """The decoded bytes ``data`` completes; ``CodingError`` if they are corrupt or more
        than ``limit`` bytes."""
        if self._coding == "identity" or not data:
            return data
        out = bytearray()
        while data:
            if self._zlib is None or self._done:
                data = self._start(data)
                if self._zlib is None:
                    break  # waiting for a deflate stream's second byte
            try:
                out += self._zlib.decompress(data, limit - len(out) + 1)
            except zlib.error as exc:
                raise CodingError(f"corrupt {self._coding} body: {exc}") from None
            if len(out) > limit:
                raise CodingError(f"{self._coding} body decodes to more than {limit} bytes")
            if self._zlib.eof:
                self._done = True
                data = self._zlib.unused_data
            else:
                data = b""
        return bytes(out)

    def finish(self) -> None:
        """The body ended: ``CodingError`` unless its encoding ended exactly there."""
        if self._coding == "identity":
            return
        if self._head or (self._zlib is not None and not self._done):
            raise CodingError(f"truncated {self._coding} body")

    def _start(self, data: bytes) -> bytes:
        """Start the decompressor for the next member; returns the data left to decode."""
        if self._done:
            if self._coding != "gzip" or not data.startswith(_GZIP_MAGIC[: len(data)]):
                raise CodingError(f"bytes after the end of the {self._coding} body")
            self._done = False
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return data
        if self._coding == "gzip":
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
            return data
        data = self._head + data
        if len(data) < 2:
            self._head = data
            return b""
        self._head = b""
        zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        return data


def decode_all(data: bytes, coding: str, limit: int) -> bytes:
    """A whole body decoded (at most ``limit`` bytes), or ``CodingError``."""
    decoder = Decoder(coding)
    out = decoder.decode(data, limit)
    decoder.finish()
    return out
