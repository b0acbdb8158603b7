"""Interop with a real Envoy, both directions, certificates from the mesh's dev CA.

* Envoy as the agent-side proxy (plain HTTP in, mTLS out with an SVID of its own, accepting only
  our server's URI SAN) talks to OUR inbound sidecar: allowlisted -> 200 with our XFCC naming
  Envoy's SPIFFE ID; not allowlisted -> our 403 JSON comes back through Envoy.
* OUR outbound sidecar talks to an Envoy inbound listener that verifies clients with Envoy's own
  SPIFFE validator (``envoy.tls.cert_validator.spiffe``) and sets XFCC itself: 200 with Envoy's XFCC
  naming our agent; a route expecting another server ID -> our 502; a client whose certificate
  comes from another CA (or no certificate) never gets through Envoy's handshake.

Each XFCC is compared with the exact value, including ``Hash=`` (hex SHA-256 of the peer's DER
leaf): Envoy's format and ours must be the same string for the same peer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.alerts import CERTIFICATE_ALERTS
from tests.certfactory import CertFactory
from tests.interop.envoy import (
    ENVOY_UNAVAILABLE,
    WAIT,
    Envoy,
    TlsFiles,
    egress_bootstrap,
    ingress_bootstrap,
    running_envoy,
    write_pem_files,
)
from tests.proxy.mesh import AGENT, SERVER, TD, Mesh, outbound_config

pytestmark = pytest.mark.skipif(
    ENVOY_UNAVAILABLE is not None, reason=f"Envoy cannot run here: {ENVOY_UNAVAILABLE}"
)

ENVOY_AGENT = f"spiffe://{TD}/ns/agents/sa/envoy-agent"  # allowlisted by ns/agents/*/*
ENVOY_ROGUE = f"spiffe://{TD}/ns/rogue/sa/x"
ENVOY_SERVER = f"spiffe://{TD}/ns/mcp/sa/envoy-server"
TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@dataclass(frozen=True)
class Svid:
    files: TlsFiles
    leaf: x509.Certificate

    @property
    def sha256(self) -> str:
        return sha256_of(self.leaf)


def sha256_of(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def issue(mesh: Mesh, directory: Path, stem: str, spiffe_id: str) -> Svid:
    """An SVID from the mesh's dev CA, as PEM files (bundle = the dev CA certificate)."""
    ca = mesh.api.ca
    chain, key = ca.issue_x509_svid(SpiffeId.parse(spiffe_id), dt.timedelta(hours=1))
    return Svid(write_pem_files(directory, stem, chain, key, [ca.ca_cert]), chain[0])


