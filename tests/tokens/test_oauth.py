"""OAuth access tokens (RFC 9068 / MCP authorization) and the issuer's key cache."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web

from sidecar.tokens import (
    InsufficientScope,
    JwksCache,
    JwksUnavailable,
    OAuthRules,
    TokenError,
    UnknownKid,
    discovery_urls,
    jose,
    load_jwks,
    oauth,
    validate_access_token,
)
from tests.tokens.jwtkit import (
    NOW,
    ec_key,
    hs256_with_public_key,
    jwks,
    public_jwk,
    raw_token,
    rsa_key,
    sign,
    tamper_payload,
)

ISSUER = "https://auth.example.com"
RESOURCE = "https://mcp.example.com/mcp"
JWKS_URI = "https://auth.example.com/jwks.json"
RULES = OAuthRules(issuer=ISSUER, audience=RESOURCE, required_scopes=("tools:call",))

KEY1, KEY2 = ec_key(index=10), rsa_key(index=10)
JWKS1 = jwks(public_jwk(KEY1, "k1"))
JWKS2 = jwks(public_jwk(KEY1, "k1"), public_jwk(KEY2, "k2"))
KEYS: dict[str, jwt.PyJWK] = load_jwks(JWKS2, source="test")


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-123",
        "aud": RESOURCE,
        "exp": NOW + 300,
        "iat": NOW - 5,
        "scope": "tools:call tools:list",
        "client_id": "agent",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(kid: str = "k1", *, typ: str | None = "at+jwt", **overrides: Any) -> str:
    if kid == "k2":
        return sign(claims(**overrides), KEY2, alg="RS256", kid=kid, typ=typ)
    return sign(claims(**overrides), KEY1, alg="ES256", kid=kid, typ=typ)


def reason_of(tok: str, rules: OAuthRules = RULES, keys: dict[str, jwt.PyJWK] = KEYS) -> str:
    with pytest.raises(TokenError) as info:
        validate_access_token(tok, keys, rules, now=NOW)
    assert info.value.layer == "oauth"
    return info.value.reason


# ------------------------------------------------------------------------------------ validation


def test_valid_access_token() -> None:
    verified = validate_access_token(token(), KEYS, RULES, now=NOW)
    assert verified.layer == "oauth"
    assert verified.subject == "user-123"
    assert verified.issuer == ISSUER
    assert verified.audience == (RESOURCE,)
    assert verified.scopes == {"tools:call", "tools:list"}
    assert verified.claims["client_id"] == "agent"
    assert verified.roles == () and verified.groups == ()
    assert validate_access_token(token("k2"), KEYS, RULES, now=NOW).subject == "user-123"


def test_scp_list_form_and_both_forms() -> None:
    verified = validate_access_token(
        token(scope=None, scp=["tools:call", "admin"]), KEYS, RULES, now=NOW
    )
    assert verified.scopes == {"tools:call", "admin"}
    verified = validate_access_token(token(scp="a b", scope="tools:call"), KEYS, RULES, now=NOW)
    assert verified.scopes == {"a", "b", "tools:call"}


@pytest.mark.parametrize("bad", [7, ["ok", 3], {"s": 1}, "ok bad\u00e9", ["two words"]])
def test_malformed_scope_claim(bad: object) -> None:
    assert reason_of(token(scope=bad)) == "malformed_claim"


def test_roles_and_groups_with_configurable_claim_names() -> None:
    rules = OAuthRules(
        issuer=ISSUER,
        audience=RESOURCE,
        roles_claim="realm_access.roles",
        groups_claim="https://example.com/groups",
    )
    verified = validate_access_token(
        token(
            realm_access={"roles": ["reader", "writer"]},
            **{"https://example.com/groups": "ops"},
        ),
        KEYS,
        rules,
        now=NOW,
    )
    assert verified.roles == ("reader", "writer")
    assert verified.groups == ("ops",)
    verified = validate_access_token(token(roles="admin", groups=["a", "b"]), KEYS, RULES, now=NOW)
    assert verified.roles == ("admin",) and verified.groups == ("a", "b")
    assert reason_of(token(roles=[1])) == "malformed_claim"


def test_aud_list_containing_the_resource() -> None:
    verified = validate_access_token(token(aud=["other", RESOURCE]), KEYS, RULES, now=NOW)
    assert verified.audience == ("other", RESOURCE)


def test_wrong_issuer() -> None:
    assert reason_of(token(iss="https://evil.example.com")) == "wrong_issuer"
    assert reason_of(token(iss=ISSUER + "/")) == "wrong_issuer"  # exact match, no normalisation
    assert reason_of(token(iss=None)) == "wrong_issuer"


def test_token_for_another_resource() -> None:
    assert reason_of(token(aud="https://other.example.com/mcp")) == "wrong_audience"
    assert reason_of(token(aud=["https://mcp.example.com"])) == "wrong_audience"
    assert reason_of(token(aud=None)) == "missing_audience"


def test_missing_scope_is_403_insufficient_scope() -> None:
    rules = OAuthRules(issuer=ISSUER, audience=RESOURCE, required_scopes=("tools:call", "files"))
    with pytest.raises(InsufficientScope) as info:
        validate_access_token(token(), KEYS, rules, now=NOW)
    exc = info.value
    assert exc.status == 403
    assert exc.reason == "insufficient_scope"
    assert exc.error == "insufficient_scope"
    assert exc.scope == "tools:call files"
    challenge = exc.www_authenticate(resource_metadata="https://m/x")
    assert 'error="insufficient_scope"' in challenge and 'scope="tools:call files"' in challenge
    assert reason_of(token(scope=None)) == "insufficient_scope"


def test_scope_is_checked_only_after_everything_else() -> None:
    assert reason_of(token(scope="", exp=NOW - 100)) == "expired"
    assert reason_of(token(scope="", iss="x")) == "wrong_issuer"
    assert reason_of(tamper_payload(token(), scope="")) == "bad_signature"


def test_typ_at_jwt_enforced() -> None:
    rules = OAuthRules(issuer=ISSUER, audience=RESOURCE, require_typ="at+jwt")
    for ok in ("at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"):
        validate_access_token(token(typ=ok), KEYS, rules, now=NOW)
    for bad in ("JWT", "jwt", "application/jwt", "at+jwt+x"):
        assert reason_of(token(typ=bad), rules) == "bad_typ"
    assert reason_of(token(typ=None), rules) == "bad_typ"
    # Not configured: any typ is accepted (e.g. issuers that send JWT).
    validate_access_token(token(typ="JWT"), KEYS, RULES, now=NOW)


def test_header_attacks() -> None:
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "k2"}
    assert reason_of(hs256_with_public_key(header, claims(), KEY2)) == "bad_algorithm"
    assert reason_of(raw_token({"alg": "none", "kid": "k1"}, claims())) == "bad_algorithm"
    assert reason_of(token(kid="k1") + "x") == "malformed_token"
    assert reason_of(sign(claims(), KEY1, kid=None)) == "missing_kid"
    assert reason_of(sign(claims(), KEY2, alg="RS256", kid="k1")) == "bad_algorithm"
    with pytest.raises(UnknownKid):
        validate_access_token(token(kid="k9"), KEYS, RULES, now=NOW)


def test_time_and_subject_claims() -> None:
    assert reason_of(token(exp=NOW - 31)) == "expired"
    assert reason_of(token(exp=None)) == "missing_exp"
    assert reason_of(token(nbf=NOW + 31)) == "not_yet_valid"
    assert reason_of(token(sub=None)) == "bad_subject"
    assert reason_of(token(sub=5)) == "bad_subject"


def test_cnf_claim_is_exposed_and_checked_for_shape() -> None:
    verified = validate_access_token(token(cnf={"x5t#S256": "abc"}), KEYS, RULES, now=NOW)
    assert verified.cnf_x5t_s256 == "abc"
    assert reason_of(token(cnf="abc")) == "malformed_claim"
    assert reason_of(token(cnf={"x5t#S256": 5})) == "malformed_claim"


def test_delegation_chain_is_exposed_and_checked_for_shape() -> None:
    agent = "spiffe://example.org/ns/agents/sa/agent"
    act = {"sub": agent, "act": {"sub": "planner"}}
    verified = validate_access_token(token(act=act), KEYS, RULES, now=NOW)
    assert verified.subject == "user-123" and verified.actors == (agent, "planner")
    assert validate_access_token(token(), KEYS, RULES, now=NOW).actors == ()
    assert reason_of(token(act=agent)) == "malformed_claim"
    assert reason_of(token(act={"iss": ISSUER})) == "malformed_claim"


def test_rules_validation() -> None:
    with pytest.raises(ValueError, match="HS256"):
        OAuthRules(issuer=ISSUER, audience=RESOURCE, algorithms=("RS256", "HS256"))
    with pytest.raises(ValueError, match="issuer"):
        OAuthRules(issuer="", audience=RESOURCE)
    with pytest.raises(ValueError, match="scope"):
        OAuthRules(issuer=ISSUER, audience=RESOURCE, required_scopes=("a b",))
    with pytest.raises(ValueError, match="jwks_refresh_interval"):
        OAuthRules(issuer=ISSUER, audience=RESOURCE, jwks_refresh_interval=0)


def test_discovery_urls() -> None:
    assert discovery_urls("https://auth.example.com") == (
        "https://auth.example.com/.well-known/openid-configuration",
        "https://auth.example.com/.well-known/oauth-authorization-server",
    )
    assert discovery_urls("https://auth.example.com/tenant1/") == (
        "https://auth.example.com/tenant1/.well-known/openid-configuration",
        "https://auth.example.com/.well-known/openid-configuration/tenant1",
        "https://auth.example.com/.well-known/oauth-authorization-server/tenant1",
    )
    with pytest.raises(ValueError):
        discovery_urls("not-a-url")


# ------------------------------------------------------------------------------------ JwksCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeFetch:
    """URL -> document (or an exception to raise); records every call; yields once per call so
    concurrent callers really overlap the fetch."""

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = docs
        self.calls: list[str] = []

    async def __call__(self, url: str) -> Any:
        self.calls.append(url)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        doc = self.docs.get(url, LookupError(f"404 {url}"))
        if isinstance(doc, BaseException):
            raise doc
        return doc


CACHE_RULES = OAuthRules(
    issuer=ISSUER, audience=RESOURCE, jwks_cache_ttl=300, jwks_refresh_interval=30
)


def make_cache(docs: dict[str, Any], **kwargs: Any) -> tuple[JwksCache, FakeFetch, FakeClock]:
    fetch, clock = FakeFetch(docs), FakeClock()
    kwargs.setdefault("jwks_uri", JWKS_URI)
    return JwksCache(CACHE_RULES, fetch, clock=clock, **kwargs), fetch, clock


async def test_first_use_fetches_then_cached_until_ttl() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS1})
    assert (await cache.validate(token(), now=NOW)).subject == "user-123"
    await cache.validate(token(), now=NOW)
    clock.advance(299)
    await cache.validate(token(), now=NOW)
    assert fetch.calls == [JWKS_URI] and cache.fetch_count == 1
    clock.advance(1)
    await cache.validate(token(), now=NOW)
    assert fetch.calls == [JWKS_URI, JWKS_URI] and cache.fetch_count == 2
    assert set(cache.keys) == {"k1"} and cache.jwks_uri == JWKS_URI


async def test_ttl_refetch_drops_removed_keys() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS2})
    await cache.validate(token("k2"), now=NOW)
    fetch.docs[JWKS_URI] = JWKS1  # the issuer retired k2
    clock.advance(301)
    with pytest.raises(UnknownKid):
        await cache.validate(token("k2"), now=NOW)
    assert cache.fetch_count == 2  # the unknown kid did not refetch right after the TTL fetch


async def test_rotation_to_a_new_kid_is_accepted_after_one_refresh() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS1})
    await cache.validate(token("k1"), now=NOW)
    fetch.docs[JWKS_URI] = JWKS2  # the issuer starts signing with k2
    clock.advance(31)
    assert (await cache.validate(token("k2"), now=NOW)).subject == "user-123"
    assert cache.fetch_count == 2
    await cache.validate(token("k2"), now=NOW)
    await cache.validate(token("k1"), now=NOW)
    assert cache.fetch_count == 2


async def test_unknown_kid_refreshes_at_most_once_per_interval() -> None:
    cache, _fetch, clock = make_cache({JWKS_URI: JWKS1})
    await cache.refresh()
    clock.advance(31)
    with pytest.raises(UnknownKid):
        await cache.validate(token("k9"), now=NOW)
    assert cache.fetch_count == 2
    clock.advance(29)
    for _ in range(5):
        with pytest.raises(UnknownKid):
            await cache.validate(token("k9"), now=NOW)
    assert cache.fetch_count == 2
    clock.advance(1)
    with pytest.raises(UnknownKid):
        await cache.validate(token("k9"), now=NOW)
    assert cache.fetch_count == 3


async def test_flood_of_unknown_kids_costs_one_fetch() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS1})
    await cache.refresh()
    clock.advance(31)
    forged = [sign(claims(), KEY1, kid=f"made-up-{i}", typ="at+jwt") for i in range(50)]
    results = await asyncio.gather(
        *(cache.validate(t, now=NOW) for t in forged), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKid) for r in results)
    assert len(fetch.calls) == 2 and cache.fetch_count == 2
    results = await asyncio.gather(
        *(cache.validate(t, now=NOW) for t in forged), return_exceptions=True
    )
    assert all(isinstance(r, UnknownKid) for r in results)
    assert len(fetch.calls) == 2


async def test_flood_of_a_new_real_kid_shares_one_fetch() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS1})
    await cache.refresh()
    fetch.docs[JWKS_URI] = JWKS2
    clock.advance(31)
    results = await asyncio.gather(*(cache.validate(token("k2"), now=NOW) for _ in range(50)))
    assert {r.subject for r in results} == {"user-123"}
    assert len(fetch.calls) == 2


async def test_fetch_failure_keeps_old_keys() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS1})
    await cache.validate(token(), now=NOW)
    fetch.docs[JWKS_URI] = OSError("connection refused")
    clock.advance(301)
    assert (await cache.validate(token(), now=NOW)).subject == "user-123"
    assert cache.fetch_count == 2 and cache.fetch_failures == 1
    assert cache.last_error is not None and "connection refused" in cache.last_error
    # The failed attempt counts toward the interval: no retry storm while the issuer is down.
    for _ in range(3):
        await cache.validate(token(), now=NOW)
    assert cache.fetch_count == 2
    clock.advance(30)
    fetch.docs[JWKS_URI] = JWKS2
    await cache.validate(token("k2"), now=NOW)
    assert cache.fetch_count == 3 and cache.last_error is None


@pytest.mark.parametrize("bad_doc", [{"keys": []}, {"nope": 1}, [1, 2], "text"])
async def test_unusable_documents_count_as_failures(bad_doc: Any) -> None:
    cache, fetch, clock = make_cache({JWKS_URI: JWKS1})
    await cache.refresh()
    fetch.docs[JWKS_URI] = bad_doc
    clock.advance(301)
    await cache.validate(token(), now=NOW)
    assert cache.fetch_failures == 1 and set(cache.keys) == {"k1"}


async def test_no_keys_at_all_is_503_and_not_retried_within_the_interval() -> None:
    cache, fetch, clock = make_cache({JWKS_URI: TimeoutError()})
    for _ in range(3):
        with pytest.raises(JwksUnavailable) as info:
            await cache.validate(token(), now=NOW)
    exc = info.value
    assert exc.status == 503 and exc.reason == "jwks_unavailable" and exc.error is None
    assert cache.fetch_count == 1
    fetch.docs[JWKS_URI] = JWKS1
    clock.advance(30)
    await cache.validate(token(), now=NOW)
    assert cache.fetch_count == 2


async def test_inline_jwks_never_fetches() -> None:
    async def no_fetch(url: str) -> Any:
        raise AssertionError(f"fetched {url}")

    for inline in (JWKS1, json.dumps(JWKS1)):
        cache = JwksCache(CACHE_RULES, no_fetch, jwks=inline)
        assert cache.source == "inline"
        await cache.validate(token(), now=NOW)
        with pytest.raises(UnknownKid):
            await cache.validate(token("k2"), now=NOW)
        assert await cache.refresh() is False
        assert cache.fetch_count == 0
    with pytest.raises(ValueError, match="no usable key"):
        JwksCache(CACHE_RULES, no_fetch, jwks={"keys": [{"kty": "oct", "k": "AA", "kid": "x"}]})
    with pytest.raises(ValueError, match="not both"):
        JwksCache(CACHE_RULES, no_fetch, jwks=JWKS1, jwks_uri=JWKS_URI)


async def test_discovery_via_openid_configuration() -> None:
    oidc = f"{ISSUER}/.well-known/openid-configuration"
    cache, fetch, _ = make_cache(
        {oidc: {"issuer": ISSUER, "jwks_uri": JWKS_URI}, JWKS_URI: JWKS1}, jwks_uri=None
    )
    assert cache.source == "discovery"
    assert cache.jwks_uri is None
    await cache.validate(token(), now=NOW)
    assert fetch.calls == [oidc, JWKS_URI]
    assert cache.fetch_count == 1
    assert cache.jwks_uri == JWKS_URI


async def test_discovery_falls_back_to_rfc8414() -> None:
    issuer = "https://auth.example.com/tenant1"
    rules = OAuthRules(issuer=issuer, audience=RESOURCE)
    rfc8414 = "https://auth.example.com/.well-known/oauth-authorization-server/tenant1"
    fetch = FakeFetch({rfc8414: {"issuer": issuer, "jwks_uri": JWKS_URI}, JWKS_URI: JWKS1})
    cache = JwksCache(rules, fetch, clock=FakeClock())
    await cache.validate(token(iss=issuer), now=NOW)
    assert fetch.calls[-2:] == [rfc8414, JWKS_URI] and len(fetch.calls) == 4


async def test_discovery_with_another_issuer_is_refused() -> None:
    oidc = f"{ISSUER}/.well-known/openid-configuration"
    rfc8414 = f"{ISSUER}/.well-known/oauth-authorization-server"
    evil_jwks = "https://evil.example.com/jwks"
    cache, fetch, _clock = make_cache(
        {
            oidc: {"issuer": "https://evil.example.com", "jwks_uri": evil_jwks},
            rfc8414: {"issuer": ISSUER + "/", "jwks_uri": evil_jwks},
            evil_jwks: JWKS1,
        },
        jwks_uri=None,
    )
    with pytest.raises(JwksUnavailable):
        await cache.validate(token(), now=NOW)
    assert evil_jwks not in fetch.calls
    assert cache.jwks_uri is None and cache.fetch_failures == 1
    assert cache.last_error is not None and "issuer" in cache.last_error


async def test_discovery_without_usable_jwks_uri_is_refused() -> None:
    oidc = f"{ISSUER}/.well-known/openid-configuration"
    cache, fetch, _ = make_cache(
        {oidc: {"issuer": ISSUER, "jwks_uri": "file:///etc/passwd"}}, jwks_uri=None
    )
    with pytest.raises(JwksUnavailable):
        await cache.validate(token(), now=NOW)
    assert fetch.calls == list(discovery_urls(ISSUER))


async def test_cancelled_waiter_does_not_cancel_the_shared_fetch() -> None:
    gate = asyncio.Event()

    async def slow_fetch(url: str) -> Any:
        await gate.wait()
        return JWKS1

    cache = JwksCache(CACHE_RULES, slow_fetch, jwks_uri=JWKS_URI, clock=FakeClock())
    first = asyncio.create_task(cache.validate(token(), now=NOW))
    second = asyncio.create_task(cache.validate(token(), now=NOW))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    assert (await second).subject == "user-123"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert cache.fetch_count == 1


async def test_close_cancels_a_fetch_in_flight() -> None:
    async def never(url: str) -> Any:
        await asyncio.Event().wait()

    cache = JwksCache(CACHE_RULES, never, jwks_uri=JWKS_URI, clock=FakeClock())
    waiter = asyncio.create_task(cache.validate(token(), now=NOW))
    await asyncio.sleep(0)
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_against_a_real_http_server() -> None:
    """Discovery and JWKS over real HTTP (an aiohttp server on loopback, an aiohttp fetcher)."""
    hits: list[str] = []
    state: dict[str, Any] = {"jwks": JWKS1}

    async def handler(request: web.Request) -> web.Response:
        hits.append(request.path)
        base = f"http://{request.host}"
        if request.path == "/.well-known/openid-configuration":
            return web.json_response({"issuer": base, "jwks_uri": f"{base}/keys"})
        if request.path == "/keys":
            return web.json_response(state["jwks"])
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        issuer = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:

            async def fetch_json(url: str) -> Any:
                async with session.get(url, allow_redirects=False) as resp:
                    resp.raise_for_status()
                    return await resp.json()

            clock = FakeClock()
            rules = OAuthRules(issuer=issuer, audience=RESOURCE, jwks_refresh_interval=5)
            cache = JwksCache(rules, fetch_json, clock=clock)
            assert (await cache.validate(token(iss=issuer), now=NOW)).issuer == issuer
            state["jwks"] = JWKS2
            clock.advance(5)
            assert (await cache.validate(token("k2", iss=issuer), now=NOW)).subject == "user-123"
            assert hits == ["/.well-known/openid-configuration", "/keys", "/keys"]
    finally:
        await runner.cleanup()


# A token the real clock accepts: ``JwksCache`` remembers verifications only when no ``now`` is
# given, that is in production.
def live_token(kid: str = "k1", lifetime: int = 300) -> str:
    now = int(time.time())
    return token(kid, exp=now + lifetime, iat=now - 5)


def counting_signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    checked: list[str] = []
    real = jose.verify_signature  # what oauth imported; counted where oauth looks it up

    def counting(token: str, *args: Any) -> Any:
        checked.append(token)
        return real(token, *args)

    monkeypatch.setattr(oauth, "verify_signature", counting)
    return checked


async def test_a_token_is_verified_once_per_key_set(monkeypatch: pytest.MonkeyPatch) -> None:
    checked = counting_signature_checks(monkeypatch)
    cache, _, _ = make_cache({JWKS_URI: JWKS2})
    tok = live_token()
    first = await cache.validate(tok)
    assert await cache.validate(tok) is first
    assert len(checked) == 1
    await cache.validate(tok, now=time.time())  # an explicit clock: always verified
    assert len(checked) == 2


async def test_a_remembered_token_is_refused_once_its_key_is_retired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    checked = counting_signature_checks(monkeypatch)
    cache, fetch, clock = make_cache({JWKS_URI: JWKS2})
    tok = live_token("k2")
    await cache.validate(tok)
    fetch.docs[JWKS_URI] = JWKS1  # the issuer retired k2
    clock.advance(301)  # the key set's TTL: refetched on the next request
    with pytest.raises(UnknownKid):
        await cache.validate(tok)
    assert len(checked) == 1  # refused on its kid, not served from memory


async def test_a_remembered_token_is_refused_once_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, _, _ = make_cache({JWKS_URI: JWKS1})
    tok = live_token(lifetime=60)
    await cache.validate(tok)
    later = time.time() + 3600  # past exp and any leeway
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(TokenError) as info:
        await cache.validate(tok)
    assert info.value.reason == "expired"
