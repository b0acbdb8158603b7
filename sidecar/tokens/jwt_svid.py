"""JWT-SVID validation (SPIFFE JWT-SVID spec, sections 2-4 and 7).

The bundle that verifies a token is chosen by the trust domain of the token's ``sub``: a key of
federated trust domain B never vouches for ``spiffe://A/...``, even when B's bundle is loaded too
(py-spiffe's ``parse_and_validate`` does not check this). Order of checks, cheapest and key-free
first: size and shape -> ``alg`` (asymmetric allowlist) -> ``typ`` -> ``kid`` -> ``sub``
(unverified, only to pick the bundle) -> key lookup -> key/alg match -> signature -> ``aud`` ->
``exp``/``nbf``/``iat``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import jwt

from sidecar.spiffe.ids import SpiffeId, SpiffeIdError, trust_domain_from_bundle_key
from sidecar.tokens.claims import VerifiedToken, freeze
from sidecar.tokens.errors import TokenError, TokenLayer, UnknownKid
from sidecar.tokens.jose import (
    ALLOWED_ALGORITHMS,
    audiences,
    check_algorithms,
    check_header,
    check_leeway,
    check_times,
    load_jwks,
    parse_token,
    verified_claims,
    verify_signature,
)

__all__ = ["JwtBundles", "JwtSvidRules", "check_peer", "validate_jwt_svid"]

log = logging.getLogger(__name__)

LAYER: Final[TokenLayer] = "jwt_svid"
JWT_SVID_TYPS = ("JWT", "JOSE")


@dataclass(frozen=True, slots=True)
class JwtSvidRules:
    """What a JWT-SVID must satisfy here (mapped from ``inbound.jwt_svid``)."""

    audiences: tuple[str, ...]
    """``aud`` must contain at least one of these (usually our own SPIFFE ID)."""
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    """Accepted ``alg`` values: a non-empty subset of ``ALLOWED_ALGORITHMS``."""
    leeway: float = 30.0
    """Clock skew tolerated on ``exp``/``nbf``/``iat`` (seconds)."""

    def __post_init__(self) -> None:
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ValueError("JwtSvidRules.audiences: at least one non-empty audience")
        object.__setattr__(self, "audiences", tuple(self.audiences))
        object.__setattr__(
            self, "algorithms", check_algorithms(self.algorithms, "JwtSvidRules.algorithms")
        )
        object.__setattr__(self, "leeway", check_leeway(self.leeway, "JwtSvidRules"))


class JwtBundles:
    """JWT authorities per trust domain: trust domain name -> ``kid`` -> key. Immutable."""

    def __init__(self, bundles: Mapping[str, Mapping[str, jwt.PyJWK]] | None = None) -> None:
        self._bundles: Mapping[str, Mapping[str, jwt.PyJWK]] = MappingProxyType(
            {td: MappingProxyType(dict(keys)) for td, keys in (bundles or {}).items()}
        )

    @classmethod
    def from_jwks(cls, mapping: Mapping[str, Mapping[str, Any]]) -> JwtBundles:
        """From trust domain (``example.org`` or ``spiffe://example.org``) -> JWKS, as streamed by
        the Workload API. Unusable keys (no ``kid``, symmetric, private, unsupported type, weak)
        and unusable bundles are skipped and logged; this never raises on bad input."""
        bundles: dict[str, dict[str, jwt.PyJWK]] = {}
        for name, jwks in mapping.items():
            try:
                trust_domain = trust_domain_from_bundle_key(name)
            except SpiffeIdError as exc:
                log.warning("skipping JWT bundle %r: %s", name, exc.message)
                continue
            try:
                keys = load_jwks(jwks, source=f"JWT bundle of {trust_domain}")
            except ValueError as exc:
                log.warning("skipping JWT bundle: %s", exc)
                continue
            bundles.setdefault(trust_domain, {}).update(keys)
        return cls(bundles)

    def get(self, trust_domain: str) -> Mapping[str, jwt.PyJWK] | None:
        """The keys of ``trust_domain`` (``kid`` -> key), or None if we have no bundle for it."""
        return self._bundles.get(trust_domain)

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)

    def __repr__(self) -> str:
        counts = ", ".join(f"{td}: {len(keys)}" for td, keys in sorted(self._bundles.items()))
        return f"JwtBundles({{{counts}}})"


def validate_jwt_svid(
    token: str, bundles: JwtBundles, rules: JwtSvidRules, *, now: float | None = None
) -> VerifiedToken:
    """Validate a JWT-SVID; return it verified or raise ``TokenError`` (``UnknownKid`` for a
    ``kid`` that is not in the bundle of ``sub``'s trust domain). ``now``: Unix time."""
    parsed = parse_token(token, LAYER)
    alg, kid = check_header(
        parsed.header,
        algorithms=rules.algorithms,
        typs=JWT_SVID_TYPS,
        typ_required=False,
        layer=LAYER,
    )
    # Unverified: used only to choose the bundle; the signature check below makes it binding.
    subject = _subject(parsed.payload.get("sub"))
    keys = bundles.get(subject.trust_domain)
    if keys is None:
        raise TokenError(
            "no JWT bundle for the trust domain of the token subject",
            reason="unknown_trust_domain",
            layer=LAYER,
        )
    key = keys.get(kid)
    if key is None:
        raise UnknownKid(
            "token 'kid' is not in the JWT bundle of the subject's trust domain", layer=LAYER
        )
    claims = verified_claims(verify_signature(token, key, alg, LAYER), LAYER)
    if claims != parsed.payload:  # cannot happen (same bytes), but never trust the unverified copy
        raise TokenError("token payload is inconsistent", reason="malformed_token", layer=LAYER)
    verified_subject = _subject(claims.get("sub"))
    aud = audiences(claims, LAYER)
    if not set(aud) & set(rules.audiences):
        raise TokenError(
            "token audience does not include this service", reason="wrong_audience", layer=LAYER
        )
    exp = check_times(
        claims, now=time.time() if now is None else now, leeway=rules.leeway, layer=LAYER
    )
    issuer = claims.get("iss")
    return VerifiedToken(
        layer=LAYER,
        subject=str(verified_subject),
        issuer=issuer if isinstance(issuer, str) else None,
        audience=aud,
        expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
        claims=freeze(claims),
    )


def check_peer(token: VerifiedToken, peer: SpiffeId | None) -> None:
    """``bind_to_peer``: the JWT-SVID's ``sub`` must be the mTLS peer's SPIFFE ID, so a token
    stolen from one workload cannot be replayed over another workload's connection."""
    if peer is None or token.subject != str(peer):
        raise TokenError(
            "token subject is not the mTLS peer's SPIFFE ID", reason="peer_mismatch", layer=LAYER
        )


def _subject(value: object) -> SpiffeId:
    if not isinstance(value, str):
        raise TokenError(
            "token has no 'sub' claim (a SPIFFE ID)", reason="bad_subject", layer=LAYER
        )
    try:
        return SpiffeId.parse_workload(value)
    except SpiffeIdError:
        raise TokenError(
            "token 'sub' is not a workload SPIFFE ID", reason="bad_subject", layer=LAYER
        ) from None
