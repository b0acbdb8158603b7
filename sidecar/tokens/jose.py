"""The JOSE core shared by the JWT-SVID and OAuth validators: strict compact-JWS parsing, JWKS
loading, algorithm/key matching and signature verification (through pyjwt), time claims.

We parse the token ourselves (strict base64url, JSON objects without duplicate members, no
``NaN``/``Infinity``) so that every failure has a specific reason and nothing from pyjwt escapes;
pyjwt only verifies the signature, with exactly one algorithm and exactly one key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import InvalidKeyError, InvalidSignatureError, PyJWTError

from sidecar.compat import jwk_as_given
from sidecar.tokens.errors import TokenError, TokenLayer

log = logging.getLogger(__name__)

ALLOWED_ALGORITHMS: Final[tuple[str, ...]] = (
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
)
"""The only JWS algorithms ever accepted: asymmetric, no ``none``, no HMAC (RFC 8725 sec. 3.1)."""

MAX_TOKEN_BYTES: Final = 16 * 1024
"""Longer tokens are refused before any decoding (a JWT-SVID is well under 2 KiB)."""

MIN_RSA_BITS: Final = 2048

_EC_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "ES256": ec.SECP256R1,
    "ES384": ec.SECP384R1,
    "ES512": ec.SECP521R1,
}
_PRIVATE_JWK_MEMBERS: Final = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_B64URL_CHARS: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
)
_JWS = jwt.PyJWS(options={"verify_signature": True})


def check_algorithms(algorithms: Iterable[str], what: str) -> tuple[str, ...]:
    """Validate a configured algorithm list (non-empty subset of ``ALLOWED_ALGORITHMS``)."""
    algs = tuple(algorithms)
    if not algs:
        raise ValueError(f"{what}: at least one algorithm is required")
    bad = [a for a in algs if a not in ALLOWED_ALGORITHMS]
    if bad:
        raise ValueError(
            f"{what}: {', '.join(map(repr, bad))} not allowed "
            f"(allowed: {', '.join(ALLOWED_ALGORITHMS)})"
        )
    return algs


def check_leeway(leeway: float, what: str) -> float:
    if isinstance(leeway, bool) or not math.isfinite(leeway) or leeway < 0:
        raise ValueError(f"{what}: leeway must be a finite number of seconds >= 0")
    return float(leeway)


# ------------------------------------------------------------------------------------ parsing


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A compact JWS split and decoded, NOT verified."""

    header: Mapping[str, Any]
    payload: Mapping[str, Any]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError("duplicate member name")
        obj[key] = value
    return obj


def _json_object(data: bytes) -> dict[str, Any]:
    text = data.decode("utf-8")  # strict: invalid UTF-8 raises UnicodeDecodeError (ValueError)
    value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _b64url_decode(segment: bytes) -> bytes:
    """Strict base64url without padding (RFC 7515 sec. 2); non-canonical encodings refused."""
    if len(segment) % 4 == 1 or not _B64URL_CHARS.issuperset(segment):
        raise ValueError("not base64url")
    decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        raise ValueError("non-canonical base64url")
    return decoded


def parse_token(token: object, layer: TokenLayer) -> ParsedToken:
    """Split and decode a compact JWS (header and payload must be JSON objects)."""
    if not isinstance(token, str) or not token:
        raise TokenError("no bearer token", reason="missing_token", layer=layer)
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(
            f"token longer than {MAX_TOKEN_BYTES} bytes", reason="token_too_large", layer=layer
        )
    try:
        raw = token.encode("ascii")
    except UnicodeEncodeError:
        raise TokenError(
            "token is not a compact JWS (non-ASCII)", reason="malformed_token", layer=layer
        ) from None
    parts = raw.split(b".")
    if len(parts) != 3:
        what = "a JWE or nested token" if len(parts) == 5 else f"{len(parts)} segments"
        raise TokenError(
            f"token is not a compact JWS ({what}, expected 3)",
            reason="malformed_token",
            layer=layer,
        )
    try:
        header = _json_object(_b64url_decode(parts[0]))
    except (ValueError, RecursionError, binascii.Error):
        raise TokenError(
            "token header is not base64url-encoded JSON object",
            reason="malformed_token",
            layer=layer,
        ) from None
    try:
        payload = _json_object(_b64url_decode(parts[1]))
    except (ValueError, RecursionError, binascii.Error):
        raise TokenError(
            "token payload is not a base64url-encoded JSON object",
            reason="malformed_token",
            layer=layer,
        ) from None
    try:
        _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        raise TokenError(
            "token signature is not base64url", reason="malformed_token", layer=layer
        ) from None
    return ParsedToken(header, payload)