async def wait_counter(envoy: Envoy, name: str, expected: int) -> int:
    """Poll an Envoy counter (bounded) until it reaches ``expected``; return its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    value = await envoy.counter(name)
    while value < expected and loop.time() < deadline:
        await asyncio.sleep(0.05)
        value = await envoy.counter(name)
    return value


# ---------------------------------------------------------------- Envoy -> our inbound sidecar


async def test_envoy_client_reaches_our_inbound_and_is_named_in_xfcc(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    svid = issue(mesh, tmp_path, "envoy-agent", ENVOY_AGENT)
    config = egress_bootstrap(svid.files, mesh.inbound_port, SERVER)
    async with running_envoy(config, tmp_path / "envoy") as envoy:
        url = f"http://127.0.0.1:{envoy.port('egress')}/mcp?x=1"
        async with client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}) as resp:
            assert resp.status == 200, await resp.text()
            echoed = await resp.json()
    assert echoed["path"] == "/mcp?x=1"
    assert len(mesh.upstream.requests) == 1
    xfcc = mesh.upstream.requests[0].headers["x-forwarded-client-cert"]
    assert xfcc == [f"By={SERVER};Hash={svid.sha256};URI={ENVOY_AGENT}"]


async def test_envoy_client_not_allowlisted_gets_our_403_through_envoy(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    svid = issue(mesh, tmp_path, "envoy-rogue", ENVOY_ROGUE)
    config = egress_bootstrap(svid.files, mesh.inbound_port, SERVER)
    async with running_envoy(config, tmp_path / "envoy") as envoy:
        url = f"http://127.0.0.1:{envoy.port('egress')}/mcp"
        async with client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}) as resp:
            assert resp.status == 403
            assert resp.content_type == "application/json"
            body = await resp.json()
    assert body["error"] == "not_allowlisted"
    assert ENVOY_ROGUE in body["message"]
    assert mesh.upstream.requests == []


async def test_envoy_refuses_our_inbound_when_its_uri_san_is_not_the_expected_one(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Proves Envoy really checks our server's SVID with match_typed_subject_alt_names.
    svid = issue(mesh, tmp_path, "envoy-agent", ENVOY_AGENT)
    config = egress_bootstrap(svid.files, mesh.inbound_port, f"spiffe://{TD}/ns/mcp/sa/other")
    async with running_envoy(config, tmp_path / "envoy") as envoy:
        url = f"http://127.0.0.1:{envoy.port('egress')}/mcp"
        async with client.post(url, data=b"{}") as resp:
            assert resp.status == 503  # Envoy's own "upstream connect error ... TLS_error"
        assert await wait_counter(envoy, "cluster.peer.ssl.fail_verify_san", 1) >= 1
    assert mesh.upstream.requests == []


# -------------------------------------------------------- our outbound sidecar -> Envoy inbound


async def test_our_outbound_reaches_envoy_inbound_and_envoy_names_our_agent(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    svid = issue(mesh, tmp_path, "envoy-server", ENVOY_SERVER)
    config = ingress_bootstrap(svid.files, TD, mesh.upstream.port)
    async with running_envoy(config, tmp_path / "envoy") as envoy:
        outbound = await mesh.sidecar(
            outbound_config(mesh.sockets["agent"], envoy.port("ingress"), server_id=ENVOY_SERVER)
        )
        url = f"http://127.0.0.1:{outbound.port('outbound')}/math/mcp"
        async with client.post(
            url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"X-Forwarded-Client-Cert": f"URI=spiffe://{TD}/ns/admin/sa/forged"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            echoed = await resp.json()
    assert echoed["path"] == "/mcp"
    agent_leaf = mesh.api.current_svid(AGENT).leaf
    assert len(mesh.upstream.requests) == 1
    xfcc = mesh.upstream.requests[0].headers["x-forwarded-client-cert"]
    # SANITIZE_SET drops the client's header; Envoy always adds By= (its own URI SAN) and Hash=.
    assert xfcc == [f"By={ENVOY_SERVER};Hash={sha256_of(agent_leaf)};URI={AGENT}"]


async def test_our_outbound_refuses_envoy_with_unexpected_spiffe_id(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    svid = issue(mesh, tmp_path, "envoy-server", ENVOY_SERVER)
    config = ingress_bootstrap(svid.files, TD, mesh.upstream.port)
    async with running_envoy(config, tmp_path / "envoy") as envoy:
        outbound = await mesh.sidecar(
            outbound_config(mesh.sockets["agent"], envoy.port("ingress"), server_id=SERVER)
        )
        url = f"http://127.0.0.1:{outbound.port('outbound')}/math/mcp"
        async with client.post(url, data=b"{}") as resp:
            assert resp.status == 502
            assert (await resp.json())["error"] == "upstream_identity_mismatch"
    assert mesh.upstream.requests == []


async def test_envoy_refusing_our_certificate_is_named_by_its_alert(
    mesh: Mesh, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Envoy's own SVID is from the mesh CA (so we accept it), but it trusts another CA only.
    ca = mesh.api.ca
    chain, key = ca.issue_x509_svid(SpiffeId.parse(ENVOY_SERVER), dt.timedelta(hours=1))
    stranger_ca = CertFactory.root(TD).cert
    files = write_pem_files(tmp_path, "envoy-server", chain, key, [stranger_ca])
    async with running_envoy(
        ingress_bootstrap(files, TD, mesh.upstream.port), tmp_path / "envoy"
    ) as envoy:
        outbound = await mesh.sidecar(
            outbound_config(mesh.sockets["agent"], envoy.port("ingress"), server_id=ENVOY_SERVER)
        )
        url = f"http://127.0.0.1:{outbound.port('outbound')}/math/mcp"
        async with client.post(url, data=b"{}") as resp:
            assert resp.status == 502
            body = await resp.json()
        assert await wait_counter(envoy, "listener.ingress.ssl.fail_verify_error", 1) >= 1
    # Envoy 1.40 says certificate_unknown; any certificate alert names the refusal
    assert body["error"].startswith("upstream_tls_refused_"), body
    assert body["error"].removeprefix("upstream_tls_refused_") in CERTIFICATE_ALERTS
    assert "refused our client certificate" in body["message"]
    assert mesh.upstream.requests == []


# ------------------------------------------- SNI: an Envoy listener that picks its chain by name

GATEWAY_NAME = "math.mcp.svc"


@pytest.mark.parametrize(
    ("host", "route", "reached"),
    [
        pytest.param("127.0.0.1", {"sni": GATEWAY_NAME}, True, id="sni-key"),
        pytest.param("localhost", {}, True, id="upstream-host-name"),
        pytest.param("127.0.0.1", {}, False, id="ip-literal-sends-none"),
        pytest.param("localhost", {"sni": "other.mcp.svc"}, False, id="other-name"),
    ],
)
async def test_envoy_listener_matching_on_sni_sees_our_server_name(
    mesh: Mesh,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    host: str,
    route: dict[str, str],
    reached: bool,
) -> None:
    svid = issue(mesh, tmp_path, "envoy-server", ENVOY_SERVER)
    config = ingress_bootstrap(
        svid.files, TD, mesh.upstream.port, server_names=[GATEWAY_NAME, "localhost"]
    )
    async with running_envoy(config, tmp_path / "envoy") as envoy:
        sidecar_config = outbound_config(
            mesh.sockets["agent"], envoy.port("ingress"), server_id=ENVOY_SERVER, route=route
        )
        sidecar_config["outbound"]["routes"][0]["upstream"] = (
            f"https://{host}:{envoy.port('ingress')}"
        )
        outbound = await mesh.sidecar(sidecar_config)
        url = f"http://127.0.0.1:{outbound.port('outbound')}/math/mcp"
        async with client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}) as resp:
            status = resp.status
            body = await resp.read()
        unmatched = await envoy.counter("listener.ingress.no_filter_chain_match")
    if reached:
        assert status == 200, body
        assert unmatched == 0
        assert len(mesh.upstream.requests) == 1
    else:
        assert status == 502, body
        assert unmatched >= 1  # Envoy itself found no chain for the name we sent
        assert mesh.upstream.requests == []


# ------------------------------------------------ Envoy's SPIFFE validator, seen by a plain client


@dataclass
class Attempt:
    """How far one plain TLS client got: handshake, response bytes, or the error that stopped it."""

    handshake_done: bool = False
    response: bytes = b""
    error: ssl.SSLError | ConnectionError | None = None


def https_get(
    port: int, bundle: Path, cert: tuple[Path, Path] | None, tls: ssl.TLSVersion
) -> Attempt:
    """One blocking ``GET /plain`` over exactly TLS version ``tls`` (run it in a thread)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # Envoy's SVID has a URI SAN only; the chain is still verified
    ctx.load_verify_locations(bundle)
    ctx.minimum_version = ctx.maximum_version = tls
    ctx.set_alpn_protocols(["http/1.1"])
    if cert is not None:
        ctx.load_cert_chain(*cert)
    attempt = Attempt()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw,
            ctx.wrap_socket(raw) as conn,
        ):
            attempt.handshake_done = True
            conn.sendall(b"GET /plain HTTP/1.1\r\nHost: envoy\r\nConnection: close\r\n\r\n")
            while chunk := conn.recv(65536):
                attempt.response += chunk
    except (ssl.SSLError, ConnectionError) as exc:
        attempt.error = exc
    return attempt


