"""Building tokens and keys for the token-layer tests (pyjwt + cryptography, no I/O)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
NOW = 1_800_000_000.0  # a fixed "now" (Unix time) for every claim check


def ec_key(curve: str = "P-256", index: int = 0) -> ec.EllipticCurvePrivateKey:
    """The same key for the same (curve, index), however the arguments are spelled."""
    return _ec_key(curve, index)


def rsa_key(bits: int = 2048, index: int = 0) -> rsa.RSAPrivateKey:
    return _rsa_key(bits, index)


@functools.cache
def _ec_key(curve: str, index: int) -> ec.EllipticCurvePrivateKey:
    del index  # part of the cache key: distinct keys of the same kind
    curves: dict[str, ec.EllipticCurve] = {
        "P-256": ec.SECP256R1(),
        "P-384": ec.SECP384R1(),
        "P-521": ec.SECP521R1(),
    }
    return ec.generate_private_key(curves[curve])


@functools.cache
def _rsa_key(bits: int, index: int) -> rsa.RSAPrivateKey:
    del index
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_for_alg(alg: str, index: int = 0) -> PrivateKey:
    if alg.startswith("ES"):
        return ec_key({"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg], index)
    return rsa_key(2048, index)


def public_jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(pub, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(extra)
    return jwk


def jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": list(keys)}


def sign(
    claims: dict[str, Any],
    key: PrivateKey | bytes,
    *,
    alg: str = "ES256",
    kid: str | None = "k1",
    typ: str | None = "JWT",
    **headers: Any,
) -> str:
    """A token signed by pyjwt with ``key`` (bytes: an HMAC secret); ``kid``/``typ`` None means
    the header has no such member."""
    header: dict[str, Any] = dict(headers)
    if kid is not None:
        header["kid"] = kid
    header["typ"] = typ  # pyjwt drops typ when it is None
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def raw_token(header: Any, payload: Any, signature: bytes = b"\x00" * 64) -> str:
    """A token assembled by hand: any header/payload JSON, any signature bytes."""
    return f"{b64json(header)}.{b64json(payload)}.{b64(signature)}"


def sign_raw(header: Any, payload: Any, key: PrivateKey, alg: str = "ES256") -> str:
    """Sign any header/payload JSON (pyjwt's ``encode`` refuses some payloads, e.g. ``iss: 1``)."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    signature = jwt.get_algorithm_by_name(alg).sign(signing_input.encode(), key)
    return f"{signing_input}.{b64(signature)}"


def hs256_with_public_key(header: dict[str, Any], payload: dict[str, Any], key: PrivateKey) -> str:
    """The classic key-confusion forgery: HMAC-SHA256 keyed with the verifier's public key PEM."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tamper_payload(token: str, **changes: Any) -> str:
    """The same header and signature over a modified payload."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64json(claims)}.{signature}"
