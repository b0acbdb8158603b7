"""JWT-SVID validation (SPIFFE JWT-SVID spec): every forgery refused with its own reason."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.dev.devca import DevCA
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens import (
    ALLOWED_ALGORITHMS,
    MAX_TOKEN_BYTES,
    JwtBundles,
    JwtSvidRules,
    TokenError,
    UnknownKid,
    VerifiedToken,
    check_peer,
    validate_jwt_svid,
)
from tests.tokens.jwtkit import (
    NOW,
    b64,
    b64json,
    ec_key,
    hs256_with_public_key,
    jwks,
    key_for_alg,
    public_jwk,
    raw_token,
    rsa_key,
    sign,
    sign_raw,
    tamper_payload,
)

TD = "example.org"
FED = "federated.test"
ME = "spiffe://example.org/ns/mcp/sa/math"
AGENT = "spiffe://example.org/ns/agents/sa/agent"
FED_AGENT = "spiffe://federated.test/ns/agents/sa/agent"
RULES = JwtSvidRules(audiences=(ME,), leeway=30.0)


@pytest.fixture(scope="module")
def fed_ca() -> DevCA:
    return DevCA.generate(FED, jwt_alg="RS256")


@pytest.fixture(scope="module")
def bundles(ca: DevCA, fed_ca: DevCA) -> JwtBundles:
    """Both bundles, keyed the way the Workload API streams them."""
    return JwtBundles.from_jwks(
        {
            ca.trust_domain_id: json.loads(ca.jwt_bundle_json()),
            fed_ca.trust_domain_id: json.loads(fed_ca.jwt_bundle_json()),
        }
    )


# A bundle of hand-made keys for tokens signed with every algorithm.
OWN = {alg: f"kid-{alg}" for alg in ALLOWED_ALGORITHMS}


@pytest.fixture(scope="module")
def own_bundles() -> JwtBundles:
    keys = [public_jwk(key_for_alg(alg), kid) for alg, kid in OWN.items()]
    keys.append(public_jwk(ec_key("P-384"), "p384"))
    keys.append(public_jwk(rsa_key(), "rs256-only", alg="RS256"))
    return JwtBundles.from_jwks({TD: jwks(*keys)})


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": AGENT, "aud": [ME], "exp": NOW + 300, "iat": NOW - 10}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def own_token(alg: str = "ES256", **overrides: Any) -> str:
    return sign(claims(**overrides), key_for_alg(alg), alg=alg, kid=OWN[alg])


def reason_of(token: str, bundles: JwtBundles, rules: JwtSvidRules = RULES) -> str:
    with pytest.raises(TokenError) as info:
        validate_jwt_svid(token, bundles, rules, now=NOW)
    exc = info.value
    assert exc.layer == "jwt_svid"
    assert exc.status == 401
    assert not token or token not in exc.message
    return exc.reason


# ------------------------------------------------------------------------------------ valid tokens


def test_dev_ca_jwt_svid_is_accepted(ca: DevCA, bundles: JwtBundles) -> None:
    token = ca.issue_jwt_svid(SpiffeId.parse(AGENT), [ME, "other"], dt.timedelta(minutes=5))
    verified = validate_jwt_svid(token, bundles, RULES)
    assert isinstance(verified, VerifiedToken)
    assert verified.layer == "jwt_svid"
    assert verified.subject == AGENT
    assert verified.audience == (ME, "other")
    assert verified.issuer is None
    assert verified.scopes == frozenset()
    assert verified.expires_at.tzinfo is dt.UTC
    assert verified.claims["sub"] == AGENT
    assert verified.cnf_x5t_s256 is None


def test_federated_rsa_jwt_svid_is_accepted(fed_ca: DevCA, bundles: JwtBundles) -> None:
    token = fed_ca.issue_jwt_svid(SpiffeId.parse(FED_AGENT), [ME], dt.timedelta(minutes=5))
    assert validate_jwt_svid(token, bundles, RULES).subject == FED_AGENT


@pytest.mark.parametrize("alg", ALLOWED_ALGORITHMS)
def test_every_allowed_algorithm(alg: str, own_bundles: JwtBundles) -> None:
    verified = validate_jwt_svid(own_token(alg), own_bundles, RULES, now=NOW)
    assert verified.expires_at == dt.datetime.fromtimestamp(NOW + 300, dt.UTC)


def test_bundle_keyed_by_bare_trust_domain_name(ca: DevCA) -> None:
    bundles = JwtBundles.from_jwks({TD: json.loads(ca.jwt_bundle_json())})
    token = ca.issue_jwt_svid(SpiffeId.parse(AGENT), [ME], dt.timedelta(minutes=5))
    assert validate_jwt_svid(token, bundles, RULES).subject == AGENT


@pytest.mark.parametrize("typ", ["JWT", "JOSE", "jwt", "application/jwt", None])
def test_typ_jwt_or_jose_or_absent(typ: str | None, own_bundles: JwtBundles) -> None:
    token = sign(claims(), ec_key(), kid=OWN["ES256"], typ=typ)
    assert validate_jwt_svid(token, own_bundles, RULES, now=NOW).subject == AGENT


def test_aud_as_a_string_and_any_configured_audience(own_bundles: JwtBundles) -> None:
    rules = JwtSvidRules(audiences=("a", ME))
    assert validate_jwt_svid(own_token(aud=ME), own_bundles, rules, now=NOW).audience == (ME,)


def test_leeway_tolerates_small_skew(own_bundles: JwtBundles) -> None:
    token = own_token(exp=NOW - 20, nbf=NOW + 20, iat=NOW + 20)
    validate_jwt_svid(token, own_bundles, RULES, now=NOW)
    strict = JwtSvidRules(audiences=(ME,), leeway=0)
    assert reason_of(token, own_bundles, strict) == "expired"


# ------------------------------------------------------------------------------------ forgeries


def test_alg_none(own_bundles: JwtBundles) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": OWN["ES256"]}
    assert reason_of(f"{b64json(header)}.{b64json(claims())}.", own_bundles) == "bad_algorithm"
    header["alg"] = "None"
    assert reason_of(f"{b64json(header)}.{b64json(claims())}.", own_bundles) == "bad_algorithm"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "EdDSA", "ES256K", "RSA-OAEP", "", None, 7])
def test_algorithms_outside_the_allowlist(alg: object, own_bundles: JwtBundles) -> None:
    header = {"alg": alg, "kid": OWN["RS256"]}
    assert reason_of(raw_token(header, claims()), own_bundles) == "bad_algorithm"


def test_alg_header_missing(own_bundles: JwtBundles) -> None:
    assert reason_of(raw_token({"kid": OWN["RS256"]}, claims()), own_bundles) == "bad_algorithm"


def test_hs256_signed_with_the_public_key_pem(own_bundles: JwtBundles) -> None:
    """Key confusion: an RSA public key used as an HMAC secret must never verify anything."""
    header = {"alg": "HS256", "typ": "JWT", "kid": OWN["RS256"]}
    token = hs256_with_public_key(header, claims(), key_for_alg("RS256"))
    assert reason_of(token, own_bundles) == "bad_algorithm"
    # Even with HS256 wrongly "configured", the rules refuse to be built.
    with pytest.raises(ValueError, match="HS256"):
        JwtSvidRules(audiences=(ME,), algorithms=("HS256",))


def test_alg_not_in_configured_subset(own_bundles: JwtBundles) -> None:
    rules = JwtSvidRules(audiences=(ME,), algorithms=("RS256",))
    assert reason_of(own_token("ES256"), own_bundles, rules) == "bad_algorithm"
    validate_jwt_svid(own_token("RS256"), own_bundles, rules, now=NOW)


def test_unknown_kid(own_bundles: JwtBundles) -> None:
    token = sign(claims(), ec_key(), kid="no-such-kid")
    with pytest.raises(UnknownKid) as info:
        validate_jwt_svid(token, own_bundles, RULES, now=NOW)
    assert info.value.reason == "unknown_kid"


@pytest.mark.parametrize("kid", [None, "", 42, ["k"]])
def test_kid_missing_or_not_a_string(kid: object, own_bundles: JwtBundles) -> None:
    header: dict[str, Any] = {"alg": "ES256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    assert reason_of(raw_token(header, claims()), own_bundles) == "missing_kid"
    if kid is None:
        token = sign(claims(), ec_key(), kid=None)
        assert reason_of(token, own_bundles) == "missing_kid"


def test_missing_audience(own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(aud=None), own_bundles) == "missing_audience"
    assert reason_of(own_token(aud=[]), own_bundles) == "missing_audience"


def test_wrong_audience(own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(aud=["spiffe://example.org/other"]), own_bundles) == (
        "wrong_audience"
    )


@pytest.mark.parametrize("aud", [7, [ME, 7], {"a": ME}, True])
def test_audience_of_the_wrong_shape(aud: object, own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(aud=aud), own_bundles) == "malformed_claim"


def test_expired(own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(exp=NOW - 31), own_bundles) == "expired"


def test_missing_exp(own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(exp=None), own_bundles) == "missing_exp"


@pytest.mark.parametrize("exp", ["1800000300", True, [1], 1e300, -5])
def test_exp_of_the_wrong_shape(exp: object, own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(exp=exp), own_bundles) == "malformed_claim"


def test_nbf_in_the_future(own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(nbf=NOW + 60), own_bundles) == "not_yet_valid"


def test_iat_in_the_future(own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(iat=NOW + 60), own_bundles) == "not_yet_valid"


@pytest.mark.parametrize(
    "sub",
    [
        "agent",
        "https://example.org/ns/agents",
        "spiffe://example.org",  # a trust domain, not a workload
        "spiffe://Example.org/x",  # uppercase trust domain: invalid, not normalised
        "spiffe://example.org/a/../b",
        "",
        None,
        42,
    ],
)
def test_sub_not_a_workload_spiffe_id(sub: object, own_bundles: JwtBundles) -> None:
    assert reason_of(own_token(sub=sub), own_bundles) == "bad_subject"


def test_sub_of_a_trust_domain_without_bundle(own_bundles: JwtBundles) -> None:
    token = own_token(sub="spiffe://elsewhere.test/x")
    assert reason_of(token, own_bundles) == "unknown_trust_domain"


def test_sub_in_a_signed_by_b_key_is_refused(ca: DevCA, fed_ca: DevCA, bundles: JwtBundles) -> None:
    """Trust domain B (federated) mints a token for spiffe://example.org/...: B's kid is only in
    B's bundle, and the bundle is chosen by sub's trust domain, so it is unknown there."""
    forged = fed_ca.issue_jwt_svid(SpiffeId.parse(FED_AGENT), [ME], dt.timedelta(minutes=5))
    forged = tamper_payload(forged, sub=AGENT)
    with pytest.raises(UnknownKid):
        validate_jwt_svid(forged, bundles, RULES)
    # Properly minted by B (B's key, B's own kid) with A's subject:
    token = sign(
        {"sub": AGENT, "aud": [ME], "exp": NOW + 300},
        fed_ca._jwt_key,
        alg="RS256",
        kid=fed_ca.jwt_kid,
    )
    assert reason_of(token, bundles) == "unknown_kid"


def test_b_key_reusing_a_kid_of_a_fails_the_signature(
    ca: DevCA, fed_ca: DevCA, bundles: JwtBundles
) -> None:
    """B signs with its own key but claims A's kid: A's key does not verify it."""
    token = sign(
        {"sub": AGENT, "aud": [ME], "exp": NOW + 300}, fed_ca._jwt_key, alg="RS256", kid=ca.jwt_kid
    )
    # A's key is EC: an RS256 header cannot even be tried with it.
    assert reason_of(token, bundles) == "bad_algorithm"
    other_ec = ec_key(index=1)
    token = sign({"sub": AGENT, "aud": [ME], "exp": NOW + 300}, other_ec, kid=ca.jwt_kid)
    assert reason_of(token, bundles) == "bad_signature"


@pytest.mark.parametrize("typ", ["at+jwt", "JWS", "", 3, "application/jose+json"])
def test_typ_wrong(typ: object, own_bundles: JwtBundles) -> None:
    header = {"alg": "ES256", "kid": OWN["ES256"], "typ": typ}
    assert reason_of(raw_token(header, claims()), own_bundles) == "bad_typ"


def test_rsa_key_under_es256_header(own_bundles: JwtBundles) -> None:
    token = sign(claims(), ec_key(), alg="ES256", kid=OWN["RS256"])
    assert reason_of(token, own_bundles) == "bad_algorithm"


def test_ec_key_under_rs256_header(own_bundles: JwtBundles) -> None:
    token = sign(claims(), rsa_key(), alg="RS256", kid=OWN["ES256"])
    assert reason_of(token, own_bundles) == "bad_algorithm"


def test_p384_key_under_es256_header(own_bundles: JwtBundles) -> None:
    token = sign(claims(), ec_key(), alg="ES256", kid="p384")
    assert reason_of(token, own_bundles) == "bad_algorithm"


def test_jwk_alg_binds_the_key_to_one_algorithm(own_bundles: JwtBundles) -> None:
    validate_jwt_svid(
        sign(claims(), rsa_key(), alg="RS256", kid="rs256-only"), own_bundles, RULES, now=NOW
    )
    token = sign(claims(), rsa_key(), alg="PS256", kid="rs256-only")
    assert reason_of(token, own_bundles) == "bad_algorithm"


def test_tampered_payload(own_bundles: JwtBundles) -> None:
    token = tamper_payload(own_token(), sub="spiffe://example.org/ns/admin/sa/root")
    assert reason_of(token, own_bundles) == "bad_signature"
    token = tamper_payload(own_token("RS256"), exp=NOW + 10**6)
    assert reason_of(token, own_bundles) == "bad_signature"


def test_signature_by_another_key(own_bundles: JwtBundles) -> None:
    token = sign(claims(), ec_key(index=3), kid=OWN["ES256"])
    assert reason_of(token, own_bundles) == "bad_signature"


def test_signature_stripped_or_truncated(own_bundles: JwtBundles) -> None:
    token = own_token()
    head, _, _ = token.rpartition(".")
    assert reason_of(head + ".", own_bundles) == "bad_signature"
    assert reason_of(token[:-4], own_bundles) in {"bad_signature", "malformed_token"}


def test_critical_header_extensions_refused(own_bundles: JwtBundles) -> None:
    token = sign(claims(), ec_key(), kid=OWN["ES256"], crit=["exp"], exp=1)
    assert reason_of(token, own_bundles) == "unsupported_header"


# ------------------------------------------------------------------------------------ malformed

NOT_UTF8 = b64(bytes([0xFF, 0xFE]))


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d.e",
        "!!!.???.***",
        f"{b64json({'alg': 'ES256'})}.%%%.{b64(b'x')}",
        f"{b64json([1, 2])}.{b64json({})}.{b64(b'x')}",
        f"{b64json({'alg': 'ES256', 'kid': 'k'})}.{b64json('str')}.{b64(b'x')}",
        f"{b64(b'{not json')}.{b64json({})}.{b64(b'x')}",
        f"{NOT_UTF8}.{b64json({})}.{b64(b'x')}",
        f"{b64json({'alg': 'ES256'})}=.{b64json({})}.{b64(b'x')}",  # padding
        "ey\u00e9.b.c",
    ],
)
def test_malformed_tokens(token: str, own_bundles: JwtBundles) -> None:
    assert reason_of(token, own_bundles) == "malformed_token"


def test_duplicate_members_are_malformed(own_bundles: JwtBundles) -> None:
    header = b'{"alg":"ES256","kid":"x","alg":"none"}'
    token = f"{b64(header)}.{b64json(claims())}.{b64(b'x' * 64)}"
    assert reason_of(token, own_bundles) == "malformed_token"
    payload = b'{"sub":"spiffe://example.org/a","sub":"spiffe://example.org/b"}'
    token = f"{b64json({'alg': 'ES256', 'kid': OWN['ES256']})}.{b64(payload)}.{b64(b'x')}"
    assert reason_of(token, own_bundles) == "malformed_token"


def test_nan_and_infinity_are_not_json(own_bundles: JwtBundles) -> None:
    payload = b'{"sub":"spiffe://example.org/a","exp":Infinity}'
    token = f"{b64json({'alg': 'ES256', 'kid': OWN['ES256']})}.{b64(payload)}.{b64(b'x')}"
    assert reason_of(token, own_bundles) == "malformed_token"


def test_missing_and_oversized_tokens(own_bundles: JwtBundles) -> None:
    assert reason_of("", own_bundles) == "missing_token"
    with pytest.raises(TokenError) as info:
        validate_jwt_svid("", own_bundles, RULES)
    assert info.value.error is None  # RFC 6750 3.1: no error code without credentials
    huge = own_token(pad="x" * MAX_TOKEN_BYTES)
    assert reason_of(huge, own_bundles) == "token_too_large"


# ------------------------------------------------------------------------------------ bundles


def test_from_jwks_skips_unusable_keys_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    good = public_jwk(ec_key(), "good")
    private = {**public_jwk(ec_key(index=1), "private"), "d": "AAAA"}
    mapping: dict[str, Any] = {
        TD: jwks(
            public_jwk(ec_key(index=2), None),  # no kid
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            private,
            public_jwk(rsa_key(1024), "weak"),
            public_jwk(rsa_key(), "x509", use="x509-svid"),
            public_jwk(rsa_key(), "enc", use="enc"),
            public_jwk(rsa_key(), "hs-alg", alg="HS256"),
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": "ed",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            },
            {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "no-n"},
            "not an object",
            good,
        ),
        "spiffe://Bad.Domain": jwks(good),
        "spiffe://example.net/path": jwks(good),
        "no-keys.test": {"keys": "nope"},
        "other.test": {"not": "a jwks"},
    }
    with caplog.at_level(logging.INFO):
        bundles = JwtBundles.from_jwks(mapping)
    assert bundles.trust_domains == {TD}
    keys = bundles.get(TD)
    assert keys is not None and set(keys) == {"good"}
    assert bundles.get("other.test") is None
    assert len(bundles) == 1
    assert "c2VjcmV0" not in caplog.text and "AAAA" not in caplog.text


def test_a_kid_naming_two_keys_is_dropped() -> None:
    a, b = public_jwk(ec_key(), "dup"), public_jwk(ec_key(index=1), "dup")
    bundles = JwtBundles.from_jwks({TD: jwks(a, b, public_jwk(rsa_key(), "r"))})
    keys = bundles.get(TD)
    assert keys is not None and set(keys) == {"r"}
    same = JwtBundles.from_jwks({TD: jwks(a, dict(a))}).get(TD)
    assert same is not None and set(same) == {"dup"}


def test_symmetric_key_is_never_used_even_with_its_kid() -> None:
    bundles = JwtBundles.from_jwks({TD: jwks({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"})})
    token = sign(claims(), b"secret" * 6, alg="HS256", kid="hmac")
    assert reason_of(token, bundles) == "bad_algorithm"
    token = raw_token({"alg": "ES256", "kid": "hmac"}, claims())
    assert reason_of(token, bundles) == "unknown_kid"


def test_rules_validation() -> None:
    with pytest.raises(ValueError, match="audience"):
        JwtSvidRules(audiences=())
    with pytest.raises(ValueError, match="none"):
        JwtSvidRules(audiences=(ME,), algorithms=("none",))
    with pytest.raises(ValueError, match="at least one"):
        JwtSvidRules(audiences=(ME,), algorithms=())
    with pytest.raises(ValueError, match="leeway"):
        JwtSvidRules(audiences=(ME,), leeway=-1)


# ------------------------------------------------------------------------------------ peer binding


def test_check_peer(own_bundles: JwtBundles) -> None:
    verified = validate_jwt_svid(own_token(), own_bundles, RULES, now=NOW)
    check_peer(verified, SpiffeId.parse(AGENT))
    for peer in (SpiffeId.parse("spiffe://example.org/ns/agents/sa/other"), None):
        with pytest.raises(TokenError) as info:
            check_peer(verified, peer)
        assert info.value.reason == "peer_mismatch"


# ------------------------------------------------------------------------------------ properties

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
claim_names = st.sampled_from(["sub", "aud", "exp", "nbf", "iat", "iss", "alg", "kid", "typ"])
json_objects = st.dictionaries(claim_names | st.text(max_size=6), json_values, max_size=8)


TOKENISH = r"[A-Za-z0-9_\-]{0,40}(\.[A-Za-z0-9_\-]{0,40}){0,4}"


def _only_token_errors(token: str, bundles: JwtBundles) -> None:
    try:
        result = validate_jwt_svid(token, bundles, RULES, now=NOW)
    except TokenError as exc:
        assert exc.reason and exc.reason.replace("_", "").isalpha()
    else:
        assert isinstance(result, VerifiedToken)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300) | st.from_regex(TOKENISH, fullmatch=True))
def test_arbitrary_strings_raise_only_token_errors(text: str, own_bundles: JwtBundles) -> None:
    _only_token_errors(text, own_bundles)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=json_objects, payload=json_objects, signature=st.binary(max_size=80))
def test_arbitrary_header_and_payload_raise_only_token_errors(
    header: dict[str, Any], payload: dict[str, Any], signature: bytes, own_bundles: JwtBundles
) -> None:
    _only_token_errors(raw_token(header, payload, signature), own_bundles)
    header = {**header, "alg": "ES256", "kid": OWN["ES256"]}
    payload = {**payload, "sub": AGENT}
    _only_token_errors(raw_token(header, payload, signature), own_bundles)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=json_objects, typ=st.sampled_from(["JWT", None]))
def test_arbitrary_payloads_properly_signed_raise_only_token_errors(
    payload: dict[str, Any], typ: str | None, own_bundles: JwtBundles
) -> None:
    for extra in ({}, {"sub": AGENT}, {"sub": AGENT, "aud": ME, "exp": NOW + 60}):
        header = {"alg": "ES256", "kid": OWN["ES256"]} | ({"typ": typ} if typ else {})
        token = sign_raw(header, {**payload, **extra}, ec_key())
        _only_token_errors(token, own_bundles)
