"""The parts of a request-target a proxy decides on (pure): authorities and paths.

An authority (the ``Host`` header, the authority of an absolute-form target) must be
``uri-host [":" port]`` (RFC 9110 §7.2, RFC 3986 §3.2): a reg-name, an IPv4 address or an IP
literal in brackets, and a port from 1 to 65535 — no user info, no path, no spaces.

Paths are normalised once, before routing, and what is forwarded is the normalised path, so the
route we matched is the resource the server resolves (RFC 3986 §6.2.2): percent-encoded
unreserved characters are decoded (``%2e`` is ``.``, ``%7E`` is ``~``) and dot-segments removed
(§5.2.4). Shapes that parsers disagree on are refused instead: an encoded slash (``%2F``) or
backslash (``%5C``), a raw backslash (WHATWG URL parsers read it as ``/``), a malformed escape.
Other escapes stay as sent; in particular ``%252e`` is the data ``%2e``, never decoded twice.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NoReturn

from sidecar.http1.errors import HttpParseError

__all__ = ["is_authority", "normalize_path"]

_SUB_DELIMS = "!$&'()*+,;="
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# The common case first: a reg-name (or IPv4 address) without escapes, an optional port.
_match_plain_authority = re.compile(f"[A-Za-z0-9._~{_SUB_DELIMS}-]*(?::([0-9]{{1,5}}))?").fullmatch
_match_authority = re.compile(
    "(?:"
    f"(?:[A-Za-z0-9._~{_SUB_DELIMS}-]|%[0-9A-Fa-f]{{2}})*"  # reg-name / IPv4address
    "|\\[([0-9A-Fa-f:.]+)\\]"  # IP-literal: IPv6address
    f"|\\[v[0-9A-Fa-f]+\\.[A-Za-z0-9._~{_SUB_DELIMS}:-]+\\]"  # IP-literal: IPvFuture
    ")(?::([0-9]{1,5}))?"
).fullmatch
_ESCAPE = re.compile("%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile("%(?![0-9A-Fa-f]{2})")


def is_authority(text: str) -> bool:
    """``text`` is ``uri-host [":" port]`` with a port from 1 to 65535 (empty host allowed:
    RFC 9112 §3.2 sends ``Host:`` empty for a target URI without authority)."""
    match = _match_plain_authority(text)
    if match is not None:
        port = match[1]
    else:
        match = _match_authority(text)
        if match is None:
            return False
        if match[1] is not None:
            try:
                ipaddress.IPv6Address(match[1])
            except ValueError:
                return False
        port = match[2]
    return port is None or 0 < int(port) <= 65535


def _refuse(message: str) -> NoReturn:
    raise HttpParseError(message, reason="bad_path")


def _decode_unreserved(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    if char in _UNRESERVED:
        return char
    if char in "/\\":
        _refuse(f"encoded {'slash' if char == '/' else 'backslash'} {match[0]!r} in the path")
    return match[0]


def normalize_path(path: str) -> str:
    """The path (without query) as routed and forwarded; ``path`` itself when already normal.

    Raises :class:`HttpParseError` (400, ``bad_path``) for a path that does not start with
    ``/`` (asterisk-form), a backslash, an encoded slash or backslash, or a malformed escape.
    """
    if "%" not in path and "/." not in path and "\\" not in path and path[:1] == "/":
        return path  # the common case: nothing to decode, no dot-segment
    if path[:1] != "/":
        _refuse(f"the path must start with '/', got {path[:50]!r}")
    if "\\" in path:
        _refuse("backslash in the path")
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            _refuse("malformed percent-encoding in the path")
        path = _ESCAPE.sub(_decode_unreserved, path)
    if "/." in path:
        path = _remove_dot_segments(path)
    return path


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path, segment by segment: ``.`` is dropped, ``..`` drops
    the segment before it (never above the root); a final dot-segment leaves a trailing ``/``."""
    segments = path.split("/")
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")
    return "/" + "/".join(out)
