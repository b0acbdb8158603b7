"""The forwarder's Origin check and header filtering on their own. (Framing — duplicate
Content-Length, Content-Length with Transfer-Encoding — is refused by the HTTP/1.1 parser:
tests/http1 and test_http_hardening.)"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.proxy.errors import Forbidden
from sidecar.proxy.forward import answer_headers, check_origin, forwardable_headers


def request(*headers: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(headers)


def test_origin_must_be_listed_when_a_list_is_set() -> None:
    allowed = ("http://localhost:6274",)
    with pytest.raises(Forbidden):
        check_origin(request(("Origin", "http://evil.test")), allowed)
    check_origin(request(("Origin", "http://localhost:6274/")), allowed)
    check_origin(request(), allowed)  # no Origin: not a browser


def test_answer_headers_drop_hop_by_hop_and_connection_named_ones() -> None:
    """RFC 9110 §7.6.1: what the upstream's Connection header names is hop-by-hop too."""
    upstream = request(
        ("Content-Type", "application/json"),
        ("Connection", "X-Hop ,  keep-alive"),
        ("Connection", "x-other"),
        ("X-Hop", "secret"),
        ("x-other", "secret"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "5"),
        ("Mcp-Session-Id", "s1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    )
    assert list(answer_headers(upstream).items()) == [
        ("Content-Type", "application/json"),
        ("Mcp-Session-Id", "s1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_request_headers_drop_connection_named_ones_in_both_directions_alike() -> None:
    sent = request(("Connection", "X-Hop"), ("X-Hop", "1"), ("Accept", "*/*"), ("Host", "h"))
    assert list(forwardable_headers(sent).items()) == [("Accept", "*/*")]
    assert list(answer_headers(sent).items()) == [("Accept", "*/*"), ("Host", "h")]
