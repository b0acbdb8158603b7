"""The one rule for answers a policy must rewrite (MCP list filtering today): the answer is
either completely read and rewritten, or replaced by the rewrite's error body - never forwarded
unchanged because it could not be read. Pure: the forwarder (``proxy.forward``) applies it.

``plan_rewrite`` decides from the response head alone:

* no body by definition (1xx, 204, 304): passed on, nothing in it to rewrite;
* a content coding other than ``identity``, ``gzip``/``x-gzip`` or ``deflate``, or several codings
  stacked: **replaced** (the local server was asked for ``identity``, see ``proxy.inbound``);
* no ``Content-Type``, several of them, or a media type other than ``application/json`` and
  ``text/event-stream`` (parameters and case ignored): **replaced**;
* otherwise the body is decoded (bounded, ``sidecar.http1.codings``) and rewritten: a JSON body
  whole, at most ``MAX_REWRITTEN_BODY`` bytes (raw and decoded); an SSE stream event by event.

A replaced or rewritten answer keeps the upstream's status and its other headers; the headers
that describe the body's bytes (``Content-Encoding``, ``Content-Length``, digests, ``ETag``,
``Content-Range``) are dropped and ``Content-Type`` is set to what is sent. A body that fails
half-way (corrupt or truncated coding, an oversized SSE event, unreadable data) ends with the
rewrite's errors in place of the rest.

``AnswerTap`` reads a copy of an answer exactly that way and changes nothing: for a policy in
dry run, which must learn what it would have rewritten while the answer passes untouched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Protocol

from multidict import CIMultiDict

from sidecar.http1.codings import CodingError, Decoder, content_coding, decode_all

__all__ = [
    "BODY_HEADERS",
    "MAX_REWRITTEN_BODY",
    "AnswerRewrite",
    "AnswerTap",
    "Plan",
    "Shape",
    "StreamRewriter",
    "decoding_stream",
    "plan_rewrite",
    "rewrite_json",
    "rewritten_headers",
]

MAX_REWRITTEN_BODY: Final = 16 * 1024 * 1024
"""Largest JSON answer (raw, and once decoded) that is rewritten; a bigger one is replaced. Also
the most one SSE read may decode to."""
JSON_TYPE: Final = "application/json"
SSE_TYPE: Final = "text/event-stream"
BODY_HEADERS: Final = (
    "content-encoding",
    "content-length",
    "content-type",
    "content-md5",
    "content-digest",
    "repr-digest",
    "digest",
    "etag",
    "content-range",
)
"""Headers describing the body's bytes: stale once the body is rewritten."""


class StreamRewriter(Protocol):
    """Rewrites a stream piece by piece; never raises. ``fail(reason)`` ends it in place of the
    rest (the caller then stops reading); ``done`` is true once it needs no more input."""

    @property
    def done(self) -> bool: ...

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def fail(self, reason: str) -> bytes: ...


class AnswerRewrite(Protocol):
    """What a policy rewrite provides for one answer (``sidecar.mcp.filter.ListRewrite``)."""

    def json(self, body: bytes) -> bytes:
        """The rewritten JSON body (or the replacement, if it cannot be read); never raises."""
        ...

    def sse(self) -> StreamRewriter: ...

    def replacement(self, reason: str) -> bytes:
        """The JSON error body replacing the whole answer."""
        ...


class Shape(enum.Enum):
    NO_BODY = "no_body"  # nothing to rewrite
    REPLACE = "replace"
    JSON = "json"
    SSE = "sse"


@dataclass(frozen=True, slots=True)
class Plan:
    shape: Shape
    coding: str = "identity"
    reason: str = ""  # why the answer is replaced

    @property
    def media_type(self) -> str:
        return SSE_TYPE if self.shape is Shape.SSE else JSON_TYPE


def plan_rewrite(status: int, headers: CIMultiDict[str]) -> Plan:
    """How an answer with this head is rewritten (see the module docstring)."""
    if status < 200 or status in (204, 304):
        return Plan(Shape.NO_BODY)
    codings = headers.getall("Content-Encoding", [])
    coding = content_coding(codings)
    if coding is None:
        return Plan(Shape.REPLACE, reason=f"content coding {', '.join(codings)!r} is not readable")
    types = headers.getall("Content-Type", [])
    if len(types) != 1:
        why = "no Content-Type" if not types else "several Content-Type headers"
        return Plan(Shape.REPLACE, reason=why)
    media = types[0].partition(";")[0].strip(" \t").lower()
    if media == JSON_TYPE:
        return Plan(Shape.JSON, coding)
    if media == SSE_TYPE:
        return Plan(Shape.SSE, coding)
    return Plan(Shape.REPLACE, reason=f"content type {media!r} is neither JSON nor SSE")


