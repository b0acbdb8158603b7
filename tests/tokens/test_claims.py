"""VerifiedToken / Principal, claim shapes, and RFC 8705 certificate binding (cnf)."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from types import MappingProxyType
from typing import Any

import pytest

from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens import Principal, TokenError, VerifiedToken, cert_thumbprint, check_cnf
from sidecar.tokens.claims import MAX_ACTORS, claim_strings, delegation_chain, freeze, parse_scopes

CERT_DER = b"0\x82\x01\x00 pretend this is a certificate"
CERT_HEX = hashlib.sha256(CERT_DER).hexdigest()
THUMB = base64.urlsafe_b64encode(hashlib.sha256(CERT_DER).digest()).rstrip(b"=").decode()
EXP = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def verified(cnf: str | None = None, **kwargs: Any) -> VerifiedToken:
    return VerifiedToken(
        layer="oauth",
        subject="user-1",
        issuer="https://auth.example.com",
        audience=("https://mcp.example.com/mcp",),
        expires_at=EXP,
        cnf_x5t_s256=cnf,
        **kwargs,
    )


# ------------------------------------------------------------------------------------ cnf


def test_cert_thumbprint_is_base64url_sha256_without_padding() -> None:
    assert cert_thumbprint(CERT_HEX) == THUMB
    assert cert_thumbprint(CERT_HEX.upper()) == THUMB
    assert "=" not in THUMB and len(THUMB) == 43
    for bad in ("", "zz" * 32, CERT_HEX[:-2], CERT_HEX + "00"):
        with pytest.raises(ValueError):
            cert_thumbprint(bad)


def test_cnf_match() -> None:
    check_cnf(verified(THUMB), CERT_HEX, required=True)
    check_cnf(verified(THUMB), CERT_HEX, required=False)


def test_cnf_mismatch() -> None:
    other = hashlib.sha256(b"another cert").hexdigest()
    with pytest.raises(TokenError) as info:
        check_cnf(verified(THUMB), other, required=False)
    assert info.value.reason == "cnf_mismatch" and info.value.status == 401
    assert info.value.layer == "oauth"
    with pytest.raises(TokenError) as info:
        check_cnf(verified(THUMB + "="), CERT_HEX, required=False)  # padded: not the same value
    assert info.value.reason == "cnf_mismatch"
    with pytest.raises(TokenError) as info:
        check_cnf(verified("é" * 43), CERT_HEX, required=False)
    assert info.value.reason == "cnf_mismatch"


def test_cnf_missing_but_required() -> None:
    with pytest.raises(TokenError) as info:
        check_cnf(verified(None), CERT_HEX, required=True)
    assert info.value.reason == "cnf_missing"
    check_cnf(verified(None), CERT_HEX, required=False)
    check_cnf(verified(None), None, required=False)


def test_bound_token_without_client_certificate() -> None:
    for required in (True, False):
        with pytest.raises(TokenError) as info:
            check_cnf(verified(THUMB), None, required=required)
        assert info.value.reason == "cnf_mismatch"


# ------------------------------------------------------------------------------------ shapes


def test_claims_are_deeply_read_only() -> None:
    frozen = freeze({"a": {"b": [1, {"c": 2}]}, "d": "e"})
    token = verified(claims=frozen)
    assert isinstance(token.claims, MappingProxyType)
    assert token.claims["a"]["b"] == (1, MappingProxyType({"c": 2}))
    with pytest.raises(TypeError):
        token.claims["x"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        token.claims["a"]["b"][1]["c"] = 3
    with pytest.raises(AttributeError):
        token.subject = "root"  # type: ignore[misc]


def test_parse_scopes() -> None:
    assert parse_scopes({}, "oauth") == frozenset()
    assert parse_scopes({"scope": "a  b c"}, "oauth") == {"a", "b", "c"}
    assert parse_scopes({"scp": ["a", "b"]}, "oauth") == {"a", "b"}
    assert parse_scopes({"scp": "x y"}, "oauth") == {"x", "y"}
    assert parse_scopes({"scope": "a", "scp": ["b"]}, "oauth") == {"a", "b"}
    for bad in ({"scope": 1}, {"scp": [1]}, {"scope": 'a"b'}, {"scp": ["a\\b"]}, {"scp": [""]}):
        with pytest.raises(TokenError) as info:
            parse_scopes(bad, "oauth")
        assert info.value.reason == "malformed_claim"


def test_claim_strings() -> None:
    claims = {"roles": "r", "groups": ["g1", "g2"], "ra": {"roles": ["x"]}, "a.b": ["dotted"]}
    assert claim_strings(claims, "roles", "oauth") == ("r",)
    assert claim_strings(claims, "groups", "oauth") == ("g1", "g2")
    assert claim_strings(claims, "ra.roles", "oauth") == ("x",)
    assert claim_strings(claims, "a.b", "oauth") == ("dotted",)  # a top-level name wins
    assert claim_strings(claims, "missing", "oauth") == ()
    assert claim_strings(claims, "ra.nope.deeper", "oauth") == ()
    assert claim_strings(claims, "", "oauth") == ()
    with pytest.raises(TokenError):
        claim_strings({"roles": {"a": 1}}, "roles", "oauth")


# ------------------------------------------------------------------------------------ principal


def test_principal_with_spiffe_id_and_token() -> None:
    token = verified(
        scopes=frozenset({"b", "a"}),
        roles=("admin",),
        groups=("ops",),
        claims=freeze({"secret-ish": "value"}),
    )
    principal = Principal(spiffe_id=SpiffeId.parse("spiffe://example.org/ns/a/sa/b"), token=token)
    assert principal.sub == "user-1"
    assert principal.scopes == {"a", "b"}
    assert principal.roles == ("admin",) and principal.groups == ("ops",)
    assert principal.to_log() == {
        "spiffe_id": "spiffe://example.org/ns/a/sa/b",
        "token_layer": "oauth",
        "sub": "user-1",
        "actor": None,
        "actor_chain": [],
        "scopes": ["a", "b"],
        "roles": ["admin"],
        "groups": ["ops"],
    }


def test_principal_without_token_or_identity() -> None:
    anonymous = Principal()
    assert anonymous.sub is None and anonymous.scopes == frozenset()
    assert anonymous.to_log() == {
        "spiffe_id": None,
        "token_layer": None,
        "sub": None,
        "actor": None,
        "actor_chain": [],
        "scopes": [],
        "roles": [],
        "groups": [],
    }
    mtls_only = Principal(spiffe_id=SpiffeId.parse("spiffe://example.org/x"))
    assert mtls_only.sub is None and mtls_only.to_log()["spiffe_id"] == "spiffe://example.org/x"


# ------------------------------------------------------------------------- delegation (RFC 8693)

AGENT = "spiffe://example.org/ns/agents/sa/agent"
PLANNER = "spiffe://example.org/ns/agents/sa/planner"


def test_delegation_chain_current_actor_first() -> None:
    """RFC 8693 sec. 4.1: the outermost act is the current actor, nested ones prior actors."""
    claims = {"sub": "bob", "act": {"sub": AGENT, "act": {"sub": PLANNER}}}
    assert delegation_chain(claims, "oauth") == (AGENT, PLANNER)
    assert delegation_chain({"sub": "bob"}, "oauth") == ()
    principal = Principal(token=verified(actors=(AGENT, PLANNER)))
    assert principal.sub == "user-1" and principal.actor == AGENT
    assert principal.actors == (AGENT, PLANNER)
    log = principal.to_log()
    assert log["sub"] == "user-1" and log["actor"] == AGENT
    assert log["actor_chain"] == [AGENT, PLANNER]


@pytest.mark.parametrize(
    "act",
    [
        "spiffe://example.org/ns/agents/sa/agent",  # a string, not an object
        {"iss": "https://sts.example.com"},  # no sub: the actor cannot be named
        {"sub": ""},
        {"sub": 7},
        {"sub": AGENT, "act": ["nested", "list"]},  # a malformed prior actor
        {"sub": AGENT, "act": {"client_id": "x"}},
    ],
)
def test_malformed_act_refuses_the_token(act: object) -> None:
    with pytest.raises(TokenError) as info:
        delegation_chain({"sub": "bob", "act": act}, "oauth")
    assert info.value.reason == "malformed_claim"


def test_delegation_chain_is_bounded() -> None:
    node: dict[str, Any] = {"sub": "actor-0"}
    for index in range(1, MAX_ACTORS + 1):
        node = {"sub": f"actor-{index}", "act": node}
    with pytest.raises(TokenError, match="longer than"):
        delegation_chain({"sub": "bob", "act": node}, "oauth")
    assert len(delegation_chain({"sub": "bob", "act": node["act"]}, "oauth")) == MAX_ACTORS
