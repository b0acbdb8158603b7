"""Strict HTTP/1.x head parsing: what is accepted, and every smuggling-prone ambiguity refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from sidecar.http1.errors import HttpParseError
from sidecar.http1.parse import (
    HEAD_END,
    Framing,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
    serialize_headers,
)


def head(*lines: str) -> bytes:
    """A head without its terminating blank line, as the caller hands it over."""
    return "\r\n".join(lines).encode("latin-1")


def req(*header_lines: str, line: str = "GET / HTTP/1.1", host: bool = True) -> bytes:
    return head(line, *(("Host: example",) if host else ()), *header_lines)


def refused(data: bytes, status: int, reason: str, **kwargs: int) -> HttpParseError:
    with pytest.raises(HttpParseError) as info:
        parse_request_head(data, **kwargs)
    assert (info.value.status, info.value.reason) == (status, reason), info.value.message
    return info.value


def resp_refused(
    data: bytes, status: int, reason: str, method: str = "GET", **kwargs: int
) -> HttpParseError:
    with pytest.raises(HttpParseError) as info:
        parse_response_head(data, request_method=method, **kwargs)
    assert (info.value.status, info.value.reason) == (status, reason), info.value.message
    return info.value


TYPICAL_POST = head(
    "POST /mcp?session=abc&x=1 HTTP/1.1",
    "Host: 127.0.0.1:15001",
    "User-Agent: python-httpx/0.28.1",
    "Accept: application/json, text/event-stream",
    "Accept-Encoding: gzip, deflate",
    "Connection: keep-alive",
    "Content-Type: application/json",
    "Content-Length: 123",
    "Mcp-Session-Id: 3f2a9c1e",
)


# --- errors ---------------------------------------------------------------------------------------


def test_error_defaults_and_attributes() -> None:
    err = HttpParseError("boom")
    assert (err.message, err.status, err.reason, str(err)) == (
        "boom",
        400,
        "malformed_request",
        "boom",
    )
    err = HttpParseError("big", status=431, reason="header_too_large")
    assert (err.status, err.reason) == (431, "header_too_large")
    assert "header_too_large" in repr(err)


# --- a typical request ----------------------------------------------------------------------------


def test_typical_post_is_parsed() -> None:
    parsed = parse_request_head(TYPICAL_POST)
    assert parsed == RequestHead(
        method="POST",
        target="/mcp?session=abc&x=1",
        version=1,
        headers=CIMultiDict(
            [
                ("Host", "127.0.0.1:15001"),
                ("User-Agent", "python-httpx/0.28.1"),
                ("Accept", "application/json, text/event-stream"),
                ("Accept-Encoding", "gzip, deflate"),
                ("Connection", "keep-alive"),
                ("Content-Type", "application/json"),
                ("Content-Length", "123"),
                ("Mcp-Session-Id", "3f2a9c1e"),
            ]
        ),
        framing=Framing.LENGTH,
        length=123,
        keep_alive=True,
        expect_continue=False,
    )
    assert list(parsed.headers) == [
        "Host",
        "User-Agent",
        "Accept",
        "Accept-Encoding",
        "Connection",
        "Content-Type",
        "Content-Length",
        "Mcp-Session-Id",
    ]
    assert parsed.headers["content-type"] == "application/json"  # case-insensitive lookup
    assert (parsed.path, parsed.query) == ("/mcp", "session=abc&x=1")


def test_result_is_a_frozen_slotted_dataclass() -> None:
    parsed = parse_request_head(TYPICAL_POST)
    assert type(parsed) is RequestHead
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.method = "GET"  # type: ignore[misc]
    assert not hasattr(parsed, "__dict__")
    assert dataclasses.replace(parsed, method="PUT").method == "PUT"


def test_head_end_constant() -> None:
    buf = TYPICAL_POST + HEAD_END + b"body"
    assert parse_request_head(buf[: buf.find(HEAD_END)]).length == 123
    assert HEAD_END == b"\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", ""),
        ("/a/b", "/a/b", ""),
        ("/a?", "/a", ""),
        ("/a?b=1&c", "/a", "b=1&c"),
        ("/a?b?c", "/a", "b?c"),
        ("/%7Euser/x%20y", "/%7Euser/x%20y", ""),
    ],
)
def test_path_and_query(target: str, path: str, query: str) -> None:
    parsed = parse_request_head(req(line=f"GET {target} HTTP/1.1"))
    assert (parsed.target, parsed.path, parsed.query) == (target, path, query)


# --- request line ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "method", "target", "version"),
    [
        ("GET / HTTP/1.1", "GET", "/", 1),
        ("GET / HTTP/1.0", "GET", "/", 0),
        ("OPTIONS * HTTP/1.1", "OPTIONS", "*", 1),
        ("M-SEARCH /x HTTP/1.1", "M-SEARCH", "/x", 1),
        ("get /lower HTTP/1.1", "get", "/lower", 1),  # methods are case-sensitive tokens
        ("PATCH /!$&'()*+,;=:@-._~%41 HTTP/1.1", "PATCH", "/!$&'()*+,;=:@-._~%41", 1),
        ('POST /a"<>\\^`{|} HTTP/1.1', "POST", '/a"<>\\^`{|}', 1),
    ],
)
def test_valid_request_lines(line: str, method: str, target: str, version: int) -> None:
    parsed = parse_request_head(req(line=line))
    assert (parsed.method, parsed.target, parsed.version) == (method, target, version)


@pytest.mark.parametrize(
    "line",
    [
        "GET  / HTTP/1.1",  # double space
        "GET / HTTP/1.1 ",  # trailing space
        " GET / HTTP/1.1",  # leading space
        "GET /  HTTP/1.1",
        "GET\t/ HTTP/1.1",  # HTAB is not SP
        "GET / HTTP/1.1 extra",
        "GET /",
        "GET",
        "/ HTTP/1.1",
        "G(T / HTTP/1.1",  # '(' is not a tchar
        "GÉT / HTTP/1.1",
        "GET example HTTP/1.1",  # authority-form is only for CONNECT
        "GET example.com:443 HTTP/1.1",
        "CONNECT example.com HTTP/1.1",  # CONNECT needs host:port
        "CONNECT [::1] HTTP/1.1",
        "CONNECT user@example.com:443 HTTP/1.1",
        "GET ftp://example.com/ HTTP/1.1",  # absolute-form: http and https only
        "GET urn:isbn:123 HTTP/1.1",
        "GET http:/example.com/ HTTP/1.1",
        "GET http:///mcp HTTP/1.1",  # an http URI has a host (RFC 9110 §4.2.1)
        "GET http://:80/mcp HTTP/1.1",
        "GET http://user@example.com/ HTTP/1.1",  # user info
        "GET http://user:pw@example.com/ HTTP/1.1",
        "GET http://exa mple.com/ HTTP/1.1",
        "GET http://example.com:99999/ HTTP/1.1",
        "GET http://example.com:0/ HTTP/1.1",
        "GET http://example.com:/ HTTP/1.1",
        "GET http://[::1/ HTTP/1.1",
        "GET http://[not:v6]/ HTTP/1.1",
        "GET http://[fe80::1%25eth0]/ HTTP/1.1",  # zone ids are not part of RFC 3986
        "GET http://a:1:2/ HTTP/1.1",
        "GET http://example.com/a#frag HTTP/1.1",
        "GET http://example.com/café HTTP/1.1",
        "GET * HTTP/1.1",  # asterisk-form is only for OPTIONS
        "OPTIONS ** HTTP/1.1",
        "GET /a#frag HTTP/1.1",
        "GET /café HTTP/1.1",  # >= 0x80 in the target
        "GET / http/1.1",
        "GET / HTTP/1.10",
        "GET / HTTP/1",
        "GET / HTTP/11",
        "GET / HTTP/1.x",
        "GET / HTTPS/1.1",
    ],
)
def test_malformed_request_lines_are_refused(line: str) -> None:
    refused(req(line=line), 400, "malformed_request")


@pytest.mark.parametrize(
    ("line", "target", "scheme", "authority"),
    [
        ("GET http://math.local/mcp HTTP/1.1", "/mcp", "http", "math.local"),
        ("GET http://math.local HTTP/1.1", "/", "http", "math.local"),
        ("GET http://math.local?x=1 HTTP/1.1", "/?x=1", "http", "math.local"),
        ("POST HTTP://Math.Local:8080/a/b?c=d HTTP/1.1", "/a/b?c=d", "http", "Math.Local:8080"),
        ("GET https://[::1]:8443/mcp HTTP/1.1", "/mcp", "https", "[::1]:8443"),
        ("GET http://127.0.0.1:15001/ HTTP/1.0", "/", "http", "127.0.0.1:15001"),
        ("GET http://math.local/a/../b HTTP/1.1", "/a/../b", "http", "math.local"),  # as sent
        ("CONNECT math.local:443 HTTP/1.1", "math.local:443", None, "math.local:443"),
        ("CONNECT [::1]:443 HTTP/1.1", "[::1]:443", None, "[::1]:443"),
        ("GET /mcp HTTP/1.1", "/mcp", None, None),
        ("OPTIONS * HTTP/1.1", "*", None, None),
    ],
)
def test_request_target_forms(
    line: str, target: str, scheme: str | None, authority: str | None
) -> None:
    """RFC 9112 §3.2: a server MUST accept absolute-form (a client using it as HTTP proxy);
    authority-form is CONNECT's. The parser splits them; what to do with them is the proxy's."""
    parsed = parse_request_head(req(line=line))
    assert (parsed.target, parsed.scheme, parsed.authority) == (target, scheme, authority)


def test_absolute_form_authority_replaces_host() -> None:
    """RFC 9112 §3.2.2: the received Host is ignored, the target's authority is the host."""
    parsed = parse_request_head(
        head("GET http://math.local:8080/mcp HTTP/1.1", "Host: other.example", "X: y")
    )
    assert parsed.headers.getall("Host") == ["math.local:8080"]
    assert parsed.path == "/mcp"
    # HTTP/1.1 still needs a Host header (RFC 9112 §3.2), even with an absolute-form target
    refused(head("GET http://math.local/ HTTP/1.1"), 400, "missing_host")
    assert parse_request_head(head("GET http://math.local/ HTTP/1.0")).headers["Host"] == (
        "math.local"
    )


