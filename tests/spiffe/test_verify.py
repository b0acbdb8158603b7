"""X509-SVID verification: every leaf and chain rule is pinned by a test that names its reason."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.verify import (
    MAX_PEER_CERTIFICATES,
    VerificationError,
    verify_leaf,
    verify_x509_svid,
    verify_x509_svid_der,
)
from tests.certfactory import CertFactory, IssuedCert

A = "a.example"
B = "b.example"
ID_A = f"spiffe://{A}/ns/agents/sa/planner"
ID_B = f"spiffe://{B}/ns/mcp/sa/math"
HOUR = dt.timedelta(hours=1)

Bundles = Mapping[str, Sequence[x509.Certificate]]


@pytest.fixture(scope="module")
def root_a() -> IssuedCert:
    return CertFactory.root(A)


@pytest.fixture(scope="module")
def root_b() -> IssuedCert:
    return CertFactory.root(B)


@pytest.fixture(scope="module")
def bundles(root_a: IssuedCert, root_b: IssuedCert) -> Bundles:
    """Our domain A and federated domain B: both trusted, each for its own IDs only."""
    return {A: (root_a.cert,), B: (root_b.cert,)}


def rejected(
    chain: Sequence[x509.Certificate], bundles: Bundles, now: dt.datetime | None = None
) -> VerificationError:
    with pytest.raises(VerificationError) as err:
        verify_x509_svid(chain, bundles, now=now)
    assert err.value.status == 403
    return err.value


# -- accepted ------------------------------------------------------------------------------------


def test_leaf_issued_by_root(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A)
    assert verify_x509_svid(leaf.chain(), bundles) == SpiffeId.parse(ID_A)


def test_leaf_via_intermediate(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_intermediate().issue_leaf(ID_A)
    assert len(leaf.chain()) == 2
    assert verify_x509_svid(leaf.chain(), bundles) == SpiffeId.parse(ID_A)


def test_leaf_via_two_intermediates(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_intermediate().issue_intermediate().issue_leaf(ID_A)
    assert verify_x509_svid(leaf.chain(), bundles) == SpiffeId.parse(ID_A)


def test_chain_that_includes_the_root_is_tolerated(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_intermediate().issue_leaf(ID_A)
    assert len(leaf.full_chain()) == 3
    assert verify_x509_svid(leaf.full_chain(), bundles) == SpiffeId.parse(ID_A)


def test_bundle_certificate_may_be_an_intermediate(root_a: IssuedCert) -> None:
    """SPIRE with an UpstreamAuthority: the bundle holds a CA that is not self-signed."""
    mid = root_a.issue_intermediate()
    leaf = mid.issue_leaf(ID_A)
    only_mid = {A: (mid.cert,)}
    assert verify_x509_svid([leaf.cert], only_mid) == SpiffeId.parse(ID_A)
    assert verify_x509_svid([leaf.cert, mid.cert], only_mid) == SpiffeId.parse(ID_A)


def test_federated_id_is_validated_against_its_own_bundle(
    root_b: IssuedCert, bundles: Bundles
) -> None:
    leaf = root_b.issue_leaf(ID_B)
    assert verify_x509_svid(leaf.chain(), bundles) == SpiffeId.parse(ID_B)


def test_any_ca_of_the_bundle_will_do(root_a: IssuedCert) -> None:
    """During CA rotation a bundle holds the old and the new root."""
    new_root = CertFactory.root(A)
    rotating = {A: (root_a.cert, new_root.cert)}
    for issuer in (root_a, new_root):
        assert verify_x509_svid(issuer.issue_leaf(ID_A).chain(), rotating) == SpiffeId.parse(ID_A)


def test_rsa_keys() -> None:
    root = CertFactory.root(A, key_type="rsa")
    leaf = root.issue_intermediate(key_type="rsa").issue_leaf(ID_A, key_type="rsa")
    assert verify_x509_svid(leaf.chain(), {A: [root.cert]}) == SpiffeId.parse(ID_A)


@pytest.mark.parametrize(
    "eku",
    [
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [ExtendedKeyUsageOID.SERVER_AUTH],  # a server SVID checked by the outbound side
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        None,
    ],
)
def test_eku_is_left_to_the_tls_stack(
    root_a: IssuedCert, bundles: Bundles, eku: list[x509.ObjectIdentifier] | None
) -> None:
    leaf = root_a.issue_leaf(ID_A, eku=eku)
    assert verify_x509_svid(leaf.chain(), bundles) == SpiffeId.parse(ID_A)


def test_ca_with_eku_is_accepted(root_a: IssuedCert, bundles: Bundles) -> None:
    mid = root_a.issue_intermediate(eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert verify_x509_svid(mid.issue_leaf(ID_A).chain(), bundles) == SpiffeId.parse(ID_A)


def test_spiffe_shaped_leaf_variants(root_a: IssuedCert, bundles: Bundles) -> None:
    """Empty subject with a non-critical SAN (web PKI wants it critical), extra DNS SAN,
    basicConstraints absent, critical SAN, no AKI (web PKI requires one): all fine for SPIFFE."""
    for leaf in (
        root_a.issue_leaf(ID_A, subject=x509.Name([])),
        root_a.issue_leaf(ID_A, dns_names=["planner.agents.svc"]),
        root_a.issue_leaf(ID_A, ca=None),
        root_a.issue_leaf(ID_A, san_critical=True, subject=x509.Name([])),
        root_a.issue_leaf(ID_A, key_usage={"digital_signature"}),
        root_a.issue_leaf(ID_A, authority_key_id=False),
    ):
        assert verify_x509_svid(leaf.chain(), bundles) == SpiffeId.parse(ID_A)


def test_validation_time_is_now_parameter() -> None:
    """``now`` is used for the whole chain, so certificates from the past verify at that time."""
    t0 = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    root = CertFactory.root(A, not_before=t0, not_after=t0 + 1000 * HOUR)
    leaf = root.issue_intermediate(not_before=t0, not_after=t0 + 100 * HOUR).issue_leaf(
        ID_A, not_before=t0, not_after=t0 + 10 * HOUR
    )
    bundles = {A: [root.cert]}
    assert verify_x509_svid(leaf.chain(), bundles, now=t0 + 5 * HOUR) == SpiffeId.parse(ID_A)
    naive = (t0 + 5 * HOUR).replace(tzinfo=None)  # taken as UTC
    assert verify_x509_svid(leaf.chain(), bundles, now=naive) == SpiffeId.parse(ID_A)
    other_zone = (t0 + 5 * HOUR).astimezone(dt.timezone(dt.timedelta(hours=-9)))
    assert verify_x509_svid(leaf.chain(), bundles, now=other_zone) == SpiffeId.parse(ID_A)


def test_der_entry_point(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_intermediate().issue_leaf(ID_A)
    assert verify_x509_svid_der(leaf.chain_der(), bundles) == SpiffeId.parse(ID_A)


# A leaf issued by SPIRE (go-spiffe v2/svid/x509svid/testdata/good-key-and-cert.pem, Apache-2.0):
# KU digitalSignature+keyEncipherment+keyAgreement (critical), EKU serverAuth+clientAuth,
# cA=false (critical), SKI, AKI, one URI SAN, ecdsa-with-SHA384 by a "C=US, O=SPIFFE" CA.
SPIRE_LEAF_PEM = b"""-----BEGIN CERTIFICATE-----
MIICBjCCAYygAwIBAgIQNj0chc2GkwvkNG0vVbWuADAKBggqhkjOPQQDAzAeMQsw
CQYDVQQGEwJVUzEPMA0GA1UEChMGU1BJRkZFMB4XDTIwMDMyNDE0MTM0MVoXDTIw
MDMyNDE1MTM1MVowHTELMAkGA1UEBhMCVVMxDjAMBgNVBAoTBVNQSVJFMFkwEwYH
KoZIzj0CAQYIKoZIzj0DAQcDQgAE8ST0O2obQ9VYEyFEbiyIML7naZtAtA9DU9df
zYCeA4fHplrgk0ZL+MBXOMjCEo0fLX+jxqMpLuPy7wGfwlqRaKOBrDCBqTAOBgNV
HQ8BAf8EBAMCA6gwHQYDVR0lBBYwFAYIKwYBBQUHAwEGCCsGAQUFBwMCMAwGA1Ud
EwEB/wQCMAAwHQYDVR0OBBYEFB3UYIIkxjMf9rh9tvwj86Y24+6gMB8GA1UdIwQY
MBaAFNM1QzCBy3PuB2d3zJi6GSEqqVF5MCoGA1UdEQQjMCGGH3NwaWZmZTovL2V4
YW1wbGUub3JnL3dvcmtsb2FkLTEwCgYIKoZIzj0EAwMDaAAwZQIwKhlIltKg+K/3
W05Snv56s7X9NuUDKHjaCQsutyIiYxbxQz5jZgjafMusAwr+lMQkAjEAsY4Omqtj
MT7lix7GtnRkvgmaWRTyooxyR1C2w8PYS6lSo6FJCIV6e1EBvryj6Vm1
-----END CERTIFICATE-----
"""


def test_real_spire_leaf_passes_the_leaf_rules() -> None:
    leaf = x509.load_pem_x509_certificate(SPIRE_LEAF_PEM)
    assert verify_leaf(leaf) == SpiffeId.parse("spiffe://example.org/workload-1")


def test_verify_leaf_checks_only_the_leaf(root_a: IssuedCert) -> None:
    expired = root_a.issue_leaf(
        ID_A,
        not_before=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2000, 1, 2, tzinfo=dt.UTC),
    )
    assert verify_leaf(expired.cert) == SpiffeId.parse(ID_A)
    assert verify_leaf(CertFactory.self_signed_leaf(ID_A).cert) == SpiffeId.parse(ID_A)


# -- the chain must lead to the bundle of the leaf's own trust domain ------------------------------


def test_federated_ca_cannot_vouch_for_another_trust_domain(
    root_b: IssuedCert, bundles: Bundles
) -> None:
    """The forgery this module exists for: B's CA issues an ID in A while both are trusted."""
    forged = root_b.issue_leaf(ID_A)
    err = rejected(forged.chain(), bundles)
    assert err.reason == "untrusted_chain"
    assert repr(A) in err.message


