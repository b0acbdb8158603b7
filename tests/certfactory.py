"""Build X.509 certificates for tests: SPIRE-shaped by default, any shape on request.

Every knob the SPIFFE rules care about (URI SANs, basicConstraints, keyUsage, EKU, validity, key
type, signer) is a keyword, so a negative test states exactly the one thing it breaks::

    ca = CertFactory.root("example.org")
    leaf = ca.issue_leaf("spiffe://example.org/ns/a/sa/b")
    bad = ca.issue_leaf("spiffe://example.org/x", key_usage={"key_cert_sign", "digital_signature"})
    mid = ca.issue_intermediate()
    leaf2 = mid.issue_leaf("spiffe://example.org/y")
    leaf2.chain()        # (leaf2, mid): what a TLS peer sends
    leaf2.write(tmp_path, "svid")  # chain + key PEM files for ssl.load_cert_chain

Any ``IssuedCert`` can sign (``issue_leaf`` / ``issue_intermediate``), even a leaf or a non-CA
intermediate, because negative tests need exactly those broken chains. EC P-256 keys by default
(fast to generate); ``key_type="rsa"`` gives RSA-2048, ``"ed25519"`` Ed25519.
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict, Unpack

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: ``key_usage`` names are the keyword arguments of ``x509.KeyUsage``.
KEY_USAGE_FIELDS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
#: What SPIRE puts on an X509-SVID leaf and on its CAs.
LEAF_KEY_USAGE = frozenset({"digital_signature", "key_encipherment", "key_agreement"})
CA_KEY_USAGE = frozenset({"key_cert_sign", "crl_sign", "digital_signature"})
LEAF_EKU = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)


class _Default(enum.Enum):
    """Sentinel type: "use the SPIRE-shaped default" (``None`` always means "omit it")."""

    DEFAULT = enum.auto()


_DEFAULT = _Default.DEFAULT


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key(key_type: KeyType = "ec") -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ed25519.Ed25519PrivateKey.generate()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(names: Iterable[str]) -> x509.KeyUsage:
    wanted = set(names)
    unknown = wanted - set(KEY_USAGE_FIELDS)
    if unknown:
        raise ValueError(f"unknown key usage names {sorted(unknown)}; use {KEY_USAGE_FIELDS}")
    flags = {name: name in wanted for name in KEY_USAGE_FIELDS}
    if not flags["key_agreement"]:  # x509.KeyUsage refuses these without keyAgreement
        flags["encipher_only"] = flags["decipher_only"] = False
    return x509.KeyUsage(**flags)


def _uris(uris: str | Sequence[str] | None) -> list[str]:
    if uris is None:
        return []
    return [uris] if isinstance(uris, str) else list(uris)


class LeafOptions(TypedDict, total=False):
    """Keyword overrides for a leaf. Leaving a key out means SPIRE's default; ``None`` omits.

    ``ca``: basicConstraints cA (default False; None omits the extension). ``key_usage``: names
    from ``KEY_USAGE_FIELDS`` (default ``LEAF_KEY_USAGE``). ``eku``: OIDs (default serverAuth +
    clientAuth). Validity defaults to five minutes ago .. one hour from now.
    ``authority_key_id=False`` leaves out the AKI (as Go does when the issuer has no SKI).
    """

    dns_names: Sequence[str]
    ip_addresses: Sequence[str]
    san_critical: bool
    subject: x509.Name
    ca: bool | None
    path_length: int | None
    key_usage: Iterable[str] | None
    eku: Sequence[x509.ObjectIdentifier] | None
    not_before: dt.datetime
    not_after: dt.datetime
    key: PrivateKey
    key_type: KeyType
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]]
    authority_key_id: bool


@dataclass(frozen=True)
class IssuedCert:
    """A certificate, its private key and the ``IssuedCert`` that signed it (None: self-signed)."""

    cert: x509.Certificate
    key: PrivateKey
    issuer: IssuedCert | None = None

    # -- encodings -------------------------------------------------------------------------------
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")

    def key_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # -- chains ----------------------------------------------------------------------------------
    @property
    def root(self) -> IssuedCert:
        """The self-signed end of this certificate's issuer chain (``self`` if self-signed)."""
        node = self
        while node.issuer is not None:
            node = node.issuer
        return node

    def chain(self) -> tuple[x509.Certificate, ...]:
        """This certificate then its issuers up to, but excluding, the root: what a peer sends."""
        out = [self.cert]
        node = self.issuer
        while node is not None and node.issuer is not None:
            out.append(node.cert)
            node = node.issuer
        return tuple(out)

    def full_chain(self) -> tuple[x509.Certificate, ...]:
        """Like ``chain()`` but including the root."""
        return (*self.chain(), self.root.cert) if self.issuer is not None else (self.cert,)

    def chain_pem(self) -> str:
        return "".join(
            c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in self.chain()
        )

    def chain_der(self) -> list[bytes]:
        return [c.public_bytes(serialization.Encoding.DER) for c in self.chain()]

    def write(self, directory: Path, stem: str = "svid") -> tuple[Path, Path]:
        """Write ``<stem>.pem`` (chain) and ``<stem>.key`` for ``SSLContext.load_cert_chain``."""
        cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert_path.write_text(self.chain_pem())
        key_path.write_text(self.key_pem())
        return cert_path, key_path

    # -- issuing ---------------------------------------------------------------------------------
    def issue_leaf(
        self, uris: str | Sequence[str] | None, **options: Unpack[LeafOptions]
    ) -> IssuedCert:
        """An X509-SVID-shaped leaf signed by this certificate; see ``LeafOptions``.

        ``uris`` may be one string, several (two URI SANs), or ``None``/``[]`` (no URI SAN).
        """
        return _leaf(self, uris, options)

    def issue_intermediate(
        self,
        uri: str | Sequence[str] | _Default | None = _DEFAULT,
        *,
        common_name: str = "intermediate",
        ca: bool | None = True,
        path_length: int | None = None,
        key_usage: Iterable[str] | _Default | None = _DEFAULT,
        eku: Sequence[x509.ObjectIdentifier] | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: KeyType = "ec",
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> IssuedCert:
        """A (by default SPIRE-shaped) intermediate CA; ``uri`` defaults to the issuer's URI SAN."""
        uris = _uris_of(self.cert) if isinstance(uri, _Default) else _uris(uri)
        return _build(
            issuer=self,
            subject=_name(common_name),
            uris=uris,
            dns_names=(),
            san_critical=False,
            ca=ca,
            path_length=path_length,
            key_usage=CA_KEY_USAGE if isinstance(key_usage, _Default) else key_usage,
            eku=eku,
            not_before=not_before,
            not_after=not_after,
            key=None,
            key_type=key_type,
            extra_extensions=extra_extensions,
        )


class CertFactory:
    """Entry points for self-signed certificates; everything else is ``IssuedCert.issue_*``."""

    @staticmethod
    def root(
        trust_domain: str = "example.org",
        *,
        uri: str | _Default | None = _DEFAULT,
        common_name: str | None = None,
        ca: bool | None = True,
        path_length: int | None = None,
        key_usage: Iterable[str] | _Default | None = _DEFAULT,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_type: KeyType = "ec",
        extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    ) -> IssuedCert:
        """A self-signed root CA; like SPIRE's, with URI SAN ``spiffe://<trust_domain>``."""
        return _build(
            issuer=None,
            subject=_name(common_name or f"{trust_domain} root"),
            uris=[f"spiffe://{trust_domain}"] if isinstance(uri, _Default) else _uris(uri),
            dns_names=(),
            san_critical=False,
            ca=ca,
            path_length=path_length,
            key_usage=CA_KEY_USAGE if isinstance(key_usage, _Default) else key_usage,
            eku=None,
            not_before=not_before,
            not_after=not_after,
            key=None,
            key_type=key_type,
            extra_extensions=extra_extensions,
        )

    @staticmethod
    def self_signed_leaf(
        uris: str | Sequence[str] | None, **options: Unpack[LeafOptions]
    ) -> IssuedCert:
        """A leaf-shaped certificate (cA=false by default) that signs itself."""
        return _leaf(None, uris, options)


def _uris_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))