def test_proxy_forms_keep_version_errors() -> None:
    refused(req(line="GET http://example.com/ HTTP/2.0"), 505, "unsupported_version")
    refused(req(line="CONNECT example.com:443 HTTP/1.2"), 505, "unsupported_version")
    message = refused(req(line="GET ftp://example.com/ HTTP/1.1"), 400, "malformed_request").message
    assert "ftp" in message
    message = refused(req(line="GET http://u@h/ HTTP/1.1"), 400, "malformed_request").message
    assert "user info" in message


@pytest.mark.parametrize("data", [b"", b"GET /\x7f HTTP/1.1\r\nHost: a", b"GET /\x00 HTTP/1.1"])
def test_empty_head_and_control_characters_in_the_target_are_refused(data: bytes) -> None:
    refused(data, 400, "malformed_request")


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0", "HTTP/9.9"])
def test_other_http_versions_are_505(version: str) -> None:
    refused(req(line=f"GET / {version}"), 505, "unsupported_version")


# --- line endings and header lines ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: a",  # bare LF as a line ending
        b"GET / HTTP/1.1\rHost: a",  # bare CR as a line ending
        b"GET / HTTP/1.1\r\r\nHost: a",
        b"GET / HTTP/1.1\n\rHost: a",
        b"GET / HTTP/1.1\r\nHost: a\nX: y",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb",  # bare CR inside a value
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\nb",  # bare LF inside a value
        b"GET / HTTP/1.1\r\nHost: a\n",
        b"GET / HTTP/1.1\r\nHost: a\r",
        b"\nGET / HTTP/1.1\r\nHost: a",
        b"GET / HTTP/1.1\r\nHost: a\r\n",  # the caller must cut the blank line off
        b"\r\nGET / HTTP/1.1\r\nHost: a",
    ],
)
def test_bare_cr_lf_and_empty_lines_are_refused(data: bytes) -> None:
    refused(data, 400, "malformed_request")