def test_federated_intermediate_cannot_vouch_for_another_trust_domain(
    root_b: IssuedCert, bundles: Bundles
) -> None:
    forged = root_b.issue_intermediate().issue_leaf(ID_A)
    assert rejected(forged.full_chain(), bundles).reason == "untrusted_chain"


def test_own_ca_cannot_issue_ids_of_a_federated_domain(
    root_a: IssuedCert, bundles: Bundles
) -> None:
    forged = root_a.issue_leaf(ID_B)
    assert rejected(forged.chain(), bundles).reason == "untrusted_chain"


def test_unknown_trust_domain(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf("spiffe://c.example/x")
    err = rejected(leaf.chain(), bundles)
    assert err.reason == "unknown_trust_domain"
    assert "c.example" in err.message


def test_empty_bundle_counts_as_unknown_trust_domain(root_a: IssuedCert) -> None:
    leaf = root_a.issue_leaf(ID_A)
    assert rejected(leaf.chain(), {A: ()}).reason == "unknown_trust_domain"


def test_impostor_root_with_the_same_name(bundles: Bundles) -> None:
    """Same subject name as A's root, different key: only the signature tells them apart."""
    impostor = CertFactory.root(A)
    leaf = impostor.issue_leaf(ID_A)
    assert leaf.cert.issuer == bundles[A][0].subject
    assert rejected(leaf.chain(), bundles).reason == "untrusted_chain"


def test_self_signed_leaf(bundles: Bundles) -> None:
    leaf = CertFactory.self_signed_leaf(ID_A)
    assert rejected(leaf.chain(), bundles).reason == "untrusted_chain"


def test_leaf_that_is_itself_in_the_bundle(root_a: IssuedCert) -> None:
    """cryptography accepts a leaf found in the store as a one-certificate chain; we do not."""
    self_signed = CertFactory.self_signed_leaf(ID_A)
    err = rejected([self_signed.cert], {A: [self_signed.cert]})
    assert err.reason == "untrusted_chain"
    assert "itself a bundle certificate" in err.message
    issued = root_a.issue_leaf(ID_A)
    assert rejected([issued.cert], {A: [issued.cert]}).reason == "untrusted_chain"


def test_missing_intermediate(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_intermediate().issue_leaf(ID_A)
    assert rejected([leaf.cert], bundles).reason == "untrusted_chain"


@pytest.mark.parametrize("ca", [False, None], ids=["ca_false", "no_basic_constraints"])
def test_intermediate_that_is_not_a_ca(
    root_a: IssuedCert, bundles: Bundles, ca: bool | None
) -> None:
    mid = root_a.issue_intermediate(ca=ca)
    leaf = mid.issue_leaf(ID_A)
    assert rejected(leaf.chain(), bundles).reason == "untrusted_chain"


def test_leaf_signed_by_a_leaf(root_a: IssuedCert, bundles: Bundles) -> None:
    other = root_a.issue_leaf(f"spiffe://{A}/other")
    leaf = other.issue_leaf(ID_A)
    assert rejected(leaf.chain(), bundles).reason == "untrusted_chain"


def test_intermediate_without_key_cert_sign(root_a: IssuedCert, bundles: Bundles) -> None:
    mid = root_a.issue_intermediate(key_usage={"digital_signature", "crl_sign"})
    assert rejected(mid.issue_leaf(ID_A).chain(), bundles).reason == "untrusted_chain"


def test_path_length_constraint() -> None:
    root = CertFactory.root(A, path_length=0)
    leaf = root.issue_intermediate().issue_leaf(ID_A)
    assert rejected(leaf.chain(), {A: [root.cert]}).reason == "untrusted_chain"


def test_expired_intermediate(root_a: IssuedCert, bundles: Bundles) -> None:
    now = dt.datetime.now(dt.UTC)
    mid = root_a.issue_intermediate(not_before=now - 3 * HOUR, not_after=now - HOUR)
    leaf = mid.issue_leaf(ID_A, not_before=now - 2 * HOUR, not_after=now + HOUR)
    assert rejected(leaf.chain(), bundles).reason == "untrusted_chain"


def test_unknown_critical_extension_on_leaf(root_a: IssuedCert, bundles: Bundles) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf = root_a.issue_leaf(ID_A, extra_extensions=[(odd, True)])
    assert rejected(leaf.chain(), bundles).reason == "untrusted_chain"


def test_known_limit_ed25519_ca_fails_closed() -> None:
    """cryptography's verifier only allows web-PKI signature algorithms (no Ed25519 CAs)."""
    root = CertFactory.root(A, key_type="ed25519")
    assert rejected(root.issue_leaf(ID_A).chain(), {A: [root.cert]}).reason == "untrusted_chain"


def test_known_limit_uri_name_constraints_fail_closed() -> None:
    """cryptography cannot evaluate URI name constraints ("unsupported name constraint")."""
    constraint = x509.NameConstraints(
        permitted_subtrees=[x509.UniformResourceIdentifier(A)], excluded_subtrees=None
    )
    root = CertFactory.root(A, extra_extensions=[(constraint, True)])
    err = rejected(root.issue_leaf(ID_A).chain(), {A: [root.cert]})
    assert err.reason == "untrusted_chain"
    assert "name constraint" in err.message


def test_dns_name_constraints_are_enforced() -> None:
    constraint = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("svc.a.example")], excluded_subtrees=None
    )
    root = CertFactory.root(A, extra_extensions=[(constraint, True)])
    inside = root.issue_leaf(ID_A, dns_names=["x.svc.a.example"])
    assert verify_x509_svid(inside.chain(), {A: [root.cert]}) == SpiffeId.parse(ID_A)
    outside = root.issue_leaf(ID_A, dns_names=["evil.example"])
    assert rejected(outside.chain(), {A: [root.cert]}).reason == "untrusted_chain"