def _leaf(
    issuer: IssuedCert | None, uris: str | Sequence[str] | None, o: LeafOptions
) -> IssuedCert:
    return _build(
        issuer=issuer,
        subject=o.get("subject", _name("leaf")),
        uris=_uris(uris),
        dns_names=o.get("dns_names", ()),
        ip_addresses=o.get("ip_addresses", ()),
        san_critical=o.get("san_critical", False),
        ca=o.get("ca", False),
        path_length=o.get("path_length"),
        key_usage=o.get("key_usage", LEAF_KEY_USAGE),
        eku=o.get("eku", LEAF_EKU),
        not_before=o.get("not_before"),
        not_after=o.get("not_after"),
        key=o.get("key"),
        key_type=o.get("key_type", "ec"),
        extra_extensions=o.get("extra_extensions", ()),
        authority_key_id=o.get("authority_key_id", True),
    )


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _build(
    *,
    issuer: IssuedCert | None,
    subject: x509.Name,
    uris: list[str],
    dns_names: Sequence[str],
    san_critical: bool,
    ca: bool | None,
    path_length: int | None,
    key_usage: Iterable[str] | None,
    eku: Sequence[x509.ObjectIdentifier] | None,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
    key: PrivateKey | None,
    key_type: KeyType,
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]],
    authority_key_id: bool = True,
    ip_addresses: Sequence[str] = (),
) -> IssuedCert:
    key = key or new_key(key_type)
    now = utcnow()
    signer_key = issuer.key if issuer is not None else key
    issuer_name = issuer.cert.subject if issuer is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(minutes=5))
        .not_valid_after(not_after or now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None and authority_key_id:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage is not None:
        builder = builder.add_extension(_key_usage(key_usage), critical=True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(signer_key, _hash_for(signer_key))
    return IssuedCert(cert=cert, key=key, issuer=issuer)