@pytest.mark.parametrize(
    ("line", "name", "value"),
    [
        ("X: a", "X", "a"),
        ("X:a", "X", "a"),
        ("X: \t a b \t", "X", "a b"),  # OWS stripped, inner whitespace kept
        ("X:\ta\tb", "X", "a\tb"),
        ("X:", "X", ""),
        ("X:   ", "X", ""),
        ("X: café", "X", "café"),  # obs-text, latin-1
        ("X: \x80\xff", "X", "\x80\xff"),
        ("X: a:b: c", "X", "a:b: c"),
        ("x-MiXeD_case.~!#$%&'*+^`|: v", "x-MiXeD_case.~!#$%&'*+^`|", "v"),
        ('X: "quoted" (comment) [x] {y} \\', "X", '"quoted" (comment) [x] {y} \\'),
    ],
)
def test_valid_header_lines(line: str, name: str, value: str) -> None:
    headers = parse_request_head(req(line)).headers
    assert list(headers.items())[1] == (name, value)


@pytest.mark.parametrize(
    "line",
    [
        " X: y",  # obs-fold
        "\tX: y",
        "Host : a",  # whitespace before the colon
        "X\t: a",
        "Ho st: a",
        ": value",  # empty name
        "NoColon",
        "X(: a",
        "Xé: a",  # non-token name
        "X: a\x00b",  # NUL
        "X: \x00",
        "X: a\x01b",
        "X: a\x1fb",
        "X: a\x7fb",  # DEL
        "X: \x0bchunked",  # vertical tab
        "X: a\x0cb",  # form feed
        "",  # an empty line in the middle of the head
    ],
)
def test_malformed_header_lines_are_refused(line: str) -> None:
    refused(req(line, "After: x"), 400, "malformed_request")


def test_obs_fold_continuation_is_refused() -> None:
    refused(req("X-Long: a", " continued"), 400, "malformed_request")
    refused(req("X-Long: a", "\tcontinued"), 400, "malformed_request")


def test_refusal_messages_name_the_problem() -> None:
    assert "fold" in refused(req(" X: y"), 400, "malformed_request").message
    assert "colon" in refused(req("Host : a"), 400, "malformed_request").message
    assert "CR or LF" in refused(b"GET / HTTP/1.1\nHost: a", 400, "malformed_request").message
    assert "control" in refused(req("X: \x00"), 400, "malformed_request").message


# --- Content-Length -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "length"),
    [
        ("0", 0),
        ("5", 5),
        ("007", 7),
        ("  42  ", 42),
        ("999999999999999999", 999_999_999_999_999_999),
    ],
)
def test_valid_content_length(value: str, length: int) -> None:
    parsed = parse_request_head(req(f"Content-Length: {value}", line="POST / HTTP/1.1"))
    assert (parsed.framing, parsed.length) == (Framing.LENGTH, length)


