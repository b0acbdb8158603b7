"""Immutable identity snapshots: what one Workload API update says about us and whom we trust.

Every update from the Workload API becomes a new ``X509Snapshot``; nothing is ever mutated, so a
TLS context built from a snapshot keeps meaning exactly what it meant when it was built.
Parsing lives here (pure, no I/O) so it is tested without a socket.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from sidecar.errors import SidecarError
from sidecar.spiffe.ids import SpiffeId, trust_domain_from_bundle_key


class SnapshotError(SidecarError):
    """The Workload API sent something we cannot use (kept out of the live state)."""

    status = 503
    reason = "bad_workload_api_response"


def split_der_certificates(data: bytes) -> tuple[x509.Certificate, ...]:
    """Parse concatenated ASN.1 DER certificates (the Workload API's chain and bundle encoding)."""
    certs: list[x509.Certificate] = []
    offset = 0
    while offset < len(data):
        end = offset + _der_element_length(data, offset)
        try:
            certs.append(x509.load_der_x509_certificate(data[offset:end]))
        except ValueError as exc:
            raise SnapshotError(f"invalid DER certificate at byte {offset}: {exc}") from exc
        offset = end
    return tuple(certs)


def _der_element_length(data: bytes, offset: int) -> int:
    """Total length (header + content) of the DER SEQUENCE starting at ``offset``."""
    if len(data) - offset < 2 or data[offset] != 0x30:
        raise SnapshotError(f"expected a DER SEQUENCE at byte {offset}")
    first = data[offset + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or len(data) - offset < 2 + count:
        raise SnapshotError(f"bad DER length at byte {offset}")
    length = int.from_bytes(data[offset + 2 : offset + 2 + count], "big")
    total = 2 + count + length
    if offset + total > len(data):
        raise SnapshotError(f"truncated DER element at byte {offset}")
    return total


def certificates_to_pem(certs: Iterable[x509.Certificate]) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


@dataclass(frozen=True, slots=True)
class X509Svid:
    """Our own X.509-SVID: leaf first, then any intermediates, and its private key."""

    spiffe_id: SpiffeId
    cert_chain: tuple[x509.Certificate, ...]
    private_key: PrivateKeyTypes
    hint: str = ""

    @property
    def leaf(self) -> x509.Certificate:
        return self.cert_chain[0]

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def serial_number(self) -> int:
        return self.leaf.serial_number

    def chain_pem(self) -> str:
        return certificates_to_pem(self.cert_chain)

    def key_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")


@dataclass(frozen=True, slots=True)
class X509Snapshot:
    """One consistent view: our SVID plus the X.509 bundles of every trust domain we trust.

    ``bundles`` maps trust domain name -> CA certificates; it always contains our own trust domain.
    """

    svid: X509Svid
    bundles: Mapping[str, tuple[x509.Certificate, ...]]
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def trust_domain(self) -> str:
        return self.svid.spiffe_id.trust_domain

    def all_cas(self) -> tuple[x509.Certificate, ...]:
        """Every trusted CA of every trust domain (for the TLS stack's handshake-time check)."""
        return tuple(ca for cas in self.bundles.values() for ca in cas)

    def is_valid_at(self, now: dt.datetime) -> bool:
        return now < self.svid.not_after


def snapshot_from_x509_response(response: object) -> X509Snapshot:
    """Build a snapshot from a ``workload_pb2.X509SVIDResponse``; the first SVID is ours.

    Federated bundles are keyed by trust-domain SPIFFE ID (``spiffe://td``) on the wire; a
    federated entry can never replace our own trust domain's bundle.
    """
    svids = list(getattr(response, "svids", []))
    if not svids:
        raise SnapshotError("X509SVIDResponse carries no SVID")
    first = svids[0]
    spiffe_id = SpiffeId.parse_workload(first.spiffe_id)
    chain = split_der_certificates(first.x509_svid)
    if not chain:
        raise SnapshotError(f"SVID for {spiffe_id} has an empty certificate chain")
    try:
        key = serialization.load_der_private_key(first.x509_svid_key, password=None)
    except (ValueError, TypeError) as exc:
        raise SnapshotError(f"SVID for {spiffe_id} has an unusable private key: {exc}") from exc
    own_bundle = split_der_certificates(first.bundle)
    if not own_bundle:
        raise SnapshotError(f"SVID for {spiffe_id} comes with an empty trust bundle")
    bundles: dict[str, tuple[x509.Certificate, ...]] = {}
    for key_name, der in dict(response.federated_bundles).items():  # type: ignore[attr-defined]
        td = trust_domain_from_bundle_key(key_name)
        if td != spiffe_id.trust_domain:
            bundles[td] = split_der_certificates(der)
    bundles[spiffe_id.trust_domain] = own_bundle
    return X509Snapshot(
        svid=X509Svid(spiffe_id, chain, key, hint=first.hint),
        bundles=MappingProxyType(bundles),
    )


@dataclass(frozen=True, slots=True)
class JwtSvid:
    """A JWT-SVID as fetched from the Workload API, with the expiry read from its claims."""

    token: str
    spiffe_id: SpiffeId
    audience: tuple[str, ...]
    expiry: dt.datetime
    issued_at: dt.datetime | None = None
