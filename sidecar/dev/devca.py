"""A tiny on-disk certificate authority for the dev Workload API (never for production).

It issues what a SPIRE server would: X509-SVIDs shaped like SPIRE's (same key usages, EKUs, subject
and 10 s not-before cushion) and JWT-SVIDs signed by one key published as a JWKS with a ``kid``.
The CA key and the JWT key are kept in a state directory so that restarting the dev Workload API
keeps the same trust bundle (peers that cached it keep trusting us).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import string
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.errors import SidecarError
from sidecar.spiffe.ids import SpiffeId, validate_trust_domain

JwtAlg = Literal["ES256", "RS256"]
JWT_ALGS: tuple[JwtAlg, ...] = ("ES256", "RS256")
JwtSigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
JwtPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

CA_VALIDITY = dt.timedelta(days=365)
# SPIRE's credtemplate.NotBeforeCushion: tolerate peers whose clocks run a little behind.
NOT_BEFORE_CUSHION = dt.timedelta(seconds=10)
STATE_FORMAT = 1

_STATE_FILE = "state.json"
_CA_KEY_FILE = "ca-key.pem"
_CA_CERT_FILE = "ca-cert.pem"
_JWT_KEY_FILE = "jwt-key.pem"
_LOCK_FILE = ".lock"
_KID_ALPHABET = string.ascii_letters + string.digits


class DevCAError(SidecarError):
    """The dev CA cannot be loaded, created or asked for this credential."""

    status = 500
    reason = "dev_ca_error"


class DevCA:
    """CA key + certificate and JWT signing key of one trust domain.

    Build it with ``load_or_create`` (persistent) or ``generate`` (in memory, e.g. for tests).
    """

    def __init__(
        self,
        *,
        trust_domain: str,
        ca_key: ec.EllipticCurvePrivateKey,
        ca_cert: x509.Certificate,
        jwt_alg: JwtAlg,
        jwt_key: JwtSigningKey,
        jwt_kid: str,
        state_dir: Path | None = None,
    ) -> None:
        self.trust_domain = validate_trust_domain(trust_domain)
        self.ca_cert = ca_cert
        self.jwt_alg: JwtAlg = jwt_alg
        self.jwt_kid = jwt_kid
        self.state_dir = state_dir
        self._ca_key = ca_key
        self._jwt_key = jwt_key
        self._ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def generate(cls, trust_domain: str, *, jwt_alg: str = "ES256") -> DevCA:
        """A fresh CA that lives only in memory."""
        validate_trust_domain(trust_domain)
        alg = _check_alg(jwt_alg)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        return cls(
            trust_domain=trust_domain,
            ca_key=ca_key,
            ca_cert=_make_ca_cert(trust_domain, ca_key),
            jwt_alg=alg,
            jwt_key=_generate_jwt_key(alg),
            jwt_kid="".join(secrets.choice(_KID_ALPHABET) for _ in range(32)),
        )

    @classmethod
    def load_or_create(
        cls, state_dir: Path, trust_domain: str, *, jwt_alg: str | None = None
    ) -> DevCA:
        """Load the CA kept in ``state_dir``, or create and persist one there.

        ``jwt_alg`` (``ES256`` default, or ``RS256``) only applies when the CA is created; asking an
        existing CA for a different algorithm is an error rather than a silent key change.
        A state directory of another trust domain is an error too: its bundle would be wrong.
        """
        validate_trust_domain(trust_domain)
        alg = _check_alg(jwt_alg) if jwt_alg is not None else None
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise DevCAError(f"cannot create state directory {state_dir}: {exc}") from exc
        with _locked(state_dir):
            if (state_dir / _STATE_FILE).exists():
                ca = cls._load(state_dir)
                if ca.trust_domain != trust_domain:
                    raise DevCAError(
                        f"state directory {state_dir} holds the CA of trust domain "
                        f"{ca.trust_domain!r}, not {trust_domain!r}; use another directory"
                    )
                if alg is not None and alg != ca.jwt_alg:
                    raise DevCAError(
                        f"state directory {state_dir} holds a {ca.jwt_alg} JWT key, not {alg}; "
                        "use another directory or drop the algorithm option"
                    )
                return ca
            ca = cls.generate(trust_domain, jwt_alg=alg or "ES256")
            ca.state_dir = state_dir
            ca._save(state_dir)
            return ca

    @classmethod
    def _load(cls, state_dir: Path) -> DevCA:
        try:
            state = json.loads((state_dir / _STATE_FILE).read_text("utf-8"))
            if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
                raise DevCAError(f"{state_dir / _STATE_FILE}: unknown state format")
            trust_domain = validate_trust_domain(str(state["trust_domain"]))
            alg = _check_alg(str(state["jwt_alg"]))
            kid = str(state["jwt_kid"])
            ca_key = _load_key(state_dir / _CA_KEY_FILE)
            ca_cert = x509.load_pem_x509_certificate((state_dir / _CA_CERT_FILE).read_bytes())
            jwt_key = _load_key(state_dir / _JWT_KEY_FILE)
        except DevCAError:
            raise
        except (OSError, ValueError, KeyError, TypeError, SidecarError) as exc:
            raise DevCAError(f"state directory {state_dir} is unusable: {exc}") from exc
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != (
            ca_cert.public_key()
        ):
            raise DevCAError(f"{state_dir}: CA key does not match the CA certificate")
        if not isinstance(jwt_key, _key_type(alg)) or not kid:
            raise DevCAError(f"{state_dir}: JWT key is not a {alg} key (or kid is empty)")
        if ca_cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise DevCAError(
                f"the dev CA in {state_dir} expired at {ca_cert.not_valid_after_utc:%Y-%m-%d}; "
                "delete the directory to create a new one"
            )
        return cls(
            trust_domain=trust_domain,
            ca_key=ca_key,
            ca_cert=ca_cert,
            jwt_alg=alg,
            jwt_key=jwt_key,
            jwt_kid=kid,
            state_dir=state_dir,
        )

    def _save(self, state_dir: Path) -> None:
        _write_private(state_dir / _CA_KEY_FILE, _pkcs8_pem(self._ca_key))
        _write_private(state_dir / _JWT_KEY_FILE, _pkcs8_pem(self._jwt_key))
        _write_private(
            state_dir / _CA_CERT_FILE, self.ca_cert.public_bytes(serialization.Encoding.PEM), 0o644
        )
        state = {
            "format": STATE_FORMAT,
            "trust_domain": self.trust_domain,
            "jwt_alg": self.jwt_alg,
            "jwt_kid": self.jwt_kid,
        }
        # Written last: its presence is what marks the directory as complete.
        _write_private(state_dir / _STATE_FILE, json.dumps(state, indent=2).encode(), 0o644)

    # ----------------------------------------------------------------------------- bundles

    @property
    def trust_domain_id(self) -> str:
        """``spiffe://<td>``: how the Workload API keys bundles."""
        return f"spiffe://{self.trust_domain}"

    @property
    def jwt_public_key(self) -> JwtPublicKey:
        return self._jwt_key.public_key()

    def public_jwk(self) -> dict[str, Any]:
        """The JWT signing key as a JWK, with ``kid`` and ``use: jwt-svid`` like SPIRE's bundles."""
        pub = self.jwt_public_key
        if isinstance(pub, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
        return {**jwk, "kid": self.jwt_kid, "use": "jwt-svid"}

    def jwt_bundle_json(self) -> bytes:
        """The JWT bundle as a JWKS document (what ``FetchJWTBundles`` carries)."""
        return json.dumps({"keys": [self.public_jwk()]}, separators=(",", ":")).encode()

    def jwt_keys(self) -> Mapping[str, JwtPublicKey]:
        """``kid`` -> public key: the JWT authorities of this trust domain."""
        return {self.jwt_kid: self.jwt_public_key}

    def x509_bundle_der(self) -> bytes:
        """The X.509 bundle (just the CA certificate) as concatenated DER."""
        return self.ca_cert.public_bytes(serialization.Encoding.DER)

    # ----------------------------------------------------------------------------- issuing

    def issue_x509_svid(
        self, spiffe_id: SpiffeId, ttl: dt.timedelta
    ) -> tuple[tuple[x509.Certificate, ...], ec.EllipticCurvePrivateKey]:
        """A fresh key and leaf (chain ``(leaf,)``) for ``spiffe_id``, valid ``ttl`` from now.

        The leaf never outlives the CA: ``notAfter`` is capped at the CA's, as SPIRE does.
        """
        self._check_member(spiffe_id)
        if ttl <= dt.timedelta(0):
            raise DevCAError(f"X509-SVID TTL must be positive, got {ttl}")
        now = dt.datetime.now(dt.UTC)
        not_after = min(now + ttl, self.ca_cert.not_valid_after_utc)
        if not_after <= now:
            raise DevCAError(f"the dev CA of {self.trust_domain} has expired")
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
                    ]
                )
            )
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - NOT_BEFORE_CUSHION)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ca_ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        return (cert,), key

    def issue_jwt_svid(
        self, spiffe_id: SpiffeId, audiences: Sequence[str], ttl: dt.timedelta
    ) -> str:
        """A JWT-SVID: header ``alg``/``kid``/``typ: JWT``; claims ``sub``, ``aud`` (list), ``exp``,
        ``iat`` (SPIRE's claim set)."""
        self._check_member(spiffe_id)
        audience = [a for a in audiences if a]
        if not audience:
            raise DevCAError("a JWT-SVID needs at least one non-empty audience")
        if ttl <= dt.timedelta(0):
            raise DevCAError(f"JWT-SVID TTL must be positive, got {ttl}")
        now = dt.datetime.now(dt.UTC)
        claims = {
            "sub": str(spiffe_id),
            "aud": audience,
            "exp": int((now + ttl).timestamp()),
            "iat": int(now.timestamp()),
        }
        return jwt.encode(
            claims,
            self._jwt_key,
            algorithm=self.jwt_alg,
            headers={"kid": self.jwt_kid, "typ": "JWT"},
        )

    def _check_member(self, spiffe_id: SpiffeId) -> None:
        if spiffe_id.trust_domain != self.trust_domain:
            raise DevCAError(
                f"{spiffe_id} is not in trust domain {self.trust_domain!r} of this dev CA"
            )
        if not spiffe_id.path:
            raise DevCAError(f"{spiffe_id} names a trust domain, not a workload")

    def __repr__(self) -> str:
        return f"DevCA(trust_domain={self.trust_domain!r}, jwt_alg={self.jwt_alg!r})"


# --------------------------------------------------------------------------------- helpers


def _check_alg(alg: str) -> JwtAlg:
    for known in JWT_ALGS:
        if alg == known:
            return known
    raise DevCAError(f"unsupported JWT algorithm {alg!r} (use one of {', '.join(JWT_ALGS)})")


def _key_type(alg: JwtAlg) -> type[ec.EllipticCurvePrivateKey] | type[rsa.RSAPrivateKey]:
    return ec.EllipticCurvePrivateKey if alg == "ES256" else rsa.RSAPrivateKey


def _generate_jwt_key(alg: JwtAlg) -> JwtSigningKey:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _make_ca_cert(trust_domain: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """Self-signed root shaped like SPIRE's: C=US, O=SPIFFE, serialNumber, URI SAN ``spiffe://td``."""
    now = dt.datetime.now(dt.UTC)
    serial = x509.random_serial_number()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "mcp-sidecar dev CA"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, str(serial)),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - NOT_BEFORE_CUSHION)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _pkcs8_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> object:
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write atomically (temp file + rename) with ``mode`` set before any byte is written."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)  # the umask may have narrowed (never widened) it; make it exact
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise creation, so two processes started at once end up with one CA, not two halves."""
    fd = os.open(state_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