def rewritten_headers(headers: CIMultiDict[str], media_type: str) -> CIMultiDict[str]:
    """``headers`` without those describing the old body, with ``Content-Type: media_type``."""
    out = headers.copy()
    for name in BODY_HEADERS:
        out.popall(name, None)
    out["Content-Type"] = f"{JSON_TYPE}; charset=utf-8" if media_type == JSON_TYPE else media_type
    return out


def rewrite_json(raw: bytes, coding: str, rewrite: AnswerRewrite) -> bytes:
    """A whole JSON answer decoded and rewritten, or the replacement."""
    if len(raw) > MAX_REWRITTEN_BODY:
        return rewrite.replacement(f"answer larger than {MAX_REWRITTEN_BODY} bytes")
    try:
        body = decode_all(raw, coding, MAX_REWRITTEN_BODY)
    except CodingError as exc:
        return rewrite.replacement(exc.message)
    return rewrite.json(body)


class _DecodingStream:
    """A ``StreamRewriter`` fed with the still encoded stream."""

    __slots__ = ("_decoder", "_inner")

    def __init__(self, decoder: Decoder, inner: StreamRewriter) -> None:
        self._decoder = decoder
        self._inner = inner

    @property
    def done(self) -> bool:
        return self._inner.done

    def feed(self, chunk: bytes) -> bytes:
        if self._inner.done:
            return b""
        try:
            decoded = self._decoder.decode(chunk, MAX_REWRITTEN_BODY)
        except CodingError as exc:
            return self._inner.fail(exc.message)
        return self._inner.feed(decoded)

    def finish(self) -> bytes:
        if self._inner.done:
            return b""
        try:
            self._decoder.finish()
        except CodingError as exc:
            return self._inner.fail(exc.message)
        return self._inner.finish()

    def fail(self, reason: str) -> bytes:
        return self._inner.fail(reason)


def decoding_stream(coding: str, inner: StreamRewriter) -> StreamRewriter:
    """``inner`` behind a decoder of ``coding`` (``inner`` itself for ``identity``)."""
    return inner if coding == "identity" else _DecodingStream(Decoder(coding), inner)


class AnswerTap:
    """Feeds a copy of an answer's body to ``rewrite`` as ``plan_rewrite`` would, and throws
    the result away: ``rewrite`` notes what it would have changed (``ListRewrite`` records the
    first reason it would have replaced the answer; its ``allow`` sees every item). A JSON body
    is held (up to ``MAX_REWRITTEN_BODY``) until ``finish``; an SSE stream is read as it
    flows. Never raises."""

    __slots__ = ("_coding", "_held", "_rewrite", "_stream")

    def __init__(self, status: int, headers: CIMultiDict[str], rewrite: AnswerRewrite) -> None:
        plan = plan_rewrite(status, headers)
        self._rewrite = rewrite
        self._coding = plan.coding
        self._held: bytearray | None = bytearray() if plan.shape is Shape.JSON else None
        self._stream: StreamRewriter | None = None
        if plan.shape is Shape.SSE:
            self._stream = decoding_stream(plan.coding, rewrite.sse())
        elif plan.shape is Shape.REPLACE:
            rewrite.replacement(plan.reason)

    def feed(self, chunk: bytes) -> None:
        if self._held is not None:
            if len(self._held) + len(chunk) > MAX_REWRITTEN_BODY:
                self._held = None
                self._rewrite.replacement(f"answer larger than {MAX_REWRITTEN_BODY} bytes")
            else:
                self._held += chunk
        elif self._stream is not None and not self._stream.done:
            self._stream.feed(chunk)

    def finish(self) -> None:
        """The whole body was fed."""
        if self._held is not None:
            rewrite_json(bytes(self._held), self._coding, self._rewrite)
            self._held = None
        elif self._stream is not None:
            self._stream.finish()
            self._stream = None