@pytest.mark.parametrize(
    "value",
    ["+5", "-5", "5 5", "0x5", "", "5a", "1234567890123456789", "\xb2", "1e3", "5.0", "5;", "5\t5"],
)
def test_invalid_content_length_is_refused(value: str) -> None:
    refused(req(f"Content-Length: {value}"), 400, "bad_content_length")


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 5, 5",),
        ("Content-Length: 5,5",),
        ("Content-Length: 5,",),
        ("Content-Length: ,5",),
        ("Content-Length: 5, 6",),
        ("Content-Length: 5", "Content-Length: 5"),
        ("Content-Length: 5", "content-length: 6"),
    ],
)
def test_several_content_lengths_are_refused(lines: tuple[str, ...]) -> None:
    refused(req(*lines), 400, "duplicate_content_length")


# --- Transfer-Encoding ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["chunked", "Chunked", "CHUNKED", "\tchunked", "  chunked\t "])
def test_chunked_is_accepted(value: str) -> None:
    parsed = parse_request_head(req(f"Transfer-Encoding: {value}", line="POST / HTTP/1.1"))
    assert (parsed.framing, parsed.length) == (Framing.CHUNKED, 0)


def test_tab_as_ows_before_chunked() -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked"
    assert parse_request_head(data).framing is Framing.CHUNKED


@pytest.mark.parametrize(
    "lines",
    [
        ("Transfer-Encoding: chunked, chunked",),
        ("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
        ("Transfer-Encoding: chunked, gzip",),  # chunked not last
        ("Transfer-Encoding: chunked", "Transfer-Encoding: gzip"),
        ("Transfer-Encoding: gzip, chunked, chunked",),
        ("Transfer-Encoding: chunked;foo=bar",),  # chunked takes no parameters
        ("Transfer-Encoding:",),
        ("Transfer-Encoding: ,chunked",),
        ("Transfer-Encoding: chunked,",),
        ("Transfer-Encoding: chunked x",),
        ('Transfer-Encoding: "chunked"',),
        ("Transfer-Encoding: chu nked",),
        ("Transfer-Encoding: chunked\xe9",),
    ],
)
def test_ambiguous_transfer_encoding_is_refused(lines: tuple[str, ...]) -> None:
    refused(req(*lines), 400, "bad_transfer_encoding")


@pytest.mark.parametrize(
    "value", ["gzip", "xchunked", "chunkedx", "identity", "deflate", "gzip, chunked", "x;q=1"]
)
def test_unsupported_transfer_coding_is_501(value: str) -> None:
    refused(req(f"Transfer-Encoding: {value}"), 501, "unsupported_transfer_encoding")


def test_transfer_encoding_on_http10_request_is_refused() -> None:
    line = "POST / HTTP/1.0"
    refused(req("Transfer-Encoding: chunked", line=line, host=False), 400, "bad_transfer_encoding")
    assert parse_request_head(req("Content-Length: 3", line=line, host=False)).length == 3


@pytest.mark.parametrize(
    "lines",
    [
        ("Content-Length: 5", "Transfer-Encoding: chunked"),  # CL.TE
        ("Transfer-Encoding: chunked", "Content-Length: 5"),  # TE.CL
        ("Content-Length: 0", "Transfer-Encoding: chunked"),
        ("Content-Length: 5", "Transfer-Encoding: gzip"),
        ("Content-Length: 5", "Transfer-Encoding: xchunked"),
    ],
)
def test_content_length_with_transfer_encoding_is_refused(lines: tuple[str, ...]) -> None:
    refused(req(*lines, line="POST / HTTP/1.1"), 400, "content_length_with_chunked")


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (("Transfer-Encoding : chunked",), "malformed_request"),  # space before colon
        ((" Transfer-Encoding: chunked",), "malformed_request"),  # obs-fold of a whole line
        (("Transfer-Encoding: x", " chunked"), "malformed_request"),  # obs-fold continuation
        (("Transfer-Encoding:\x0bchunked",), "malformed_request"),  # VT is not OWS
        (("Transfer-Encoding: chunked\x00",), "malformed_request"),
        (("Transfer-Encoding: xchunked",), "unsupported_transfer_encoding"),
        (("Content-Length: +5",), "bad_content_length"),
        (("Content-Length: 5, 5",), "duplicate_content_length"),
        (("Content-Length: 5", "Transfer-Encoding: chunked"), "content_length_with_chunked"),
    ],
)
def test_smuggling_classics_are_refused(lines: tuple[str, ...], reason: str) -> None:
    with pytest.raises(HttpParseError) as info:
        parse_request_head(req(*lines, line="POST / HTTP/1.1"))
    assert info.value.reason == reason


def test_smuggling_classic_with_bare_lf_line_ending() -> None:
    data = b"POST / HTTP/1.1\r\nHost: a\nTransfer-Encoding: chunked\r\nContent-Length: 3"
    refused(data, 400, "malformed_request")


