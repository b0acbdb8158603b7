"""X509-SVID verification: the spec's leaf rules plus path validation per trust domain.

The TLS stack checks the peer chain against *every* trusted bundle at once, which would let a CA of
federated domain B vouch for ``spiffe://A/...``. Here the bundle is chosen by the trust domain of
the leaf's own SPIFFE ID and the chain is validated against that bundle alone.

Every refusal is a ``VerificationError`` (HTTP 403) whose ``reason`` is a stable metric label:

=========================  ===================================================================
reason                     meaning
=========================  ===================================================================
``empty_chain``            the peer sent no certificate
``malformed_certificate``  a certificate (or one of the leaf's extensions) does not parse
``no_uri_san``             the leaf has no URI SAN
``multiple_uri_sans``      the leaf has more than one URI SAN
``invalid_spiffe_id``      the URI SAN is not a workload SPIFFE ID; ``detail`` holds the
                           ``SpiffeIdError`` reason (``bad_scheme``, ``root_path_id``,
                           ``dot_segment``, ``bad_trust_domain_chars``, ...)
``ca_leaf``                the leaf has basicConstraints cA=true
``no_digital_signature``   the leaf's keyUsage is missing or lacks digitalSignature
``key_cert_sign``          the leaf's keyUsage asserts keyCertSign
``crl_sign``               the leaf's keyUsage asserts cRLSign
``expired``                ``now`` is after the leaf's notAfter
``not_yet_valid``          ``now`` is before the leaf's notBefore
``unknown_trust_domain``   no (or an empty) bundle for the leaf's trust domain
``untrusted_chain``        RFC 5280 path validation against that bundle failed
``verification_error``     anything unexpected (a bug): we fail closed
=========================  ===================================================================
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import TypeVar

from cryptography import x509
from cryptography.x509 import verification as x509v

from sidecar.errors import SidecarError
from sidecar.spiffe.ids import SpiffeId, SpiffeIdError

#: At most this many intermediates between the leaf and a bundle certificate.
MAX_CHAIN_DEPTH = 8
#: A peer sending more certificates than this is refused before path building starts.
MAX_PEER_CERTIFICATES = 16

_E = TypeVar("_E", bound=x509.ExtensionType)


class VerificationError(SidecarError):
    """The peer's X509-SVID is not acceptable; ``reason`` is a label from the module docstring."""

    status = 403
    reason = "verification_error"

    def __init__(
        self, message: str, *, reason: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.detail = detail


def verify_leaf(leaf: x509.Certificate) -> SpiffeId:
    """Check the X509-SVID leaf rules (spec sections 2, 4.1, 4.3); return the leaf's SPIFFE ID.

    Validity and the chain are not looked at here (see ``verify_x509_svid``).
    """
    try:
        extensions = leaf.extensions
    except Exception as exc:  # ValueError, DuplicateExtension, UnsupportedGeneralNameType, ...
        raise VerificationError(
            f"leaf certificate has malformed extensions: {exc}", reason="malformed_certificate"
        ) from exc
    sid = _leaf_spiffe_id(extensions)
    basic = _extension(extensions, x509.BasicConstraints)
    if basic is not None and basic.ca:
        raise VerificationError(f"leaf for {sid} is a CA certificate (cA=true)", reason="ca_leaf")
    usage = _extension(extensions, x509.KeyUsage)
    if usage is None:
        raise VerificationError(
            f"leaf for {sid} has no keyUsage extension (digitalSignature is required)",
            reason="no_digital_signature",
        )
    if not usage.digital_signature:
        raise VerificationError(
            f"leaf for {sid} keyUsage lacks digitalSignature", reason="no_digital_signature"
        )
    if usage.key_cert_sign:
        raise VerificationError(
            f"leaf for {sid} keyUsage asserts keyCertSign", reason="key_cert_sign"
        )
    if usage.crl_sign:
        raise VerificationError(f"leaf for {sid} keyUsage asserts cRLSign", reason="crl_sign")
    return sid


def verify_x509_svid(
    chain: Sequence[x509.Certificate],
    bundles: Mapping[str, Sequence[x509.Certificate]],
    *,
    now: dt.datetime | None = None,
) -> SpiffeId:
    """Verify a peer chain (leaf first, then intermediates, maybe the root) and return its ID.

    ``bundles`` maps trust-domain name (``example.org``) to that domain's CA certificates. ``now``
    defaults to the current time; a naive datetime is taken as UTC. Only ``VerificationError``
    ever escapes: anything unexpected is wrapped as ``verification_error`` (fail closed).
    """
    try:
        return _verify(chain, bundles, now)
    except VerificationError:
        raise
    except Exception as exc:
        raise VerificationError(
            f"unexpected error while verifying the peer chain: {type(exc).__name__}: {exc}"
        ) from exc


def verify_x509_svid_der(
    chain_der: Sequence[bytes],
    bundles: Mapping[str, Sequence[x509.Certificate]],
    *,
    now: dt.datetime | None = None,
) -> SpiffeId:
    """``verify_x509_svid`` for the DER certificates that ``ssl`` hands out."""
    if len(chain_der) > MAX_PEER_CERTIFICATES:
        raise _too_many(len(chain_der))
    chain: list[x509.Certificate] = []
    for index, der in enumerate(chain_der):
        try:
            chain.append(x509.load_der_x509_certificate(bytes(der)))
        except Exception as exc:  # ValueError for bad DER, TypeError for a non-bytes item
            raise VerificationError(
                f"peer certificate #{index} is not valid DER: {exc}", reason="malformed_certificate"
            ) from exc
    return verify_x509_svid(chain, bundles, now=now)


# -- path validation -------------------------------------------------------------------------------
#
# cryptography's client verifier does RFC 5280 path building/validation (signatures, issuer
# chaining, validity of every certificate, cA/pathLen/keyCertSign on CAs, name constraints,
# unknown critical extensions) with CA/Browser-Forum ("web PKI") extension profiles on top. We keep
# those profiles except where they encode web-PKI rules that SPIFFE does not have:
#
# * EKU (leaf and CA): the client verifier demands id-kp-clientAuth, but this function verifies
#   servers too, and the X509-SVID spec does not require any EKU. Direction-specific EKU is already
#   enforced by OpenSSL's purpose check at the handshake.
# * subjectAltName on the leaf: web PKI requires it critical when the subject is empty; SPIFFE does
#   not, and the URI SAN rules are checked by ``verify_leaf`` (which runs first) anyway.
# * authorityKeyIdentifier on the leaf: web PKI requires it; chaining here is by name + signature,
#   so it is optional (it must still be non-critical when present).
#
# Done by hand because the verifier cannot express it:
# * the leaf's own validity window, to report ``expired`` / ``not_yet_valid`` distinctly;
# * the leaf being a trust anchor itself: cryptography accepts a leaf that is *in* the store as
#   a one-certificate chain; an X509-SVID must be issued by a bundle CA, so that is refused.
#
# Known limits (fail closed, as ``untrusted_chain``): CAs with URI name constraints ("unsupported
# name constraint"), Ed25519 CA keys, and RSA CA keys below 2048 bits are not accepted.

_EE_POLICY = (
    x509v.ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.ExtendedKeyUsage, x509v.Criticality.AGNOSTIC, None)
    .may_be_present(x509.SubjectAlternativeName, x509v.Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, x509v.Criticality.NON_CRITICAL, None)
)
_CA_POLICY = x509v.ExtensionPolicy.webpki_defaults_ca().may_be_present(
    x509.ExtendedKeyUsage, x509v.Criticality.AGNOSTIC, None
)


