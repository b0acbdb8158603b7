"""The forwarder's Origin check on its own. (Framing — duplicate Content-Length, Content-Length
with Transfer-Encoding — is refused by the HTTP/1.1 parser: tests/http1 and test_http_hardening.)"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sidecar.proxy.errors import Forbidden
from sidecar.proxy.forward import check_origin


def request(*headers: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(headers)


def test_origin_must_be_listed_when_a_list_is_set() -> None:
    allowed = ("http://localhost:6274",)
    with pytest.raises(Forbidden):
        check_origin(request(("Origin", "http://evil.test")), allowed)
    check_origin(request(("Origin", "http://localhost:6274/")), allowed)
    check_origin(request(), allowed)  # no Origin: not a browser