def test_too_many_certificates(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A)
    padded = [leaf.cert] + [root_a.cert] * MAX_PEER_CERTIFICATES
    assert rejected(padded, bundles).reason == "untrusted_chain"
    with pytest.raises(VerificationError) as err:
        verify_x509_svid_der([leaf.der()] * (MAX_PEER_CERTIFICATES + 1), bundles)
    assert err.value.reason == "untrusted_chain"


def test_empty_chain(bundles: Bundles) -> None:
    assert rejected([], bundles).reason == "empty_chain"
    with pytest.raises(VerificationError) as err:
        verify_x509_svid_der([], bundles)
    assert err.value.reason == "empty_chain"


# -- validity window of the leaf -------------------------------------------------------------------


def test_expired(root_a: IssuedCert, bundles: Bundles) -> None:
    now = dt.datetime.now(dt.UTC)
    leaf = root_a.issue_leaf(ID_A, not_before=now - 2 * HOUR, not_after=now - HOUR)
    assert rejected(leaf.chain(), bundles).reason == "expired"


def test_not_yet_valid(root_a: IssuedCert, bundles: Bundles) -> None:
    now = dt.datetime.now(dt.UTC)
    leaf = root_a.issue_leaf(ID_A, not_before=now + HOUR, not_after=now + 2 * HOUR)
    assert rejected(leaf.chain(), bundles).reason == "not_yet_valid"


