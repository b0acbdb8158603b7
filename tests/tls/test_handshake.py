"""Real TLS handshakes on loopback against a server built from ``sidecar.tls``.

Every negative case asserts the server's own decision (the reason it recorded), so removing the
corresponding check makes the test fail: handshake-level checks (OpenSSL with all bundles loaded)
show up as a failed handshake with nothing accepted, SPIFFE-level checks as ``DENY <reason>``.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist
from sidecar.tls.contexts import NotReady, PeerRejected, RotatingTls, build_server_context
from tests.certfactory import CertFactory, IssuedCert
from tests.tlsharness import VerifyingServer, attempt, client_context, connect, snapshot_of

TD_A = "example.org"
TD_B = "federated.test"
AGENT = f"spiffe://{TD_A}/ns/agents/sa/agent"
SERVER = f"spiffe://{TD_A}/ns/mcp/sa/math"


@dataclass
class Mesh:
    ca_a: IssuedCert
    ca_b: IssuedCert
    server_leaf: IssuedCert
    tls: RotatingTls
    server: VerifyingServer


@pytest.fixture(scope="module")
def cas() -> tuple[IssuedCert, IssuedCert]:
    return CertFactory.root(TD_A), CertFactory.root(TD_B)


@pytest.fixture
async def mesh(cas: tuple[IssuedCert, IssuedCert]) -> AsyncIterator[Mesh]:
    ca_a, ca_b = cas
    server_leaf = ca_a.issue_leaf(SERVER)
    tls = RotatingTls(snapshot_of(server_leaf, {TD_A: (ca_a.cert,), TD_B: (ca_b.cert,)}))
    allow = Allowlist.from_strings(
        [f"spiffe://{TD_A}/ns/agents/**", f"spiffe://{TD_B}/ns/agents/*"]
    )
    server = await VerifyingServer(tls, allow).start()
    yield Mesh(ca_a, ca_b, server_leaf, tls, server)
    await server.close()


async def test_valid_peer_is_accepted_and_connection_works(mesh: Mesh, tmp_path: Path) -> None:
    conn = await connect(mesh.server.port, client_context(tmp_path, mesh.ca_a.issue_leaf(AGENT)))
    assert conn.greeting == f"OK {AGENT}"
    assert await conn.echo("ping") == "ECHO ping"
    await conn.close()
    assert mesh.server.accepted == [AGENT]


async def test_federated_peer_is_accepted_with_its_own_bundle(mesh: Mesh, tmp_path: Path) -> None:
    peer = f"spiffe://{TD_B}/ns/agents/bot"
    reply = await attempt(mesh.server.port, client_context(tmp_path, mesh.ca_b.issue_leaf(peer)))
    assert reply == f"OK {peer}"


async def test_peer_via_intermediate_is_accepted(mesh: Mesh, tmp_path: Path) -> None:
    leaf = mesh.ca_a.issue_intermediate().issue_leaf(AGENT)
    assert await attempt(mesh.server.port, client_context(tmp_path, leaf)) == f"OK {AGENT}"


def _past(hours: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)


# (case id, issuing CA: "a" | "b", URI SANs, leaf options, expected server reason)
SPIFFE_LEVEL_REJECTIONS: list[tuple[str, str, Any, dict[str, Any], str]] = [
    ("cross_trust_domain_forgery", "b", AGENT, {}, "untrusted_chain"),
    ("two_uri_sans", "a", [AGENT, f"spiffe://{TD_A}/ns/agents/sa/other"], {}, "multiple_uri_sans"),
    ("no_uri_san", "a", None, {"dns_names": ["agent.example.org"]}, "no_uri_san"),
    ("non_spiffe_uri", "a", "https://example.org/ns/agents/sa/agent", {}, "invalid_spiffe_id"),
    ("root_path_id", "a", f"spiffe://{TD_A}", {}, "invalid_spiffe_id"),
    ("bad_trust_domain_chars", "a", "spiffe://Example.org/ns/agents/sa/a", {}, "invalid_spiffe_id"),
    ("dot_dot_segment", "a", f"spiffe://{TD_A}/ns/agents/../admin", {}, "invalid_spiffe_id"),
    ("ca_leaf", "a", AGENT, {"ca": True}, "ca_leaf"),
    (
        "key_cert_sign_leaf",
        "a",
        AGENT,
        {"key_usage": {"digital_signature", "key_cert_sign"}},
        "key_cert_sign",
    ),
    ("crl_sign_leaf", "a", AGENT, {"key_usage": {"digital_signature", "crl_sign"}}, "crl_sign"),
    # keyAgreement alone satisfies OpenSSL's client purpose check, so only our rule catches it.
    ("no_digital_signature", "a", AGENT, {"key_usage": {"key_agreement"}}, "no_digital_signature"),
    ("valid_but_not_allowlisted", "a", f"spiffe://{TD_A}/ns/other/sa/x", {}, "not_allowlisted"),
    ("federated_not_allowlisted", "b", f"spiffe://{TD_B}/ns/agents/a/b", {}, "not_allowlisted"),
]


@pytest.mark.parametrize(
    ("ca", "uris", "options", "reason"),
    [case[1:] for case in SPIFFE_LEVEL_REJECTIONS],
    ids=[case[0] for case in SPIFFE_LEVEL_REJECTIONS],
)
async def test_spiffe_level_rejections(
    mesh: Mesh, tmp_path: Path, ca: str, uris: Any, options: dict[str, Any], reason: str
) -> None:
    issuer = mesh.ca_a if ca == "a" else mesh.ca_b
    leaf = issuer.issue_leaf(uris, **options)
    reply = await attempt(mesh.server.port, client_context(tmp_path, leaf))
    assert reply == f"DENY {reason}"
    assert mesh.server.rejected == [reason]
    assert mesh.server.accepted == []


HANDSHAKE_LEVEL_REJECTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("expired", "a", {"not_before": _past(3), "not_after": _past(1)}),
    ("not_yet_valid", "a", {"not_before": _past(-1), "not_after": _past(-2)}),
    ("self_signed", "self", {}),
    ("unknown_ca", "stranger", {}),
]


@pytest.mark.parametrize(
    ("ca", "options"),
    [case[1:] for case in HANDSHAKE_LEVEL_REJECTIONS],
    ids=[case[0] for case in HANDSHAKE_LEVEL_REJECTIONS],
)
async def test_handshake_level_rejections(
    mesh: Mesh, tmp_path: Path, ca: str, options: dict[str, Any]
) -> None:
    if ca == "self":
        leaf = CertFactory.self_signed_leaf(AGENT, **options)
    elif ca == "stranger":
        leaf = CertFactory.root(TD_A).issue_leaf(AGENT, **options)
    else:
        leaf = mesh.ca_a.issue_leaf(AGENT, **options)
    reply = await attempt(mesh.server.port, client_context(tmp_path, leaf))
    assert reply.startswith("HANDSHAKE_FAILED"), reply
    assert mesh.server.accepted == [] and mesh.server.rejected == []


async def test_client_without_certificate_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    reply = await attempt(mesh.server.port, client_context(tmp_path, None))
    assert reply.startswith("HANDSHAKE_FAILED"), reply
    assert mesh.server.accepted == []


async def test_tls_1_2_peer_is_verified_too(mesh: Mesh, tmp_path: Path) -> None:
    forged = client_context(tmp_path, mesh.ca_b.issue_leaf(AGENT))
    forged.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await attempt(mesh.server.port, forged) == "DENY untrusted_chain"
    good = client_context(tmp_path, mesh.ca_a.issue_leaf(AGENT))
    good.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await attempt(mesh.server.port, good) == f"OK {AGENT}"


# -- client side: our client context + server identity check -------------------------------


async def _client_to(mesh: Mesh, tmp_path: Path, server_leaf: IssuedCert) -> PeerRejected | str:
    """Our client (agent identity) connecting to a plain server presenting ``server_leaf``."""
    server_tls = RotatingTls(snapshot_of(server_leaf, {TD_A: (mesh.ca_a.cert,)}))
    server = await VerifyingServer(server_tls).start()
    try:
        agent_tls = RotatingTls(
            snapshot_of(
                mesh.ca_a.issue_leaf(AGENT), {TD_A: (mesh.ca_a.cert,), TD_B: (mesh.ca_b.cert,)}
            )
        )
        conn = await connect(server.port, agent_tls.client_context())
        try:
            return str(agent_tls.verify_server(conn.ssl_object, SpiffeId.parse(SERVER)))
        except PeerRejected as exc:
            return exc
        finally:
            await conn.close()
    finally:
        await server.close()


async def test_client_accepts_the_expected_server(mesh: Mesh, tmp_path: Path) -> None:
    assert await _client_to(mesh, tmp_path, mesh.ca_a.issue_leaf(SERVER)) == SERVER


async def test_client_refuses_a_server_with_another_id(mesh: Mesh, tmp_path: Path) -> None:
    result = await _client_to(mesh, tmp_path, mesh.ca_a.issue_leaf(f"spiffe://{TD_A}/ns/mcp/sa/x"))
    assert isinstance(result, PeerRejected) and result.reason == "unexpected_server_id"


async def test_client_refuses_server_forged_by_federated_ca(mesh: Mesh, tmp_path: Path) -> None:
    # Our client trusts TD_B too (federation), and TD_B's CA issued a cert claiming SERVER.
    result = await _client_to(mesh, tmp_path, mesh.ca_b.issue_leaf(SERVER))
    assert isinstance(result, PeerRejected) and result.reason == "untrusted_chain"


# -- context properties ---------------------------------------------------------------------


def test_contexts_have_the_required_settings(mesh: Mesh) -> None:
    server_ctx = build_server_context(mesh.tls.snapshot)
    client_ctx = mesh.tls.client_context()
    for ctx in (server_ctx, client_ctx):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.check_hostname is False
        assert ctx.options & ssl.OP_NO_TICKET
        # Only our bundles are trusted: no system CAs.
        subjects = sorted(str(ca["subject"]) for ca in ctx.get_ca_certs())
        assert len(subjects) == 2
    assert server_ctx.num_tickets == 0


async def test_an_expired_own_svid_is_never_presented_nor_used(
    cas: tuple[IssuedCert, IssuedCert], tmp_path: Path
) -> None:
    """A clock past our SVID's notAfter (a Workload API outage): the listener ends every new
    handshake (with an alert) instead of presenting the expired certificate, and neither an
    outgoing connection nor a peer check may use it."""
    ca_a, _ = cas
    server_leaf = ca_a.issue_leaf(SERVER)
    now = [server_leaf.cert.not_valid_after_utc.timestamp() - 60.0]
    tls = RotatingTls(snapshot_of(server_leaf, {TD_A: (ca_a.cert,)}), clock=lambda: now[0])
    server = await VerifyingServer(tls).start()
    try:
        ctx = client_context(tmp_path, ca_a.issue_leaf(AGENT))
        # compared as a tuple: "assert not tls.expired" would narrow the property for mypy
        assert (await attempt(server.port, ctx), tls.expired) == (f"OK {AGENT}", False)
        now[0] += 60.0  # notAfter reached
        assert tls.expired
        reply = await attempt(server.port, ctx)
        assert reply.startswith("HANDSHAKE_FAILED"), reply
        assert server.accepted == [AGENT]
        for use in (tls.client_context, lambda: tls.verify_peer(None), lambda: tls.snapshot):
            with pytest.raises(NotReady) as caught:
                use()
            assert caught.value.reason == "svid_expired"
    finally:
        await server.close()