def _typ_value(value: str) -> str:
    """RFC 7515 sec. 4.1.9: media types compare case-insensitively, ``application/`` optional."""
    lowered = value.lower()
    rest = lowered.removeprefix("application/")
    return rest if "/" not in rest else lowered


def check_header(
    header: Mapping[str, Any],
    *,
    algorithms: Iterable[str],
    typs: Iterable[str] | None,
    typ_required: bool,
    layer: TokenLayer,
) -> tuple[str, str]:
    """Check ``alg``, ``typ``, ``crit``, ``kid``; return ``(alg, kid)``. No key is touched."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS or alg not in set(algorithms):
        shown = (
            alg
            if isinstance(alg, str) and len(alg) <= 16 and alg.isascii() and alg.isalnum()
            else "this"
        )
        raise TokenError(
            f"signing algorithm {shown!s} is not accepted", reason="bad_algorithm", layer=layer
        )
    if "crit" in header or header.get("b64", True) is not True:
        raise TokenError(
            "token uses critical or unencoded-payload extensions that are not supported",
            reason="unsupported_header",
            layer=layer,
        )
    if typs is not None:
        typ = header.get("typ")
        if typ is None:
            if typ_required:
                raise TokenError("token has no 'typ' header", reason="bad_typ", layer=layer)
        elif not isinstance(typ, str) or _typ_value(typ) not in {_typ_value(t) for t in typs}:
            raise TokenError("token 'typ' header is not accepted", reason="bad_typ", layer=layer)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("token header has no 'kid'", reason="missing_kid", layer=layer)
    return alg, kid


# ------------------------------------------------------------------------------------ keys


def key_matches_alg(key: jwt.PyJWK, alg: str) -> bool:
    """The key's type (and curve) fits ``alg``; a JWK that declares ``alg`` fits only that one.

    Private and symmetric keys never fit.
    """
    declared = jwk_as_given(key).get("alg")
    if declared is not None and declared != alg:
        return False
    public = key.key
    if alg.startswith(("RS", "PS")):
        return isinstance(public, rsa.RSAPublicKey)
    curve = _EC_CURVES.get(alg)
    return (
        curve is not None
        and isinstance(public, ec.EllipticCurvePublicKey)
        and isinstance(public.curve, curve)
    )


def load_jwk(jwk: object, *, source: str) -> jwt.PyJWK | None:
    """A verification key from one JWK, or None (logged) if it is unusable for us: no ``kid``,
    symmetric, private, an unsupported type/curve/alg, an RSA key under 2048 bits, a ``use``
    other than signing."""
    if not isinstance(jwk, Mapping):
        log.warning("%s: skipping a JWKS member that is not an object", source)
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        log.warning("%s: skipping a key without 'kid'", source)
        return None
    kty = jwk.get("kty")
    if kty not in ("RSA", "EC"):
        log.warning("%s: skipping key %r of type %r (only RSA and EC)", source, kid, kty)
        return None
    if any(member in jwk for member in _PRIVATE_JWK_MEMBERS):
        log.warning("%s: skipping key %r: it contains private key material", source, kid)
        return None
    use = jwk.get("use")
    if use is not None and use not in ("sig", "jwt-svid"):
        log.info("%s: skipping key %r with use %r (not a JWT signing key)", source, kid, use)
        return None
    alg = jwk.get("alg")
    if alg is not None and alg not in ALLOWED_ALGORITHMS:
        log.warning("%s: skipping key %r with alg %r", source, kid, alg)
        return None
    try:
        key = jwt.PyJWK(dict(jwk))
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        log.warning("%s: skipping unusable key %r: %s", source, kid, type(exc).__name__)
        return None
    public = key.key
    if isinstance(public, rsa.RSAPublicKey):
        if public.key_size < MIN_RSA_BITS:
            log.warning(
                "%s: skipping RSA key %r of %d bits (minimum %d)",
                source,
                kid,
                public.key_size,
                MIN_RSA_BITS,
            )
            return None
    elif not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
        public.curve, tuple(_EC_CURVES.values())
    ):
        log.warning("%s: skipping key %r: unsupported key or curve", source, kid)
        return None
    return key


def load_jwks(jwks: object, *, source: str) -> dict[str, jwt.PyJWK]:
    """``kid`` -> key from a JWKS document; unusable members are skipped (and logged). A ``kid``
    given to two different keys is dropped entirely: which one verifies would be ambiguous."""
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"{source}: not a JWKS (an object with a 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    seen: dict[str, Mapping[str, Any]] = {}
    ambiguous: set[str] = set()
    for member in jwks["keys"]:
        key = load_jwk(member, source=source)
        if key is None:
            continue
        kid = str(key.key_id)
        data = jwk_as_given(key)
        if kid in seen:
            if seen[kid] != data:
                ambiguous.add(kid)
            continue
        seen[kid] = data
        keys[kid] = key
    for kid in ambiguous:
        log.warning("%s: dropping kid %r: it names two different keys", source, kid)
        del keys[kid]
    return keys


# ------------------------------------------------------------------------------------ verification


def verify_signature(token: str, key: jwt.PyJWK, alg: str, layer: TokenLayer) -> bytes:
    """Verify with pyjwt (one algorithm, one key); return the verified payload bytes."""
    if not key_matches_alg(key, alg):
        raise TokenError(
            "signing algorithm does not match the key", reason="bad_algorithm", layer=layer
        )
    try:
        decoded = _JWS.decode_complete(
            token,
            key=key.key,
            algorithms=[alg],
            options={"verify_signature": True, "enforce_minimum_key_length": True},
        )
    except InvalidSignatureError:
        raise TokenError(
            "token signature is invalid", reason="bad_signature", layer=layer
        ) from None
    except InvalidKeyError:
        raise TokenError("token key is not usable", reason="unusable_key", layer=layer) from None
    except (PyJWTError, ValueError, TypeError):
        raise TokenError(
            "token signature could not be verified", reason="bad_signature", layer=layer
        ) from None
    payload = decoded.get("payload")
    if not isinstance(payload, bytes):
        raise TokenError("token payload is missing", reason="malformed_token", layer=layer)
    return payload


def verified_claims(payload: bytes, layer: TokenLayer) -> dict[str, Any]:
    try:
        return _json_object(payload)
    except (ValueError, RecursionError):
        raise TokenError(
            "token payload is not a JSON object", reason="malformed_token", layer=layer
        ) from None


# ------------------------------------------------------------------------------------ claims


def _number(claims: Mapping[str, Any], name: str, layer: TokenLayer) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenError(
            f"claim '{name}' is not a NumericDate", reason="malformed_claim", layer=layer
        )
    # Beyond year 9999 a datetime cannot hold it; such a token is nonsense anyway.
    if not 0 <= value <= 253402300799:
        raise TokenError(f"claim '{name}' is out of range", reason="malformed_claim", layer=layer)
    return float(value)


def check_times(
    claims: Mapping[str, Any], *, now: float, leeway: float, layer: TokenLayer
) -> float:
    """``exp`` required and not passed (with leeway); ``nbf``/``iat`` not in the future beyond
    leeway. Returns ``exp``."""
    exp = _number(claims, "exp", layer)
    nbf = _number(claims, "nbf", layer)
    iat = _number(claims, "iat", layer)
    if exp is None:
        raise TokenError("token has no 'exp' claim", reason="missing_exp", layer=layer)
    if now >= exp + leeway:
        raise TokenError("token has expired", reason="expired", layer=layer)
    if nbf is not None and now + leeway < nbf:
        raise TokenError("token is not yet valid (nbf)", reason="not_yet_valid", layer=layer)
    if iat is not None and now + leeway < iat:
        raise TokenError(
            "token was issued in the future (iat)", reason="not_yet_valid", layer=layer
        )
    return exp


def audiences(claims: Mapping[str, Any], layer: TokenLayer) -> tuple[str, ...]:
    """``aud`` as a tuple (a string or a list of strings; RFC 7519 sec. 4.1.3)."""
    aud = claims.get("aud")
    if aud is None or aud == [] or aud == "":
        raise TokenError("token has no 'aud' claim", reason="missing_audience", layer=layer)
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise TokenError(
        "claim 'aud' is not a string or a list of strings", reason="malformed_claim", layer=layer
    )


def cnf_thumbprint(claims: Mapping[str, Any], layer: TokenLayer) -> str | None:
    """``cnf["x5t#S256"]`` (RFC 8705 sec. 3.1), or None if the token is not certificate-bound."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, Mapping):
        raise TokenError("claim 'cnf' is not an object", reason="malformed_claim", layer=layer)
    thumb = cnf.get("x5t#S256")
    if thumb is None:
        return None
    if not isinstance(thumb, str) or not thumb:
        raise TokenError(
            "claim 'cnf.x5t#S256' is not a string", reason="malformed_claim", layer=layer
        )
    return thumb
