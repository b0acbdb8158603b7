"""Token exchange (RFC 8693) client logic without sockets: the request, the strict reading of
the STS's answer, the mapping of its errors, and the cache."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidecar.tokens.exchange import (
    ACCESS_TOKEN_TYPE,
    CLIENT_ASSERTION_TYPE,
    GRANT_TYPE,
    JWT_TOKEN_TYPE,
    ExchangeCache,
    ExchangedToken,
    ExchangeError,
    basic_authorization,
    exchange_form,
    read_answer,
    subject_token,
)
from tests.tokens.jwtkit import b64json

NOW = 1_800_000_000.0


def answer(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "access_token": "eyJ.abc.def",
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "mcp:tools",
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def refused(status: int, body: bytes) -> ExchangeError:
    with pytest.raises(ExchangeError) as info:
        read_answer(status, body, now=NOW)
    return info.value


def test_the_token_request_fields() -> None:
    form = exchange_form(
        subject="user-token",
        subject_type=ACCESS_TOKEN_TYPE,
        resource="https://math.example.com/mcp",
        audience=None,
        scopes=("mcp:tools", "mcp:read"),
        actor="svid",
        client_assertion="svid",
        client_id=None,
    )
    assert dict(form) == {
        "grant_type": GRANT_TYPE,
        "subject_token": "user-token",
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "resource": "https://math.example.com/mcp",
        "scope": "mcp:tools mcp:read",
        "actor_token": "svid",
        "actor_token_type": JWT_TOKEN_TYPE,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": "svid",
    }
    bare = dict(
        exchange_form(
            subject="t",
            subject_type=ACCESS_TOKEN_TYPE,
            resource=None,
            audience="math",
            scopes=(),
            actor=None,
            client_assertion=None,
            client_id="agent",
        )
    )
    assert bare["audience"] == "math" and bare["client_id"] == "agent"
    assert not {"scope", "actor_token", "client_assertion", "resource"} & set(bare)


def test_basic_authorization_form_encodes_before_base64() -> None:
    """RFC 6749 sec. 2.3.1: a ':' in the id or secret must not split the pair wrongly."""
    value = basic_authorization("agent:1", "p@ss:wörd")
    decoded = base64.b64decode(value.removeprefix("Basic ")).decode()
    assert decoded == "agent%3A1:p%40ss%3Aw%C3%B6rd"


def test_subject_token_from_the_agents_request() -> None:
    assert subject_token(["Bearer abc.def"], "Authorization") == "abc.def"
    assert subject_token(["bearer   abc "], "Authorization") == "abc"
    assert subject_token(["abc.def"], "X-User-Token") == "abc.def"
    cases = {
        "missing_subject_token": ([], "Authorization"),
        "ambiguous_subject_token": (["Bearer a", "Bearer b"], "Authorization"),
        "malformed_subject_token": (["Bearer a b"], "Authorization"),
    }
    for reason, (values, header) in cases.items():
        with pytest.raises(ExchangeError) as info:
            subject_token(values, header)
        assert info.value.reason == reason
    with pytest.raises(ExchangeError) as info:
        subject_token(["Basic abc"], "Authorization")
    assert (
        info.value.status == 401 and info.value.www_authenticate == 'Bearer realm="token_exchange"'
    )


def test_a_good_answer() -> None:
    token = read_answer(200, answer(), now=NOW)
    assert token == ExchangedToken("eyJ.abc.def", NOW + 300, NOW, "mcp:tools")
    assert read_answer(200, answer(token_type="bearer", issued_token_type=JWT_TOKEN_TYPE), now=NOW)


def test_without_expires_in_the_jwt_exp_is_used() -> None:
    jwt_like = f"{b64json({'alg': 'ES256'})}.{b64json({'exp': NOW + 60})}.sig"
    assert read_answer(200, answer(access_token=jwt_like, expires_in=None), now=NOW).expires_at == (
        NOW + 60
    )
    assert read_answer(200, answer(expires_in=None), now=NOW).expires_at is None


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"not json", "not a JSON object"),
        (b"[]", "not a JSON object"),
        (answer(access_token=None), "no access_token"),
        (answer(access_token="a b\r\nX-Injected: 1"), "not a b64token"),
        (answer(access_token="x" * 20000), "not a b64token"),
        (answer(token_type="DPoP"), "is not Bearer"),
        (answer(token_type=None), "is not Bearer"),
        (answer(issued_token_type=None), "issued_token_type"),
        (answer(issued_token_type="urn:ietf:params:oauth:token-type:refresh_token"), "issued"),
        (answer(expires_in="300"), "not a number"),
        (answer(expires_in=True), "not a number"),
        (answer(expires_in=0), "not positive"),
    ],
)
def test_unreadable_answers_fail_closed(body: bytes, what: str) -> None:
    error = refused(200, body)
    assert error.status == 502 and error.reason == "sts_bad_response"
    assert what in error.message


@pytest.mark.parametrize(
    ("status", "code", "http", "reason"),
    [
        (400, "invalid_grant", 401, "subject_token_rejected"),
        (400, "invalid_token", 401, "subject_token_rejected"),
        (400, "invalid_target", 403, "token_exchange_denied"),
        (400, "invalid_scope", 403, "token_exchange_denied"),
        (403, "access_denied", 403, "token_exchange_denied"),
        (400, "unauthorized_client", 403, "token_exchange_denied"),
        (401, "invalid_client", 502, "token_exchange_failed"),
        (400, "invalid_request", 502, "token_exchange_failed"),
        (400, "unsupported_grant_type", 502, "token_exchange_failed"),
        (503, "temporarily_unavailable", 502, "sts_unavailable"),
    ],
)
def test_sts_errors_map_to_clear_answers(status: int, code: str, http: int, reason: str) -> None:
    body = json.dumps({"error": code, "error_description": "because"}).encode()
    error = refused(status, body)
    assert (error.status, error.reason, error.sts_error) == (http, reason, code)
    assert error.to_json()["sts_error"] == code and "because" in error.message


def test_sts_errors_without_a_readable_code() -> None:
    for status, body in ((500, b"<html>oops</html>"), (400, b"{}"), (400, b'{"error": 7}')):
        error = refused(status, body)
        assert error.status == 502 and error.sts_error is None
        assert "sts_error" not in error.to_json()
    weird = refused(400, json.dumps({"error": 'x"\u2028', "error_description": "\x00"}).encode())
    assert weird.sts_error is None and "\x00" not in weird.message


def test_cache_reuses_until_shortly_before_expiry() -> None:
    now = [NOW]
    cache = ExchangeCache(clock=lambda: now[0])
    cache.put("k", ExchangedToken("t", NOW + 300, NOW), refresh_before=30)
    assert cache.get("k") == "t"
    now[0] = NOW + 269
    assert cache.get("k") == "t"
    now[0] = NOW + 270
    assert cache.get("k") is None and len(cache) == 0
    # a short-lived token is refreshed at half its life, not after it expired
    now[0] = NOW
    cache.put("short", ExchangedToken("s", NOW + 20, NOW), refresh_before=30)
    now[0] = NOW + 9
    assert cache.get("short") == "s"
    now[0] = NOW + 10
    assert cache.get("short") is None
    # no known lifetime: not cached
    cache.put("unknown", ExchangedToken("u", None, NOW), refresh_before=30)
    assert cache.get("unknown") is None


def test_cache_is_bounded_least_recently_used_first() -> None:
    cache = ExchangeCache(limit=3, clock=lambda: NOW)
    for key in "abc":
        cache.put(key, ExchangedToken(key, NOW + 300, NOW), refresh_before=30)
    assert cache.get("a") == "a"  # a is now the most recently used
    cache.put("d", ExchangedToken("d", NOW + 300, NOW), refresh_before=30)
    assert len(cache) == 3 and cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == ["a", "c", "d"]