# --- Host -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "lines"),
    [
        ("GET / HTTP/1.1", ("Host: a",)),
        ("GET / HTTP/1.1", ("host: a",)),
        ("GET / HTTP/1.1", ("Host:",)),  # empty Host is allowed (no authority)
        ("GET / HTTP/1.0", ()),
        ("GET / HTTP/1.0", ("Host: a",)),
        ("GET / HTTP/1.1", ("Host: math.mcp.svc",)),
        ("GET / HTTP/1.1", ("Host: Math.Local:15001",)),
        ("GET / HTTP/1.1", ("Host: 127.0.0.1:65535",)),
        ("GET / HTTP/1.1", ("Host: [::1]",)),
        ("GET / HTTP/1.1", ("Host: [2001:db8::1]:8443",)),
        ("GET / HTTP/1.1", ("Host: [::ffff:1.2.3.4]:1",)),
        ("GET / HTTP/1.1", ("Host: [v1.fe80::a+en1]",)),  # IPvFuture
        ("GET / HTTP/1.1", ("Host: ex%41mple",)),  # reg-name allows pct-encoded
        ("GET / HTTP/1.1", ("Host: a_b~c!$&'()*+,;=",)),  # and sub-delims
        ("GET / HTTP/1.1", ("Host:  a ",)),  # surrounding OWS is not part of the value
    ],
)
def test_valid_host(line: str, lines: tuple[str, ...]) -> None:
    assert parse_request_head(head(line, *lines)).method == "GET"


@pytest.mark.parametrize(
    "value",
    [
        "a b",
        "a\tb",
        "user@host",
        "user:pw@host",
        "host/path",
        "host/",
        "host?x",
        "host#x",
        "host:",
        "host:0",
        "host:65536",
        "host:123456",
        "host:8o",
        "host:-1",
        "host: 80",
        "a:b:c",
        "::1",
        "[::1",
        "::1]",
        "[::1]x",
        "[::1]:",
        "[1.2.3.4]",
        "[fe80::1%25eth0]",
        "[::g]",
        "[]",
        "ex%4",
        "ex%zz",
        "ex\\ample",
        'ex"ample',
        "exa\x80mple",
        "[v1.]",
    ],
)
def test_invalid_host_is_refused(value: str) -> None:
    """RFC 9110 §7.2: Host is uri-host [":" port]; routing uses it, so nothing else passes."""
    error = refused(head("GET / HTTP/1.1", f"Host: {value}"), 400, "bad_host")
    assert "Host" in error.message
    refused(head("GET http://ok.example/ HTTP/1.1", f"Host: {value}"), 400, "bad_host")


@pytest.mark.parametrize(
    ("line", "lines", "reason"),
    [
        ("GET / HTTP/1.1", (), "missing_host"),
        ("GET / HTTP/1.1", ("X-Host: a",), "missing_host"),
        ("GET / HTTP/1.1", ("Host: a", "Host: a"), "duplicate_host"),
        ("GET / HTTP/1.1", ("Host: a", "HOST: b"), "duplicate_host"),
        ("GET / HTTP/1.0", ("Host: a", "Host: b"), "duplicate_host"),
    ],
)
def test_missing_or_duplicate_host_is_refused(
    line: str, lines: tuple[str, ...], reason: str
) -> None:
    refused(head(line, *lines), 400, reason)


# --- framing, keep-alive, Expect ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "framing", "length"),
    [
        ((), Framing.NONE, 0),
        (("Content-Length: 0",), Framing.LENGTH, 0),
        (("Content-Length: 10",), Framing.LENGTH, 10),
        (("Transfer-Encoding: chunked",), Framing.CHUNKED, 0),
    ],
)
def test_request_framing(lines: tuple[str, ...], framing: Framing, length: int) -> None:
    parsed = parse_request_head(req(*lines, line="POST / HTTP/1.1"))
    assert (parsed.framing, parsed.length) == (framing, length)


@pytest.mark.parametrize(
    ("version", "connection", "keep_alive"),
    [
        (1, (), True),
        (1, ("close",), False),
        (1, ("Close",), False),
        (1, ("keep-alive",), True),
        (1, ("Upgrade",), True),
        (1, ("keep-alive, close",), False),
        (1, ("upgrade", "close"), False),  # several Connection headers
        (1, ("te,CLOSE",), False),
        (1, ("closed",), True),  # tokens, not substrings
        (0, (), False),
        (0, ("keep-alive",), True),
        (0, ("Keep-Alive",), True),
        (0, ("foo, keep-alive",), True),
        (0, ("foo", "keep-alive"), True),
        (0, ("keep-alive", "close"), False),
        (0, ("keep-alive-ish",), False),
        (0, ("close",), False),
    ],
)
def test_request_keep_alive(version: int, connection: tuple[str, ...], keep_alive: bool) -> None:
    lines = [f"Connection: {value}" for value in connection]
    parsed = parse_request_head(req(*lines, line=f"GET / HTTP/1.{version}"))
    assert parsed.keep_alive is keep_alive


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ((), False),
        (("Expect: 100-continue",), True),
        (("Expect: 100-Continue",), True),
        (("expect:  100-continue ",), True),
        (("Expect: foo",), False),
        (("Expect: 100-continuex",), False),
        (("Expect: 200-continue",), False),
    ],
)
def test_expect_continue(lines: tuple[str, ...], expected: bool) -> None:
    assert parse_request_head(req(*lines)).expect_continue is expected


