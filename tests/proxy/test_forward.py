"""Framing checks of the forwarder on their own (defence in depth behind our HTTP/1.1 parser,
which refuses these shapes itself: see tests/http1 and test_http_hardening)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.proxy.errors import BadRequest, Forbidden
from sidecar.proxy.forward import check_framing, check_origin


def request(*headers: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(headers)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ((("Content-Length", "2"), ("Content-Length", "2")), "duplicate_content_length"),
        (
            (("Content-Length", "2"), ("Transfer-Encoding", "chunked")),
            "content_length_with_chunked",
        ),
    ],
)
def test_smuggling_shapes_are_refused(headers: tuple[tuple[str, str], ...], reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        check_framing(request(*headers))
    assert err.value.reason == reason and err.value.status == 400


def test_plain_framing_passes() -> None:
    check_framing(request(("Content-Length", "2")))


def test_origin_must_be_listed_when_a_list_is_set() -> None:
    allowed = ("http://localhost:6274",)
    with pytest.raises(Forbidden):
        check_origin(request(("Origin", "http://evil.test")), allowed)
    check_origin(request(("Origin", "http://localhost:6274/")), allowed)
    check_origin(request(), allowed)  # no Origin: not a browser
