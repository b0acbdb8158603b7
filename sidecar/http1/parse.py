"""Strict parsing of HTTP/1.x message heads (RFC 9112), built to refuse request smuggling.

The head (start line and header lines, without the terminating blank line) is decoded once as
latin-1 and validated with a handful of C-level passes: CRLF pairs are counted against every CR
and LF (so a bare CR or LF is refused), one regex search refuses control characters, one regex
matches the start line and one ``findall`` collects every header line. Only when a fast pass fails
does a slower path walk the lines to say exactly what is wrong. Everything ambiguous about the
body length (several or list-valued Content-Length, Content-Length with Transfer-Encoding, any
Transfer-Encoding but a single ``chunked``) is refused rather than guessed.

Request-targets come in the four forms of RFC 9112 §3.2: origin-form (the fast pass), and, tried
only when it fails, absolute-form (``http(s)://authority/path``: a client using us as its HTTP
proxy), authority-form (CONNECT only) and asterisk-form (OPTIONS only). ``Host`` and the
authority of a target must be ``host[:port]`` (``sidecar.http1.target``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import NoReturn

from multidict import CIMultiDict

from sidecar.http1.errors import HttpParseError
from sidecar.http1.target import is_authority

__all__ = [
    "HEAD_END",
    "Framing",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
    "serialize_headers",
]

HEAD_END = b"\r\n\r\n"


class Framing(enum.Enum):
    """How the message body is delimited."""

    NONE = "none"  # no body at all
    LENGTH = "length"  # exactly ``length`` bytes (Content-Length)
    CHUNKED = "chunked"  # chunked transfer coding, see ``sidecar.http1.chunked``
    UNTIL_CLOSE = "until_close"  # responses only: the body ends when the connection closes


@dataclass(slots=True, frozen=True)
class RequestHead:
    """A parsed request head; ``headers`` keep their order and names as sent."""

    method: str
    target: str
    version: int  # minor version: 0 for HTTP/1.0, 1 for HTTP/1.1
    headers: CIMultiDict[str]
    framing: Framing  # LENGTH, CHUNKED or NONE
    length: int  # Content-Length for LENGTH, else 0
    keep_alive: bool
    expect_continue: bool
    # An absolute-form target (a client using us as its HTTP proxy): its lowercased scheme and
    # its authority, which also replaces ``Host`` (RFC 9112 §3.2.2); ``target`` is then the
    # origin-form rest. For CONNECT's authority-form, ``authority`` and ``target`` are both the
    # authority. None for origin-form and asterisk-form targets.
    scheme: str | None = None
    authority: str | None = None

    @property
    def path(self) -> str:
        """The request-target up to ``?``."""
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        """The request-target after ``?`` (``""`` when there is none)."""
        return self.target.partition("?")[2]


@dataclass(slots=True, frozen=True)
class ResponseHead:
    """A parsed response head; ``headers`` keep their order and names as sent."""

    version: int  # minor version: 0 for HTTP/1.0, 1 for HTTP/1.1
    status: int
    reason: str
    headers: CIMultiDict[str]
    framing: Framing
    length: int  # Content-Length for LENGTH, else 0
    keep_alive: bool


# RFC 9110 §5.6.2 tchar.
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_is_token = re.compile(f"[{_TCHAR}]+").fullmatch
# HTAB, SP, VCHAR and obs-text: every byte but CTLs (CR and LF are allowed only as CRLF pairs).
_ALLOWED_BYTES = bytes(b for b in range(256) if b == 0x09 or 0x20 <= b <= 0x7E or b >= 0x80)
# origin-form (no '#', nothing outside 0x21-0x7e) or asterisk-form; HTTP/1.0 and HTTP/1.1 only.
_match_request_line = re.compile(
    f"([{_TCHAR}]+) (/[\x21\x22\x24-\x7e]*|\\*) HTTP/1\\.([01])"
).fullmatch
# absolute-form (scheme "://" authority path-abempty ["?" query]) and authority-form, the
# targets a client sends to a proxy (RFC 9112 §3.2.2, §3.2.3); only tried when origin-form fails.
_AUTHORITY_CHARS = "\x21\x22\x24-\x2e\x30-\x3e\x40-\x7e"  # visible, but not # / ?
_match_absolute_form = re.compile(
    f"([{_TCHAR}]+) ([A-Za-z][A-Za-z0-9+.-]*)://([{_AUTHORITY_CHARS}]*)([/?][\x21\x22\x24-\x7e]*)?"
    " HTTP/1\\.([01])"
).fullmatch
_match_authority_form = re.compile(
    f"([{_TCHAR}]+) ([{_AUTHORITY_CHARS}]+) HTTP/1\\.([01])"
).fullmatch
_match_status_line = re.compile("HTTP/1\\.([01]) ([1-5][0-9][0-9])(?: (.*))?").fullmatch
_match_any_version = re.compile("HTTP/([0-9])\\.([0-9])").fullmatch
_match_any_status_line = re.compile("HTTP/([0-9])\\.([0-9]) ([0-9]{3})(?: .*)?").fullmatch
_is_origin_form = re.compile("/[\x21\x22\x24-\x7e]*").fullmatch
# One header line: anchored on the LF of the preceding CRLF, leading OWS dropped. The head has
# no bare LF by the time this runs, so each match is exactly one whole line, and a line that does
# not match (obs-fold, space before the colon, no colon, empty line) makes the count come short.
_find_fields = re.compile(f"\n([{_TCHAR}]+):[ \t]*([^\r]*)").findall
# transfer-coding = token *( OWS ";" OWS token "=" ( token / quoted-string ) )
_is_transfer_coding = re.compile(
    f'[{_TCHAR}]+(?:[ \t]*;[ \t]*[{_TCHAR}]+=(?:[{_TCHAR}]+|"[^"\\\\]*"))*'
).fullmatch

_BODYLESS_STATUSES = frozenset((204, 304))

# A frozen dataclass's __init__ goes through object.__setattr__ once per field, which costs about
# twice as much as filling the slots directly; the parsers build their results the direct way.
_Setter = Callable[[object, object], None]
_new = object.__new__
(
    _set_method,
    _set_target,
    _set_request_version,
    _set_request_headers,
    _set_request_framing,
    _set_request_length,
    _set_request_keep_alive,
    _set_expect_continue,
    _set_scheme,
    _set_authority,
) = tuple[_Setter, ...](getattr(RequestHead, f.name).__set__ for f in fields(RequestHead))


def _request_head(
    method: str,
    target: str,
    version: int,
    headers: CIMultiDict[str],
    framing: Framing,
    length: int,
    keep_alive: bool,
    expect_continue: bool,
    scheme: str | None,
    authority: str | None,
) -> RequestHead:
    """``RequestHead(...)``, faster."""
    head: RequestHead = _new(RequestHead)
    _set_method(head, method)
    _set_target(head, target)
    _set_request_version(head, version)
    _set_request_headers(head, headers)
    _set_request_framing(head, framing)
    _set_request_length(head, length)
    _set_request_keep_alive(head, keep_alive)
    _set_expect_continue(head, expect_continue)
    _set_scheme(head, scheme)
    _set_authority(head, authority)
    return head


def _refuse(message: str, reason: str = "malformed_request", status: int = 400) -> NoReturn:
    raise HttpParseError(message, status=status, reason=reason)


def _split_head(
    head: bytes, max_field_size: int, max_headers: int, start: str
) -> tuple[str, list[str]]:
    """Decode and split ``head`` into lines, enforcing the limits and the character rules."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    count = len(lines) - 1
    if len(text) > max_field_size:
        if len(lines[0]) > max_field_size:
            _refuse(f"{start} longer than {max_field_size} bytes", "header_too_large", 431)
        if max(map(len, lines)) > max_field_size:
            _refuse(f"header line longer than {max_field_size} bytes", "header_too_large", 431)
    if count > max_headers:
        _refuse(f"more than {max_headers} header lines", "header_too_large", 431)
    # What is left once every allowed byte is deleted must be exactly the CRLF pairs we split on.
    if head.translate(None, _ALLOWED_BYTES) != b"\r\n" * count:
        if text.count("\r") != count or text.count("\n") != count:
            _refuse("bare CR or LF (lines must end with CRLF)")
        _refuse("control character in the message head")
    if not text:
        _refuse(f"empty {start}")
    return text, lines


