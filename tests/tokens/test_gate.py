"""TokenGate: the verified-token cache never outlives the token or its bundle."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.dev.devca import DevCA
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.errors import TokenError
from sidecar.tokens.gate import TokenGate

AGENT = SpiffeId.parse("spiffe://example.org/ns/agents/sa/agent")
SERVER = "spiffe://example.org/ns/mcp/sa/math"


async def _fetch(url: str) -> Any:
    raise AssertionError("no fetching expected")


def gate_for(bundles: list[dict[str, Any]]) -> TokenGate:
    config = parse_config(
        {
            "trust_domain": "example.org",
            "inbound": {
                "listen": "127.0.0.1:0",
                "upstream": "http://127.0.0.1:8000",
                "allow_spiffe_ids": ["spiffe://example.org/ns/agents/**"],
                "jwt_svid": {"audiences": [SERVER]},
            },
        }
    )
    assert config.inbound is not None
    return TokenGate(config.inbound, lambda: bundles[0], _fetch)


def jwks(ca: DevCA) -> dict[str, Any]:
    return {"example.org": json.loads(ca.jwt_bundle_json())}


async def test_a_token_is_verified_once_and_forgotten_when_bundles_change() -> None:
    ca = DevCA.generate("example.org")
    bundles = [jwks(ca)]
    gate = gate_for(bundles)
    token = ca.issue_jwt_svid(AGENT, [SERVER], dt.timedelta(minutes=5))
    header = [f"Bearer {token}"]
    first = await gate.authenticate(header, AGENT, None)
    again = await gate.authenticate(header, AGENT, None)
    assert again.token is first.token  # served from the cache
    # Binding to the peer is still checked per request, cache or not.
    with pytest.raises(TokenError) as err:
        await gate.authenticate(header, SpiffeId.parse("spiffe://example.org/ns/x/sa/y"), None)
    assert err.value.reason == "peer_mismatch"
    # A bundle update that drops the signing key: the cached verdict must not survive it.
    bundles[0] = jwks(DevCA.generate("example.org"))
    with pytest.raises(TokenError) as err:
        await gate.authenticate(header, AGENT, None)
    assert err.value.reason == "unknown_kid"


# -- delegated OAuth tokens (RFC 8693) bound to the mTLS peer -------------------------------

ISSUER = "https://sts.example.com"
RESOURCE = "https://mcp.example.com/mcp"
OTHER_AGENT = SpiffeId.parse("spiffe://example.org/ns/agents/sa/other")


def oauth_gate(**oauth: Any) -> TokenGate:
    from tests.tokens.jwtkit import ec_key, public_jwk

    config = parse_config(
        {
            "trust_domain": "example.org",
            "inbound": {
                "listen": "127.0.0.1:0",
                "upstream": "http://127.0.0.1:8000",
                "allow_spiffe_ids": ["spiffe://example.org/ns/agents/**"],
                "oauth": {
                    "issuer": ISSUER,
                    "audience": RESOURCE,
                    "jwks": {"keys": [public_jwk(ec_key(index=40), "sts")]},
                    **oauth,
                },
            },
        }
    )
    assert config.inbound is not None
    return TokenGate(config.inbound, dict, _fetch)


def delegated_token(**claims: Any) -> str:
    import time

    from tests.tokens.jwtkit import ec_key, sign

    now = int(time.time())
    body = {"iss": ISSUER, "aud": RESOURCE, "sub": "bob", "exp": now + 300, **claims}
    return sign(body, ec_key(index=40), kid="sts", typ="at+jwt")


async def test_a_delegated_token_is_only_good_from_its_current_actor() -> None:
    gate = oauth_gate()
    header = [f"Bearer {delegated_token(act={'sub': str(AGENT)})}"]
    principal = await gate.authenticate(header, AGENT, None)
    assert principal.sub == "bob" and principal.actor == str(AGENT)
    with pytest.raises(TokenError) as err:  # replayed by another (allowlisted) workload
        await gate.authenticate(header, OTHER_AGENT, None)
    assert err.value.reason == "actor_mismatch" and err.value.status == 401
    # a prior actor is not the current one
    chained = [
        f"Bearer {delegated_token(act={'sub': str(OTHER_AGENT), 'act': {'sub': str(AGENT)}})}"
    ]
    with pytest.raises(TokenError) as err:
        await gate.authenticate(chained, AGENT, None)
    assert err.value.reason == "actor_mismatch"
    # an undelegated token (a console relaying its user's token) is not concerned
    plain = await gate.authenticate([f"Bearer {delegated_token()}"], OTHER_AGENT, None)
    assert plain.sub == "bob" and plain.actor is None


async def test_actor_binding_can_be_turned_off() -> None:
    gate = oauth_gate(bind_actor_to_peer=False)
    header = [f"Bearer {delegated_token(act={'sub': str(AGENT)})}"]
    principal = await gate.authenticate(header, OTHER_AGENT, None)
    assert principal.actor == str(AGENT)