# --- size limits ----------------------------------------------------------------------------------


def test_request_line_limit() -> None:
    target = "/" + "a" * (8190 - len("GET  HTTP/1.1") - 1)
    assert len(f"GET {target} HTTP/1.1") == 8190
    assert parse_request_head(req(line=f"GET {target} HTTP/1.1")).target == target
    refused(req(line=f"GET {target}a HTTP/1.1"), 431, "header_too_large")


def test_header_line_limit() -> None:
    value = "v" * (8190 - len("X-Big: "))
    assert parse_request_head(req(f"X-Big: {value}")).headers["X-Big"] == value
    refused(req(f"X-Big: {value}v"), 431, "header_too_large")


def test_custom_field_size_limit() -> None:
    value = "12345678901"  # "X: " + value is 14 bytes
    assert parse_request_head(req(f"X: {value}"), max_field_size=14).headers["X"] == value
    refused(req(f"X: {value}2"), 431, "header_too_large", max_field_size=14)
    refused(req(line="GET /123456789 HTTP/1.1"), 431, "header_too_large", max_field_size=20)


def test_total_head_size_is_the_callers_business() -> None:
    lines = [f"X-{i}: {'v' * 50}" for i in range(60)]  # ~3.5 KiB, every line short
    parsed = parse_request_head(req(*lines), max_field_size=100)
    assert len(parsed.headers) == 61


def test_header_count_limit() -> None:
    lines = [f"X-{i}: v" for i in range(99)]  # + Host = 100
    assert len(parse_request_head(req(*lines)).headers) == 100
    refused(req(*lines, "X-Last: v"), 431, "header_too_large")
    assert len(parse_request_head(req("A: 1", "B: 2"), max_headers=3).headers) == 3
    refused(req("A: 1", "B: 2", "C: 3"), 431, "header_too_large", max_headers=3)


# --- responses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "version", "status", "reason"),
    [
        ("HTTP/1.1 200 OK", 1, 200, "OK"),
        ("HTTP/1.0 404 Not Found", 0, 404, "Not Found"),
        ("HTTP/1.1 200", 1, 200, ""),
        ("HTTP/1.1 200 ", 1, 200, ""),
        ("HTTP/1.1 200 \tfine café ", 1, 200, "\tfine café "),
        ("HTTP/1.1 100 Continue", 1, 100, "Continue"),
        ("HTTP/1.1 599 x", 1, 599, "x"),
    ],
)
def test_valid_status_lines(line: str, version: int, status: int, reason: str) -> None:
    parsed = parse_response_head(head(line, "Content-Length: 0"), request_method="GET")
    assert (parsed.version, parsed.status, parsed.reason) == (version, status, reason)
    assert type(parsed) is ResponseHead


@pytest.mark.parametrize(
    "line",
    [
        "HTTP/1.1 600 Nope",
        "HTTP/1.1 099 Nope",
        "HTTP/1.1 000",
        "HTTP/1.1 20 OK",
        "HTTP/1.1 2000 OK",
        "HTTP/1.1  200 OK",
        "HTTP/1.1 200OK",
        "HTTP/1.1 abc OK",
        "http/1.1 200 OK",
        "HTTP/1.1",
        "HTTP/1.1 ",
        "",
        " HTTP/1.1 200 OK",
        "HTTP/1.1 200 O\x00K",
        "HTTP/1.1 200 O\x7fK",
    ],
)
def test_malformed_status_lines_are_refused(line: str) -> None:
    resp_refused(head(line, "Content-Length: 0"), 400, "malformed_request")


@pytest.mark.parametrize("line", ["HTTP/2.0 200 OK", "HTTP/1.2 200 OK", "HTTP/0.9 200 OK"])
def test_other_response_versions_are_505(line: str) -> None:
    resp_refused(head(line), 505, "unsupported_version")


@pytest.mark.parametrize(
    ("method", "status", "lines", "framing", "length"),
    [
        ("HEAD", 200, ("Content-Length: 10",), Framing.NONE, 0),
        ("HEAD", 200, ("Transfer-Encoding: chunked",), Framing.NONE, 0),
        ("HEAD", 200, ("Content-Length: bogus", "Transfer-Encoding: gzip"), Framing.NONE, 0),
        ("GET", 204, ("Content-Length: 5",), Framing.NONE, 0),
        ("GET", 304, ("Transfer-Encoding: chunked",), Framing.NONE, 0),
        ("GET", 304, ("Content-Length: 5", "Content-Length: 6"), Framing.NONE, 0),
        ("GET", 100, (), Framing.NONE, 0),
        ("GET", 101, ("Connection: upgrade", "Upgrade: websocket"), Framing.NONE, 0),
        ("POST", 199, ("Content-Length: 5",), Framing.NONE, 0),
        ("GET", 200, ("Content-Length: 10",), Framing.LENGTH, 10),
        ("GET", 200, ("Content-Length: 0",), Framing.LENGTH, 0),
        ("GET", 205, ("Content-Length: 0",), Framing.LENGTH, 0),
        ("POST", 200, ("Transfer-Encoding: chunked",), Framing.CHUNKED, 0),
        ("GET", 404, ("Transfer-Encoding: Chunked",), Framing.CHUNKED, 0),
        ("GET", 200, (), Framing.UNTIL_CLOSE, 0),
        ("POST", 500, ("Connection: keep-alive",), Framing.UNTIL_CLOSE, 0),
        ("get", 200, ("Content-Length: 3",), Framing.LENGTH, 3),  # only "HEAD" is HEAD
    ],
)
def test_response_framing(
    method: str, status: int, lines: tuple[str, ...], framing: Framing, length: int
) -> None:
    parsed = parse_response_head(head(f"HTTP/1.1 {status} X", *lines), request_method=method)
    assert (parsed.framing, parsed.length) == (framing, length)