def _parse_fields(text: str, lines: list[str]) -> CIMultiDict[str]:
    if len(lines) == 1:
        return CIMultiDict()
    fields = _find_fields(text, len(lines[0]))
    if len(fields) != len(lines) - 1:
        _diagnose_fields(lines)
    if " \r" in text or "\t\r" in text or text[-1] in " \t":  # some value has trailing OWS
        return CIMultiDict([(name, value.rstrip(" \t")) for name, value in fields])
    return CIMultiDict(fields)


def _diagnose_fields(lines: list[str]) -> NoReturn:
    """Say which header line the fast pass refused."""
    for line in lines[1:]:
        if not line:
            _refuse("empty header line")
        if line[0] in " \t":
            _refuse("obsolete line folding")
        name, colon, _ = line.partition(":")
        if not colon:
            _refuse("header line without a colon")
        if not name:
            _refuse("empty header name")
        if name[-1] in " \t":
            _refuse("whitespace between the header name and the colon")
        if not _is_token(name):
            _refuse(f"invalid header name {name!r}")
    _refuse("malformed header section")  # not reached: the fast pass only fails on the above


# Host values seen valid: a connection sends the same one on every request, and a set lookup
# costs a tenth of the check. Bounded; emptied when full (what it holds stays valid).
_valid_hosts: set[str] = set()
_VALID_HOSTS_KEPT = 256