def test_validity_is_checked_at_the_given_now(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A)  # valid from 5 minutes ago for an hour
    now = dt.datetime.now(dt.UTC)
    assert rejected(leaf.chain(), bundles, now=now + 2 * HOUR).reason == "expired"
    assert rejected(leaf.chain(), bundles, now=now - HOUR).reason == "not_yet_valid"


# -- leaf rules -----------------------------------------------------------------------------------


def test_two_uri_sans(root_a: IssuedCert, bundles: Bundles) -> None:
    for uris in ([ID_A, f"spiffe://{A}/second"], [ID_A, ID_A], [ID_A, "https://a.example/"]):
        leaf = root_a.issue_leaf(uris)
        assert rejected(leaf.chain(), bundles).reason == "multiple_uri_sans"


def test_no_uri_san(root_a: IssuedCert, bundles: Bundles) -> None:
    for leaf in (root_a.issue_leaf(None), root_a.issue_leaf([], dns_names=["a.example"])):
        assert rejected(leaf.chain(), bundles).reason == "no_uri_san"


@pytest.mark.parametrize(
    ("uri", "detail"),
    [
        ("https://a.example/ns/x", "bad_scheme"),
        ("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", "bad_scheme"),
        (f"spiffe://{A}", "root_path_id"),
        ("spiffe://A.example/ns/x", "bad_trust_domain_chars"),
        ("spiffe://a!example/ns/x", "bad_trust_domain_chars"),
        (f"spiffe://{A}/ns/../admin", "dot_segment"),
        (f"spiffe://{A}/ns/./x", "dot_segment"),
        (f"spiffe://{A}/ns//x", "empty_segment"),
        (f"spiffe://{A}/ns/x/", "trailing_slash"),
        (f"spiffe://{A}/ns/x%2F..", "bad_path_chars"),
        (f"spiffe://{A}:443/ns/x", "has_port"),
        (f"spiffe://{A}/ns/x?y=1", "has_query"),
    ],
)
def test_uri_san_that_is_not_a_workload_id(
    root_a: IssuedCert, bundles: Bundles, uri: str, detail: str
) -> None:
    err = rejected(root_a.issue_leaf(uri).chain(), bundles)
    assert err.reason == "invalid_spiffe_id"
    assert err.detail == detail