@pytest.mark.parametrize(
    ("line", "method", "lines", "keep_alive"),
    [
        ("HTTP/1.1 200 OK", "GET", ("Content-Length: 1",), True),
        ("HTTP/1.1 200 OK", "GET", ("Content-Length: 1", "Connection: close"), False),
        ("HTTP/1.1 200 OK", "GET", ("Transfer-Encoding: chunked", "Connection: Close"), False),
        ("HTTP/1.1 200 OK", "GET", ("Transfer-Encoding: chunked",), True),
        ("HTTP/1.0 200 OK", "GET", ("Content-Length: 1",), False),
        ("HTTP/1.0 200 OK", "GET", ("Content-Length: 1", "Connection: keep-alive"), True),
        ("HTTP/1.1 200 OK", "GET", (), False),  # until close
        ("HTTP/1.1 200 OK", "GET", ("Connection: keep-alive",), False),
        ("HTTP/1.0 204 No Content", "GET", ("Connection: keep-alive",), True),
        ("HTTP/1.0 204 No Content", "GET", (), False),
        ("HTTP/1.1 200 OK", "HEAD", (), True),
        ("HTTP/1.1 304 Not Modified", "GET", ("Connection: close",), False),
    ],
)
def test_response_keep_alive(
    line: str, method: str, lines: tuple[str, ...], keep_alive: bool
) -> None:
    assert parse_response_head(head(line, *lines), request_method=method).keep_alive is keep_alive


@pytest.mark.parametrize(
    ("lines", "status", "reason"),
    [
        (("Content-Length: 5", "Transfer-Encoding: chunked"), 400, "content_length_with_chunked"),
        (("Transfer-Encoding: chunked", "Content-Length: 5"), 400, "content_length_with_chunked"),
        (("Content-Length: 5", "Content-Length: 5"), 400, "duplicate_content_length"),
        (("Content-Length: 5, 5",), 400, "duplicate_content_length"),
        (("Content-Length: 5, 6",), 400, "duplicate_content_length"),
        (("Content-Length: -1",), 400, "bad_content_length"),
        (("Transfer-Encoding: gzip",), 501, "unsupported_transfer_encoding"),
        (("Transfer-Encoding: chunked, gzip",), 400, "bad_transfer_encoding"),
        (("Transfer-Encoding: chunked, chunked",), 400, "bad_transfer_encoding"),
        ((" X: y",), 400, "malformed_request"),
        (("X : y",), 400, "malformed_request"),
        (("X: a\x00",), 400, "malformed_request"),
    ],
)
def test_ambiguous_responses_are_refused(lines: tuple[str, ...], status: int, reason: str) -> None:
    resp_refused(head("HTTP/1.1 200 OK", *lines), status, reason)


def test_transfer_encoding_on_http10_response_is_refused() -> None:
    resp_refused(
        head("HTTP/1.0 200 OK", "Transfer-Encoding: chunked"), 400, "bad_transfer_encoding"
    )


def test_bare_lf_in_response_is_refused() -> None:
    resp_refused(b"HTTP/1.1 200 OK\nContent-Length: 0", 400, "malformed_request")


def test_response_headers_keep_order_and_names() -> None:
    parsed = parse_response_head(
        head("HTTP/1.1 200 OK", "Set-Cookie: a=1", "content-length:  2 ", "set-cookie: b=2"),
        request_method="GET",
    )
    assert list(parsed.headers.items()) == [
        ("Set-Cookie", "a=1"),
        ("content-length", "2"),
        ("set-cookie", "b=2"),
    ]
    assert parsed.headers.getall("SET-COOKIE") == ["a=1", "b=2"]
    assert parsed.length == 2


def test_response_size_limits() -> None:
    value = "v" * (65536 - len("X-Big: "))
    ok = head("HTTP/1.1 200 OK", f"X-Big: {value}", "Content-Length: 0")
    assert parse_response_head(ok, request_method="GET").headers["X-Big"] == value
    big = head("HTTP/1.1 200 OK", f"X-Big: {value}v", "Content-Length: 0")
    resp_refused(big, 431, "header_too_large")
    many = [f"X-{i}: v" for i in range(200)]
    assert len(parse_response_head(head("HTTP/1.1 200 OK", *many), request_method="GET").headers)
    resp_refused(head("HTTP/1.1 200 OK", *many, "X-Last: v"), 431, "header_too_large")
    resp_refused(head("HTTP/1.1 200 OK", "A: 1", "B: 2"), 431, "header_too_large", max_headers=1)
    resp_refused(head("HTTP/1.1 200 OK", "A: 1"), 431, "header_too_large", max_field_size=10)