def _check_host(host: str) -> None:
    if not is_authority(host):
        _refuse(f"invalid Host {host[:100]!r} (expected host[:port])", "bad_host")
    if len(_valid_hosts) >= _VALID_HOSTS_KEPT:
        _valid_hosts.clear()
    _valid_hosts.add(host)


def _proxy_forms(line: str) -> tuple[str, str, str, str | None, str]:
    """A request line with an absolute-form or authority-form target: method, origin-form
    target (the authority for authority-form), minor version, scheme (None for authority-form),
    authority."""
    match = _match_absolute_form(line)
    if match is not None:
        method, scheme, authority, rest, minor = match.groups()
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            _refuse(f"absolute-form request-target with scheme {scheme!r} (only http and https)")
        _check_target_authority(authority)
        if not rest:
            target = "/"
        elif rest[0] == "?":
            target = "/" + rest
        else:
            target = rest
        return method, target, minor, scheme, authority
    match = _match_authority_form(line)
    if match is None:
        _diagnose_request_line(line)
    method, authority, minor = match.groups()
    if method != "CONNECT":
        _refuse("request-target in authority-form is only allowed for CONNECT")
    _check_target_authority(authority)
    if ":" not in authority or authority.endswith("]"):
        _refuse("CONNECT request-target must be host:port")
    return method, authority, minor, None, authority


def _check_target_authority(authority: str) -> None:
    if "@" in authority:
        _refuse("user info in the request-target")
    if not authority or authority[0] == ":":  # RFC 9110 §4.2.1: an http URI has a host
        _refuse("request-target without a host")
    if not is_authority(authority):
        _refuse(f"invalid authority {authority[:100]!r} in the request-target")