@pytest.mark.parametrize("tls", TLS_VERSIONS, ids=lambda v: v.name)
async def test_envoy_spiffe_validator_accepts_a_plain_client_with_a_dev_ca_svid(
    mesh: Mesh, tmp_path: Path, tls: ssl.TLSVersion
) -> None:
    # The control for the rejections below: same client code, genuine SVID.
    server = issue(mesh, tmp_path, "envoy-server", ENVOY_SERVER)
    agent = issue(mesh, tmp_path, "agent", AGENT)
    async with running_envoy(
        ingress_bootstrap(server.files, TD, mesh.upstream.port), tmp_path / "envoy"
    ) as envoy:
        cert = (agent.files.chain, agent.files.key)
        attempt = await asyncio.to_thread(
            https_get, envoy.port("ingress"), server.files.bundle, cert, tls
        )
        assert await envoy.counter("http.ingress.downstream_rq_total") == 1
    assert attempt.error is None and attempt.handshake_done
    assert attempt.response.startswith(b"HTTP/1.1 200 ")
    xfcc = mesh.upstream.requests[0].headers["x-forwarded-client-cert"]
    assert xfcc == [f"By={ENVOY_SERVER};Hash={agent.sha256};URI={AGENT}"]


@pytest.mark.parametrize("tls", TLS_VERSIONS, ids=lambda v: v.name)
@pytest.mark.parametrize(
    ("client_cert", "counter"),
    [
        pytest.param("other_ca", "listener.ingress.ssl.fail_verify_error", id="other_ca"),
        pytest.param("none", "listener.ingress.ssl.fail_verify_no_cert", id="no_cert"),
    ],
)
async def test_envoy_spiffe_validator_rejects_client_without_a_trusted_svid(
    mesh: Mesh, tmp_path: Path, tls: ssl.TLSVersion, client_cert: str, counter: str
) -> None:
    server = issue(mesh, tmp_path, "envoy-server", ENVOY_SERVER)
    cert: tuple[Path, Path] | None = None
    if client_cert == "other_ca":
        # Same trust domain name and SPIFFE ID as our agent, signed by a CA Envoy never heard of.
        cert = CertFactory.root(TD).issue_leaf(AGENT).write(tmp_path, "forged")
    async with running_envoy(
        ingress_bootstrap(server.files, TD, mesh.upstream.port), tmp_path / "envoy"
    ) as envoy:
        attempt = await asyncio.to_thread(
            https_get, envoy.port("ingress"), server.files.bundle, cert, tls
        )
        assert await wait_counter(envoy, counter, 1) == 1
        assert await envoy.counter("http.ingress.downstream_rq_total") == 0
    assert attempt.error is not None, attempt
    assert attempt.response == b""
    # TLS 1.2: the server's verdict is part of the handshake. TLS 1.3: the client's handshake is
    # over before the server has judged the client certificate, so the refusal (alert, or EOF)
    # only shows on the first read.
    assert attempt.handshake_done is (tls is ssl.TLSVersion.TLSv1_3)
    assert mesh.upstream.requests == []
