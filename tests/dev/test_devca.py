"""The dev CA: persistence and the exact shape of what it issues (SPIRE's X509-SVID profile)."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path
from typing import TypeVar

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from sidecar.dev.devca import DevCA, DevCAError
from sidecar.identity.snapshot import split_der_certificates
from sidecar.spiffe.ids import SpiffeId

TD = "example.org"
WORKLOAD = SpiffeId.parse("spiffe://example.org/ns/agents/sa/agent")


ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, cls: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return cert.extensions.get_extension_for_class(cls)


# ------------------------------------------------------------------------------------ persistence


def test_state_persists_across_load_or_create(tmp_path: Path) -> None:
    first = DevCA.load_or_create(tmp_path / "state", TD)
    second = DevCA.load_or_create(tmp_path / "state", TD)
    assert second.ca_cert == first.ca_cert
    assert second.jwt_kid == first.jwt_kid
    assert second.jwt_bundle_json() == first.jwt_bundle_json()
    assert second.state_dir == tmp_path / "state"
    # A JWT signed before the reload verifies with the reloaded key.
    token = first.issue_jwt_svid(WORKLOAD, ["aud"], dt.timedelta(minutes=1))
    jwt.decode(token, second.jwt_public_key, algorithms=["ES256"], audience="aud")


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    DevCA.load_or_create(tmp_path / "state", TD)
    for name in ("ca-key.pem", "jwt-key.pem"):
        mode = stat.S_IMODE((tmp_path / "state" / name).stat().st_mode)
        assert mode == 0o600, name
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) & 0o077 == 0


def test_state_dir_of_another_trust_domain_is_refused(tmp_path: Path) -> None:
    DevCA.load_or_create(tmp_path / "state", TD)
    with pytest.raises(DevCAError, match=r"trust domain 'example\.org', not 'other\.org'"):
        DevCA.load_or_create(tmp_path / "state", "other.org")


def test_jwt_alg_applies_on_creation_only(tmp_path: Path) -> None:
    created = DevCA.load_or_create(tmp_path / "state", TD, jwt_alg="RS256")
    assert isinstance(created.jwt_public_key, rsa.RSAPublicKey)
    assert DevCA.load_or_create(tmp_path / "state", TD).jwt_alg == "RS256"
    with pytest.raises(DevCAError, match="RS256 JWT key, not ES256"):
        DevCA.load_or_create(tmp_path / "state", TD, jwt_alg="ES256")


@pytest.mark.parametrize("bad", ["HS256", "none", "ES384"])
def test_unsupported_jwt_alg(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DevCAError, match="unsupported JWT algorithm"):
        DevCA.load_or_create(tmp_path / "state", TD, jwt_alg=bad)


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    DevCA.load_or_create(tmp_path / "state", TD)
    (tmp_path / "state" / "ca-key.pem").write_text("garbage")
    with pytest.raises(DevCAError, match="is unusable"):
        DevCA.load_or_create(tmp_path / "state", TD)


def test_mismatched_ca_key_is_refused(tmp_path: Path) -> None:
    DevCA.load_or_create(tmp_path / "a", TD)
    DevCA.load_or_create(tmp_path / "b", TD)
    (tmp_path / "a" / "ca-key.pem").write_bytes((tmp_path / "b" / "ca-key.pem").read_bytes())
    with pytest.raises(DevCAError, match="does not match"):
        DevCA.load_or_create(tmp_path / "a", TD)


def test_state_file_records_trust_domain_and_kid(tmp_path: Path) -> None:
    ca = DevCA.load_or_create(tmp_path / "state", TD)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["trust_domain"] == TD
    assert state["jwt_kid"] == ca.jwt_kid
    assert state["jwt_alg"] == "ES256"


def test_invalid_trust_domain_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="invalid characters"):
        DevCA.load_or_create(tmp_path / "state", "Example.org")


# ------------------------------------------------------------------------------------ CA shape


def test_ca_certificate_shape(ca: DevCA) -> None:
    cert = ca.ca_cert
    assert cert.subject == cert.issuer
    cert.verify_directly_issued_by(cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime > dt.timedelta(days=300)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "SPIFFE"


def test_x509_bundle_is_der_of_the_ca(ca: DevCA) -> None:
    assert split_der_certificates(ca.x509_bundle_der()) == (ca.ca_cert,)
    assert ca.trust_domain_id == "spiffe://example.org"


# ------------------------------------------------------------------------------------ X509-SVID


def test_x509_svid_has_the_svid_shape(ca: DevCA) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    chain, key = ca.issue_x509_svid(WORKLOAD, dt.timedelta(hours=1))
    assert len(chain) == 1
    leaf = chain[0]
    leaf.verify_directly_issued_by(ca.ca_cert)
    assert leaf.public_key() == key.public_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"

    san = _ext(leaf, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(WORKLOAD))]
    bc = _ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(leaf, x509.KeyUsage)
    assert ku.critical
    assert ku.value.digital_signature
    assert ku.value.key_encipherment and ku.value.key_agreement
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = _ext(leaf, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    aki = _ext(leaf, x509.AuthorityKeyIdentifier).value
    ca_ski = _ext(ca.ca_cert, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = _ext(leaf, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    assert leaf.not_valid_before_utc < before
    expected_end = before + dt.timedelta(hours=1)
    assert expected_end - dt.timedelta(minutes=1) < leaf.not_valid_after_utc
    assert leaf.not_valid_after_utc <= expected_end + dt.timedelta(minutes=1)
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "SPIRE"


def test_each_svid_has_a_fresh_key_and_serial(ca: DevCA) -> None:
    (a,), key_a = ca.issue_x509_svid(WORKLOAD, dt.timedelta(hours=1))
    (b,), key_b = ca.issue_x509_svid(WORKLOAD, dt.timedelta(hours=1))
    assert a.serial_number != b.serial_number
    assert key_a.public_key() != key_b.public_key()


def test_svid_passes_rfc5280_client_path_validation(ca: DevCA) -> None:
    chain, _ = ca.issue_x509_svid(WORKLOAD, dt.timedelta(hours=1))
    verifier = PolicyBuilder().store(Store([ca.ca_cert])).build_client_verifier()
    verified = verifier.verify(chain[0], [])
    assert verified.chain[-1] == ca.ca_cert
    assert verified.subjects == [x509.UniformResourceIdentifier(str(WORKLOAD))]


def test_svid_never_outlives_the_ca() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "short-lived")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=10))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    base = DevCA.generate(TD)
    short = DevCA(
        trust_domain=TD,
        ca_key=key,
        ca_cert=ca_cert,
        jwt_alg="ES256",
        jwt_key=ec.generate_private_key(ec.SECP256R1()),
        jwt_kid=base.jwt_kid,
    )
    (leaf,), _ = short.issue_x509_svid(WORKLOAD, dt.timedelta(hours=1))
    assert leaf.not_valid_after_utc == ca_cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("sid", "message"),
    [
        ("spiffe://other.org/ns/a", "not in trust domain"),
        ("spiffe://example.org", "names a trust domain"),
    ],
)
def test_issue_refuses_ids_outside_the_trust_domain(ca: DevCA, sid: str, message: str) -> None:
    with pytest.raises(DevCAError, match=message):
        ca.issue_x509_svid(SpiffeId.parse(sid), dt.timedelta(hours=1))
    with pytest.raises(DevCAError, match=message):
        ca.issue_jwt_svid(SpiffeId.parse(sid), ["aud"], dt.timedelta(minutes=1))


def test_svid_key_serialises_as_pkcs8(ca: DevCA) -> None:
    _, key = ca.issue_x509_svid(WORKLOAD, dt.timedelta(hours=1))
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert serialization.load_der_private_key(der, None).public_key() == key.public_key()


# ------------------------------------------------------------------------------------ JWT


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_jwt_svid_shape_and_jwks(alg: str) -> None:
    ca = DevCA.generate(TD, jwt_alg=alg)
    token = ca.issue_jwt_svid(
        WORKLOAD, ["spiffe://example.org/ns/mcp/sa/math", "b"], dt.timedelta(minutes=5)
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": ca.jwt_kid, "typ": "JWT"}

    jwks = json.loads(ca.jwt_bundle_json())
    assert [k["kid"] for k in jwks["keys"]] == [ca.jwt_kid]
    assert jwks["keys"][0]["use"] == "jwt-svid"
    assert jwks["keys"][0]["kty"] == ("EC" if alg == "ES256" else "RSA")
    key = jwt.PyJWKSet.from_dict(jwks)[ca.jwt_kid].key

    claims = jwt.decode(token, key, algorithms=[alg], audience="b")
    assert set(claims) == {"sub", "aud", "exp", "iat"}
    assert claims["sub"] == str(WORKLOAD)
    assert claims["aud"] == ["spiffe://example.org/ns/mcp/sa/math", "b"]
    assert 0 < claims["exp"] - claims["iat"] <= 300


def test_kid_is_random_per_ca() -> None:
    assert DevCA.generate(TD).jwt_kid != DevCA.generate(TD).jwt_kid


def test_jwt_svid_needs_an_audience(ca: DevCA) -> None:
    with pytest.raises(DevCAError, match="audience"):
        ca.issue_jwt_svid(WORKLOAD, ["", ""], dt.timedelta(minutes=1))