# --- serialize_headers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], b""),
        ([("Host", "a")], b"Host: a\r\n"),
        ([("Host", "a"), ("X", "b c")], b"Host: a\r\nX: b c\r\n"),
        ([("X", "café")], b"X: caf\xe9\r\n"),
        ([("X", "")], b"X: \r\n"),
        ([("X", "a\tb")], b"X: a\tb\r\n"),
    ],
)
def test_serialize_headers(pairs: list[tuple[str, str]], expected: bytes) -> None:
    assert serialize_headers(pairs) == expected
    assert serialize_headers(iter(pairs)) == expected  # any iterable, consumed once


@pytest.mark.parametrize(
    "pair",
    [
        ("X", "a\r\nX-Injected: 1"),
        ("X", "a\nX-Injected: 1"),
        ("X", "a\rb"),
        ("X", "\r"),
        ("X", "\n"),
        ("X", "\n\r"),
        ("X", "a\x00b"),
        ("X\r\nY", "v"),
        ("X\n", "v"),
        ("X\x00", "v"),
        ("X", "€"),  # not latin-1
    ],
)
def test_serialize_headers_refuses_injection(pair: tuple[str, str]) -> None:
    with pytest.raises(ValueError, match=r"CR, LF or NUL|latin-1"):
        serialize_headers([("Host", "a"), pair, ("Z", "z")])


# --- properties -----------------------------------------------------------------------------------

_tchar = st.sampled_from(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_names = st.text(_tchar, min_size=1, max_size=12).filter(
    lambda n: (
        n.lower() not in {"host", "content-length", "transfer-encoding", "connection", "expect"}
    )
)
_value_chars = st.sampled_from(
    [chr(c) for c in range(0x20, 0x7F)] + ["\t"] + [chr(c) for c in range(0x80, 0x100)]
)
_values = st.text(_value_chars, max_size=30).map(lambda v: v.strip(" \t"))


@settings(max_examples=300)
@given(st.lists(st.tuples(_names, _values), max_size=20))
def test_serialized_headers_parse_back(pairs: list[tuple[str, str]]) -> None:
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + serialize_headers(pairs)
    parsed = parse_request_head(data[:-2])  # cut the last CRLF: heads end before the blank line
    assert list(parsed.headers.items()) == [("Host", "h"), *pairs]


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_http_parse_error(data: bytes) -> None:
    for parse in (
        lambda: parse_request_head(data),
        lambda: parse_response_head(data, request_method="GET"),
    ):
        try:
            parse()
        except HttpParseError as err:
            assert err.status in {400, 431, 501, 505}
            assert err.reason


_fragments = st.sampled_from(
    [
        "GET",
        "POST",
        "OPTIONS",
        " ",
        "\t",
        "/",
        "*",
        "?",
        "#",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.1 200 OK",
        "\r\n",
        "\r",
        "\n",
        ":",
        ",",
        "Host",
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Expect",
        "chunked",
        "gzip",
        "close",
        "keep-alive",
        "100-continue",
        "0",
        "5",
        "-",
        "+",
        ";",
        '"',
        "\x00",
        "\x7f",
        "é",
        "x",
    ]
)


@settings(max_examples=1000)
@given(st.lists(_fragments, max_size=40))
def test_near_valid_heads_only_raise_http_parse_error(parts: list[str]) -> None:
    data = "".join(parts).encode("latin-1")
    for parse in (
        lambda: parse_request_head(data),
        lambda: parse_response_head(data, request_method="POST"),
    ):
        try:
            parsed = parse()
        except HttpParseError as err:
            assert err.status in {400, 431, 501, 505}
        else:
            assert b"\n" not in data.replace(b"\r\n", b"")  # no bare LF got through
            assert b"\x00" not in data and b"\x7f" not in data
            if parsed.framing is Framing.LENGTH:
                assert "transfer-encoding" not in parsed.headers
            assert len(parsed.headers.getall("content-length", [])) <= 1


def test_hosts_seen_valid_are_remembered_within_a_bound() -> None:
    """The Host check is skipped for a value seen valid before; the memo stays bounded and never
    holds an invalid value."""
    from sidecar.http1 import parse

    for i in range(parse._VALID_HOSTS_KEPT + 50):
        parse_request_head(head("GET / HTTP/1.1", f"Host: h{i}.example"))
        assert len(parse._valid_hosts) <= parse._VALID_HOSTS_KEPT
    refused(head("GET / HTTP/1.1", "Host: a b"), 400, "bad_host")
    assert "a b" not in parse._valid_hosts
    refused(head("GET / HTTP/1.1", "Host: a b"), 400, "bad_host")
