"""The demo's stand-in for an OAuth authorization server: one EC key whose public half goes in
the gateway's ``oauth.jwks`` (inline, so nothing is fetched), and access tokens for a user and an
admin, signed with it. Only for the demo: a real gateway trusts a real issuer."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISSUER: Final = "https://issuer.demo.invalid"
SCOPE: Final = "mcp:tools"
KEY_ID: Final = "demo-1"


@dataclass
class DemoIssuer:
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    def jwks(self) -> dict[str, Any]:
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": KEY_ID, "use": "sig", "alg": "ES256"}]}

    def token(self, sub: str, roles: list[str], audience: str, ttl: int = 600) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": sub,
            "aud": audience,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "scope": SCOPE,
            "roles": roles,
        }
        return jwt.encode(
            claims, self.key, algorithm="ES256", headers={"kid": KEY_ID, "typ": "at+jwt"}
        )
