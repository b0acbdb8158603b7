"""What the admin listener shows an operator, as JSON-ready data (pure: no I/O).

* ``certs_view``: our X.509-SVID (SPIFFE ID, serial, validity, time to expiry, chain) and what
  we trust - X.509 CAs per trust domain with SHA-256 fingerprints and expiry, JWT bundle key ids
  - as Envoy's ``/certs`` does for its certificates.
* ``config_view``: the effective configuration (the parsed, validated one: defaults filled in)
  as Envoy's ``/config_dump`` does, with every value under a secret-looking key replaced by
  ``REDACTED``. The names are listed once, here (``SECRET_KEYS``, ``JWK_PRIVATE_MEMBERS``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
from collections.abc import Mapping, Set
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from sidecar.identity.snapshot import X509Snapshot

REDACTED: Final = "[redacted]"
#: Keys (config fields or mapping keys, any depth) whose values are never shown.
SECRET_KEYS: Final = frozenset(
    {
        "access_token",
        "api_key",
        "apikey",
        "authorization",
        "client_secret",
        "cookie",
        "credentials",
        "passphrase",
        "password",
        "private_key",
        "refresh_token",
        "secret",
        "token",
    }
)
#: Members of a JWK (a mapping with ``kty``) that are private or symmetric key material.
JWK_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


# ------------------------------------------------------------------------------------ /certs


def _time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _certificate(cert: x509.Certificate, now: dt.datetime) -> dict[str, Any]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": f"{cert.serial_number:x}",
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_before": _time(cert.not_valid_before_utc),
        "not_after": _time(cert.not_valid_after_utc),
        "expires_in_seconds": int((cert.not_valid_after_utc - now).total_seconds()),
    }


def certs_view(
    snapshot: X509Snapshot | None,
    jwt_bundles: Mapping[str, Mapping[str, Any]],
    now: dt.datetime,
) -> dict[str, Any]:
    """``/certs``: ``svid`` is None until the first SVID arrived (or without SPIFFE identity)."""
    svid: dict[str, Any] | None = None
    x509_bundles: dict[str, list[dict[str, Any]]] = {}
    if snapshot is not None:
        leaf = _certificate(snapshot.svid.leaf, now)
        svid = {
            "spiffe_id": str(snapshot.svid.spiffe_id),
            "serial": leaf["serial"],
            "not_before": leaf["not_before"],
            "not_after": leaf["not_after"],
            "expires_in_seconds": leaf["expires_in_seconds"],
            "hint": snapshot.svid.hint,
            "received_at": _time(snapshot.received_at),
            "chain": [_certificate(cert, now) for cert in snapshot.svid.cert_chain],
        }
        for td, cas in sorted(snapshot.bundles.items()):
            x509_bundles[td] = [_certificate(ca, now) for ca in cas]
    jwt = {td: {"key_ids": sorted(_key_ids(jwks))} for td, jwks in sorted(jwt_bundles.items())}
    return {"svid": svid, "x509_bundles": x509_bundles, "jwt_bundles": jwt}


def _key_ids(jwks: Mapping[str, Any]) -> list[str]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        return []
    return [str(k["kid"]) for k in keys if isinstance(k, Mapping) and "kid" in k]


# ------------------------------------------------------------------------------ /config_dump


def config_view(config: object) -> Any:
    """The configuration object tree as JSON-ready data, secrets redacted."""
    return _dump(config)


def _dump(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return _dump(value.value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    kind: Any = type(value)
    if kind.__str__ is not object.__str__ and not isinstance(value, Mapping):
        return str(value)  # SPIFFE IDs, patterns: their text form, as in the config file
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        shown = (f.name for f in dataclasses.fields(value) if f.repr)
        return _mapping({name: getattr(value, name) for name in shown})
    if isinstance(value, Mapping):
        return _mapping(value)
    if isinstance(value, Set):
        return sorted((_dump(v) for v in value), key=str)
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return f"<{type(value).__name__}>"  # an object without a text form (e.g. a loaded key)


def _mapping(data: Mapping[Any, Any]) -> dict[str, Any]:
    is_jwk = "kty" in data
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key)
        secret = name.lower() in SECRET_KEYS or (is_jwk and name in JWK_PRIVATE_MEMBERS)
        out[name] = REDACTED if secret and value is not None else _dump(value)
    return out
