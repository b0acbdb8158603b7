"""Extracting the bearer token from Authorization headers (RFC 6750 section 2.1)."""

from __future__ import annotations

import pytest

from sidecar.tokens import TokenError, bearer_token


def test_bearer_token() -> None:
    assert bearer_token(["Bearer abc.def-_~+/="], layer="oauth") == "abc.def-_~+/="
    assert bearer_token(["bearer  abc "], layer="oauth") == "abc"
    assert bearer_token(["BEARER x"], layer="jwt_svid") == "x"


@pytest.mark.parametrize(
    ("values", "reason", "error"),
    [
        ([], "missing_token", None),
        (["Bearer a", "Bearer b"], "multiple_authorization_headers", "invalid_request"),
        (["Basic dXNlcjpwYXNz"], "unsupported_auth_scheme", "invalid_request"),
        (["Bearer"], "malformed_authorization", "invalid_request"),
        (["Bearer   "], "malformed_authorization", "invalid_request"),
        (["Bearer a b"], "malformed_token", "invalid_token"),
        (['Bearer a"b'], "malformed_token", "invalid_token"),
        (["Bearer a=b"], "malformed_token", "invalid_token"),
    ],
)
def test_bad_authorization_headers(values: list[str], reason: str, error: str | None) -> None:
    with pytest.raises(TokenError) as info:
        bearer_token(values, layer="oauth")
    assert info.value.reason == reason
    assert info.value.error == error
    assert info.value.status == 401