def test_ca_leaf(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A, ca=True)
    assert rejected(leaf.chain(), bundles).reason == "ca_leaf"


def test_key_cert_sign_leaf(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A, key_usage={"digital_signature", "key_cert_sign"})
    assert rejected(leaf.chain(), bundles).reason == "key_cert_sign"


def test_crl_sign_leaf(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A, key_usage={"digital_signature", "crl_sign"})
    assert rejected(leaf.chain(), bundles).reason == "crl_sign"


def test_no_digital_signature(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A, key_usage={"key_encipherment", "key_agreement"})
    err = rejected(leaf.chain(), bundles)
    assert err.reason == "no_digital_signature"
    assert "lacks digitalSignature" in err.message


def test_no_key_usage_at_all(root_a: IssuedCert, bundles: Bundles) -> None:
    leaf = root_a.issue_leaf(ID_A, key_usage=None)
    err = rejected(leaf.chain(), bundles)
    assert err.reason == "no_digital_signature"
    assert "no keyUsage" in err.message


def test_leaf_rules_are_checked_before_the_chain(root_b: IssuedCert, bundles: Bundles) -> None:
    """A forged *and* malformed leaf reports the leaf problem: cheapest check first."""
    leaf = root_b.issue_leaf([ID_A, ID_B])
    assert rejected(leaf.chain(), bundles).reason == "multiple_uri_sans"