def _diagnose_request_line(line: str) -> NoReturn:
    parts = line.split(" ")
    if len(parts) != 3:
        _refuse("request line is not 'METHOD SP request-target SP HTTP-version'")
    method, target, version = parts
    if not _is_token(method):
        _refuse(f"invalid method {method!r}")
    match = _match_any_version(version)
    if match is None:
        _refuse(f"invalid HTTP version {version!r}")
    if match[1] != "1" or match[2] not in "01":
        _refuse(f"{version} is not supported", "unsupported_version", 505)
    if "://" in target and not _is_origin_form(target):
        _refuse("absolute-form request-target must be scheme://authority[/path][?query]")
    if target[:1] != "/" and target != "*":
        _refuse("request-target is not in origin, absolute, authority or asterisk form")
    if target != "*" and not _is_origin_form(target):
        _refuse("invalid character in the request-target")
    _refuse("malformed request line")  # not reached


def _diagnose_status_line(line: str) -> NoReturn:
    match = _match_any_status_line(line)
    if match is None:
        _refuse("status line is not 'HTTP-version SP 3DIGIT SP reason'")
    if match[1] != "1" or match[2] not in "01":
        _refuse(f"HTTP/{match[1]}.{match[2]} is not supported", "unsupported_version", 505)
    _refuse(f"status {match[3]} outside 100..599")


def _content_length(values: list[str]) -> int:
    if len(values) > 1:
        _refuse("more than one Content-Length header", "duplicate_content_length")
    value = values[0]
    # isascii() first: str.isdigit() alone accepts non-ASCII digits such as latin-1 "\xb2".
    if value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    if "," in value:
        _refuse("list-valued Content-Length", "duplicate_content_length")
    _refuse(f"invalid Content-Length {value!r}", "bad_content_length")


def _check_transfer_encoding(values: list[str]) -> None:
    """Accept exactly one ``chunked`` coding; refuse anything else (400, or 501 if unsupported)."""
    codings = [c.strip(" \t") for c in ",".join(values).split(",")]
    if len(codings) == 1 and codings[0].lower() == "chunked":
        return
    for coding in codings:
        if not _is_transfer_coding(coding):
            _refuse(f"malformed Transfer-Encoding {coding!r}", "bad_transfer_encoding")
    names = [c.partition(";")[0].rstrip(" \t").lower() for c in codings]
    if "chunked" in names[:-1]:  # also catches chunked applied twice
        _refuse("chunked is not (only) the final transfer coding", "bad_transfer_encoding")
    if names[-1] == "chunked" and codings[-1].lower() != "chunked":
        _refuse("parameters on the chunked transfer coding", "bad_transfer_encoding")
    unsupported = ", ".join(sorted({n for n in names if n != "chunked"}))
    _refuse(
        f"unsupported transfer coding {unsupported}", "unsupported_transfer_encoding", status=501
    )


def _list_tokens(values: list[str]) -> set[str]:
    """The lower-cased elements of a comma-separated list header (all its lines together)."""
    return {t.strip(" \t").lower() for t in ",".join(values).split(",")}


def _keep_alive(connection: list[str] | None, version: int) -> bool:
    """HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``Connection: keep-alive``."""
    if connection is None:
        return version == 1
    if len(connection) == 1:  # the common case: one plain token
        option = connection[0].lower()
        if option == "close":
            return False
        if option == "keep-alive":
            return True
    tokens = _list_tokens(connection)
    return "close" not in tokens and (version == 1 or "keep-alive" in tokens)


def _declared_framing(
    headers: CIMultiDict[str], version: int, kind: str
) -> tuple[Framing, int] | None:
    """CHUNKED or LENGTH as the message's headers declare it (None: neither is declared);
    every ambiguous combination is refused rather than guessed."""
    transfer_encoding = headers.getall("transfer-encoding", None)
    content_length = headers.getall("content-length", None)
    if transfer_encoding is not None:
        if content_length is not None:
            _refuse("both Content-Length and Transfer-Encoding", "content_length_with_chunked")
        if not version:
            _refuse(f"Transfer-Encoding in an HTTP/1.0 {kind}", "bad_transfer_encoding")
        _check_transfer_encoding(transfer_encoding)
        return Framing.CHUNKED, 0
    if content_length is not None:
        return Framing.LENGTH, _content_length(content_length)
    return None


