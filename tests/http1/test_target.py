"""Authorities and path normalisation: what a route prefix can be escaped with, and what not."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http1.errors import HttpParseError
from sidecar.http1.target import is_authority, normalize_path
from sidecar.proxy.routing import prefix_matches


def rfc3986_remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 word for word (the input-buffer algorithm): the oracle."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith(("./", "/./")):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../") or inp == "/..":
            inp = "/" + inp[4:]
            out = out[: max(out.rfind("/"), 0)]
        elif inp in (".", ".."):
            inp = ""
        else:
            end = inp.find("/", 1)
            segment = inp if end < 0 else inp[:end]
            out += segment
            inp = inp[len(segment) :]
    return out


def server_view(path: str) -> str:
    """What a server that decodes every escape and then resolves dot-segments sees."""
    return rfc3986_remove_dot_segments(unquote(path))


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/mcp", "/mcp"),
        ("/", "/"),
        ("/mcp/../admin", "/admin"),
        ("/mcp/%2e%2e/admin", "/admin"),
        ("/mcp/%2E%2E/admin", "/admin"),
        ("/mcp/.%2e/admin", "/admin"),
        ("/mcp/%2e./admin", "/admin"),
        ("/mcp/x/../../admin", "/admin"),
        ("/mcp/..", "/"),
        ("/mcp/%2E%2E", "/"),
        ("/mcp/.", "/mcp/"),
        ("/mcp/./x", "/mcp/x"),
        ("/mcp/x/..", "/mcp/"),
        ("/../../etc/passwd", "/etc/passwd"),  # never above the root
        ("/mcp//../x", "/mcp/x"),
        ("/a/b/c/./../../g", "/a/g"),  # RFC 3986 §5.2.4's example
        ("/mcp/...", "/mcp/..."),  # not a dot-segment
        ("/mcp/..a/.b", "/mcp/..a/.b"),
        ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource"),
        ("/mcp/a%41%7e%2D%5f", "/mcp/aA~-_"),  # unreserved escapes are decoded
        ("/mcp/%c3%a9%20%3F", "/mcp/%c3%a9%20%3F"),  # other escapes stay as sent
        ("/mcp/%252e%252e/admin", "/mcp/%252e%252e/admin"),  # %25 is data: decoded once only
        ("/mcp/%00", "/mcp/%00"),
    ],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal
    assert normalize_path(normal) == normal


def test_a_normal_path_is_returned_as_is() -> None:
    path = "/math/mcp"
    assert normalize_path(path) is path


@pytest.mark.parametrize(
    "path",
    [
        "/mcp/%2e%2e%2fadmin",
        "/mcp/..%2fadmin",
        "/mcp/%2F",
        "/mcp/a%2fb",
        "/mcp/..%5cadmin",
        "/mcp/%5C",
        "/mcp/..\\admin",
        "/mcp\\x",
        "/mcp/%",
        "/mcp/%4",
        "/mcp/%zz",
        "/mcp/%%32e",
        "*",
        "",
        "mcp",
    ],
)
def test_ambiguous_paths_are_refused(path: str) -> None:
    with pytest.raises(HttpParseError) as info:
        normalize_path(path)
    assert (info.value.status, info.value.reason) == (400, "bad_path")


_segments = st.sampled_from(
    [
        "mcp",
        "admin",
        "x",
        "",
        ".",
        "..",
        "%2e",
        "%2E",
        ".%2e",
        "%2e.",
        "%2e%2e",
        "%2E%2e",
        "...",
        "a%41",
        "%7e",
        "%25",
        "%252e",
        "%252E%252e",
        "%c3%a9",
        "%2f",
        "..%2F",
        "%5c",
        "\\",
    ]
)
_paths = st.lists(_segments, max_size=8).map(lambda segments: "/" + "/".join(segments))
_prefixes = st.sampled_from(["/", "/mcp", "/mcp/x", "/admin"])


def _normalised(path: str) -> str | None:
    try:
        return normalize_path(path)
    except HttpParseError:
        return None


@given(_paths)
def test_normalisation_is_rfc3986(path: str) -> None:
    """Decode unreserved escapes, then RFC 3986 §5.2.4; refused only for the ambiguous shapes."""
    normal = _normalised(path)
    ambiguous = "\\" in path or "%2f" in path.lower() or "%5c" in path.lower()
    assert (normal is None) == ambiguous
    if normal is not None:
        assert unquote(normal) == server_view(path)
        assert normalize_path(normal) == normal  # idempotent


@given(_paths, _prefixes)
def test_a_normalised_path_never_escapes_the_matched_prefix(path: str, prefix: str) -> None:
    """Whatever a decoding, dot-resolving server makes of the forwarded path (with or without
    the prefix stripped) stays where the route matched."""
    normal = _normalised(path)
    if normal is None or not prefix_matches(prefix, normal):
        return
    assert prefix_matches(prefix, server_view(normal))
    assert server_view(normal) == unquote(normal)  # nothing left for the server to resolve
    stripped = normal[len(prefix.rstrip("/")) :] or "/"
    assert server_view(stripped) == unquote(stripped)  # cannot climb out of the server's root


@pytest.mark.parametrize(
    "value",
    ["", "a", "a:1", "math.local:65535", "[::1]", "[::1]:8443", "1.2.3.4:80", "[v7.x:y]", "%41"],
)
def test_authorities(value: str) -> None:
    assert is_authority(value)


@pytest.mark.parametrize(
    "value", ["a b", "u@h", "h/p", "h:", "h:0", "h:65536", "[::1", "[x]", "[::1%25e]", "%4"]
)
def test_not_authorities(value: str) -> None:
    assert not is_authority(value)