# -- DER input and failing closed ------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00", b"not a certificate", b"\x30\x03\x02\x01\x01"],
    ids=["empty", "nul", "text", "tiny_sequence"],
)
def test_malformed_der(root_a: IssuedCert, bundles: Bundles, garbage: bytes) -> None:
    leaf = root_a.issue_intermediate().issue_leaf(ID_A)
    for chain in ([garbage], [leaf.der(), garbage]):
        with pytest.raises(VerificationError) as err:
            verify_x509_svid_der(chain, bundles)
        assert err.value.reason == "malformed_certificate"


def test_truncated_and_padded_der(root_a: IssuedCert, bundles: Bundles) -> None:
    der = root_a.issue_leaf(ID_A).der()
    for bad in (der[:-1], der + b"\x00"):
        with pytest.raises(VerificationError) as err:
            verify_x509_svid_der([bad], bundles)
        assert err.value.reason == "malformed_certificate"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"/ns/zz", b"/ns/\xff\xff"),  # URI SAN that is not IA5String
        (b"\x06\x03\x55\x1d\x25", b"\x06\x03\x55\x1d\x11"),  # EKU -> second SAN
    ],
    ids=["non_ascii_uri", "duplicate_san"],
)
def test_malformed_leaf_extensions(
    root_a: IssuedCert, bundles: Bundles, old: bytes, new: bytes
) -> None:
    """The DER parses (cryptography parses extensions lazily) but the extensions do not."""
    der = root_a.issue_leaf(f"spiffe://{A}/ns/zz").der()
    assert der.count(old) == 1
    with pytest.raises(VerificationError) as err:
        verify_x509_svid_der([der.replace(old, new)], bundles)
    assert err.value.reason == "malformed_certificate"


def test_non_bytes_der_item(bundles: Bundles) -> None:
    with pytest.raises(VerificationError) as err:
        verify_x509_svid_der(["text"], bundles)  # type: ignore[list-item]
    assert err.value.reason == "malformed_certificate"


def test_unexpected_errors_fail_closed(root_a: IssuedCert) -> None:
    leaf = root_a.issue_leaf(ID_A)
    err = rejected(leaf.chain(), {A: ["not a certificate"]})  # type: ignore[list-item]
    assert err.reason == "verification_error"
    assert err.status == 403


def test_error_json(root_a: IssuedCert, bundles: Bundles) -> None:
    err = rejected(root_a.issue_leaf(ID_A, ca=True).chain(), bundles)
    assert err.to_json() == {"error": "ca_leaf", "message": err.message, "status": 403}