def parse_request_head(
    head: bytes, *, max_field_size: int = 8190, max_headers: int = 100
) -> RequestHead:
    """Parse a request head: ``head`` ends before the blank line (``buf[: buf.find(HEAD_END)]``).

    Raises :class:`HttpParseError` (400, 431 for size limits, 501, 505) on anything malformed or
    ambiguous.
    """
    text, lines = _split_head(head, max_field_size, max_headers, "request line")
    match = _match_request_line(lines[0])
    if match is not None:
        method, target, minor = match.groups()
        if target == "*" and method != "OPTIONS":
            _refuse("asterisk-form request-target is only allowed for OPTIONS")
        scheme = authority = None
    else:
        method, target, minor, scheme, authority = _proxy_forms(lines[0])
    version = 1 if minor == "1" else 0
    headers = _parse_fields(text, lines)
    getall = headers.getall

    hosts = getall("host", None)
    if hosts is None:
        if version:
            _refuse("HTTP/1.1 request without a Host header", "missing_host")
    elif len(hosts) > 1:
        _refuse("more than one Host header", "duplicate_host")
    elif hosts[0] not in _valid_hosts:
        _check_host(hosts[0])
    if scheme is not None and authority is not None:
        headers["Host"] = authority  # absolute-form: the target names the host (RFC 9112 §3.2.2)

    framing, length = _declared_framing(headers, version, "request") or (Framing.NONE, 0)

    keep_alive = _keep_alive(getall("connection", None), version)

    expect = getall("expect", None)
    expect_continue = expect is not None and "100-continue" in _list_tokens(expect)

    return _request_head(
        method,
        target,
        version,
        headers,
        framing,
        length,
        keep_alive,
        expect_continue,
        scheme,
        authority,
    )


def parse_response_head(
    head: bytes, *, request_method: str, max_field_size: int = 65536, max_headers: int = 200
) -> ResponseHead:
    """Parse the head of the response to a ``request_method`` request (``head`` as for requests).

    Raises :class:`HttpParseError`; its ``status`` says how the response was bad, not what to
    answer the client (a proxy answers 502).
    """
    text, lines = _split_head(head, max_field_size, max_headers, "status line")
    match = _match_status_line(lines[0])
    if match is None:
        _diagnose_status_line(lines[0])
    minor, status_text, reason = match.groups()
    version = 1 if minor == "1" else 0
    status = int(status_text)
    headers = _parse_fields(text, lines)
    getall = headers.getall

    keep_alive = _keep_alive(getall("connection", None), version)

    length = 0
    if request_method == "HEAD" or status < 200 or status in _BODYLESS_STATUSES:
        framing = Framing.NONE
    else:
        declared = _declared_framing(headers, version, "response")
        if declared is not None:
            framing, length = declared
        else:
            framing, keep_alive = Framing.UNTIL_CLOSE, False

    return ResponseHead(version, status, reason or "", headers, framing, length, keep_alive)


def serialize_headers(pairs: Iterable[tuple[str, str]]) -> bytes:
    """``b"Name: value\\r\\n"`` per pair, latin-1 encoded.

    Raises ValueError if a name or value contains CR, LF or NUL (header injection), or a character
    latin-1 cannot encode (``UnicodeEncodeError`` is a ValueError).
    """
    lines = list(map(": ".join, pairs))  # C-level: no Python frame per header
    if not lines:
        return b""
    text = "\r\n".join(lines) + "\r\n"
    count = len(lines)
    if text.count("\r") != count or text.count("\n") != count or "\x00" in text:
        for line in lines:
            if "\x00" in line or "\r" in line or "\n" in line:
                raise ValueError(f"CR, LF or NUL in header line {line!r}")
    return text.encode("latin-1")