def _verify(
    chain: Sequence[x509.Certificate],
    bundles: Mapping[str, Sequence[x509.Certificate]],
    now: dt.datetime | None,
) -> SpiffeId:
    if not chain:
        raise VerificationError("the peer presented no certificate", reason="empty_chain")
    if len(chain) > MAX_PEER_CERTIFICATES:
        raise _too_many(len(chain))
    leaf, intermediates = chain[0], list(chain[1:])
    sid = verify_leaf(leaf)
    now = _utc(now)
    if now > leaf.not_valid_after_utc:
        raise VerificationError(
            f"leaf for {sid} expired at {leaf.not_valid_after_utc.isoformat()}", reason="expired"
        )
    if now < leaf.not_valid_before_utc:
        raise VerificationError(
            f"leaf for {sid} is not valid before {leaf.not_valid_before_utc.isoformat()}",
            reason="not_yet_valid",
        )
    cas = list(bundles.get(sid.trust_domain, ()))
    if not cas:
        raise VerificationError(
            f"no trust bundle for trust domain {sid.trust_domain!r} of {sid}",
            reason="unknown_trust_domain",
        )
    verifier = (
        x509v.PolicyBuilder()
        .store(x509v.Store(cas))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates)
    except x509v.VerificationError as exc:
        raise VerificationError(
            f"chain of {sid} does not validate against the {sid.trust_domain!r} bundle: {exc}",
            reason="untrusted_chain",
        ) from exc
    if len(verified.chain) < 2:
        raise VerificationError(
            f"leaf for {sid} is itself a bundle certificate, not issued by a bundle CA",
            reason="untrusted_chain",
        )
    return sid


def _leaf_spiffe_id(extensions: x509.Extensions) -> SpiffeId:
    san = _extension(extensions, x509.SubjectAlternativeName)
    uris = [] if san is None else san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise VerificationError("leaf certificate has no URI SAN", reason="no_uri_san")
    if len(uris) > 1:
        raise VerificationError(
            f"leaf certificate has {len(uris)} URI SANs; an X509-SVID has exactly one",
            reason="multiple_uri_sans",
        )
    try:
        return SpiffeId.parse_workload(uris[0])
    except SpiffeIdError as exc:
        raise VerificationError(
            f"leaf URI SAN is not a workload SPIFFE ID: {exc.message}",
            reason="invalid_spiffe_id",
            detail=exc.reason,
        ) from exc


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _utc(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        return now.replace(tzinfo=dt.UTC)
    return now.astimezone(dt.UTC)


def _too_many(count: int) -> VerificationError:
    return VerificationError(
        f"peer sent {count} certificates; at most {MAX_PEER_CERTIFICATES} are accepted",
        reason="untrusted_chain",
    )
