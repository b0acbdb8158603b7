"""TLS on top of the live identity source: rotation, Workload API outage, CA removal.

Everything is real: the dev Workload API over gRPC on a unix socket, our source, ``RotatingTls``
and TLS handshakes on loopback.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.identity.workload_api import Backoff, WorkloadApiSource
from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist
from sidecar.tls.contexts import ContextSet, RotatingTls
from tests.certfactory import CertFactory, IssuedCert
from tests.polling import until
from tests.tlsharness import VerifyingServer, attempt, client_context, connect

TD = "example.org"
SERVER_ID = f"spiffe://{TD}/ns/mcp/sa/math"
AGENT_ID = f"spiffe://{TD}/ns/agents/sa/agent"
WAIT = 15.0
TTL = dt.timedelta(seconds=4)


@dataclass
class Live:
    ca: DevCA
    api: DevWorkloadApi
    source: WorkloadApiSource
    tls: RotatingTls
    server: VerifyingServer
    url: str
    state: Path


@pytest.fixture
async def live(short_dir: Path) -> AsyncIterator[Live]:
    state = short_dir / "state"
    ca = DevCA.load_or_create(state, TD)
    url = f"unix://{short_dir}/server.sock"
    api = DevWorkloadApi(ca, {url: SERVER_ID}, x509_ttl=TTL)
    await api.start()
    source = WorkloadApiSource(url, backoff=Backoff(initial=0.05, maximum=0.5))
    await source.start()
    tls = RotatingTls(await source.wait_ready(WAIT))
    source.subscribe(tls.update)
    allow = Allowlist.from_strings([f"spiffe://{TD}/ns/agents/*/*"])
    server = await VerifyingServer(tls, allow).start()
    yield Live(ca, api, source, tls, server, url, state)
    await server.close()
    await source.close()
    await api.stop()


def agent_context(live: Live, tmp_path: Path) -> ssl.SSLContext:
    """An agent client presenting a dev-CA SVID and trusting the dev CA."""
    chain, key = live.ca.issue_x509_svid(SpiffeId.parse(AGENT_ID), dt.timedelta(hours=1))
    return client_context(tmp_path, IssuedCert(chain[0], key), trusted=(live.ca.ca_cert,))


async def test_rotation_serves_new_certificate_and_keeps_open_connections(
    live: Live, tmp_path: Path
) -> None:
    ctx = agent_context(live, tmp_path)
    old = await connect(live.server.port, ctx)
    assert old.greeting == f"OK {AGENT_ID}"
    first_serial = old.server_serial()
    snapshot = live.source.snapshot
    assert snapshot is not None and first_serial == snapshot.svid.serial_number

    # The dev API pushes a new SVID at half-life (2 s); wait (bounded) for the source to see it.
    rotated = await live.source.wait_for(lambda s: s.svid.serial_number != first_serial, WAIT)
    new = await connect(live.server.port, ctx)
    assert new.greeting == f"OK {AGENT_ID}"
    assert new.server_serial() == rotated.svid.serial_number != first_serial
    # The connection opened before the rotation is undisturbed.
    assert await old.echo("still here") == "ECHO still here"
    assert old.server_serial() == first_serial
    await old.close()
    await new.close()


async def test_outage_keeps_serving_cached_svid_then_recovers(live: Live, tmp_path: Path) -> None:
    ctx = agent_context(live, tmp_path)
    await live.api.stop()
    await until(lambda: not live.source.x509_stream_connected, "the stream to drop")
    cached = live.source.snapshot
    assert cached is not None and live.source.ready
    conn = await connect(live.server.port, ctx)  # handshakes keep working on the cached SVID
    assert conn.greeting == f"OK {AGENT_ID}"
    assert conn.server_serial() == cached.svid.serial_number
    await conn.close()

    restarted = DevWorkloadApi(
        DevCA.load_or_create(live.state, TD), {live.url: SERVER_ID}, x509_ttl=TTL
    )
    async with restarted:
        fresh = await live.source.wait_for(lambda s: s is not cached, WAIT)
        again = await connect(live.server.port, ctx)
        assert again.greeting == f"OK {AGENT_ID}"
        assert again.server_serial() == fresh.svid.serial_number
        await again.close()


async def test_ca_removed_from_bundle_is_no_longer_trusted(live: Live, tmp_path: Path) -> None:
    extra = CertFactory.root(TD, common_name="second CA of the same trust domain")
    client = client_context(tmp_path, extra.issue_leaf(AGENT_ID))

    live.api.set_extra_cas([extra.cert])
    await live.source.wait_for(lambda s: extra.cert in s.bundles[TD], WAIT)
    assert await attempt(live.server.port, client) == f"OK {AGENT_ID}"

    live.api.set_extra_cas([])
    await live.source.wait_for(lambda s: extra.cert not in s.bundles[TD], WAIT)
    reply = await attempt(live.server.port, client)
    # Refused by OpenSSL at the handshake: the listener switched to a context without that CA.
    assert reply.startswith("HANDSHAKE_FAILED"), reply
    assert live.server.accepted == [AGENT_ID]


async def test_removed_ca_is_refused_even_by_a_stale_context(live: Live, tmp_path: Path) -> None:
    """Defence in depth: a handshake completed on a context built before the CA was removed is
    still refused by the post-handshake check, which always uses the current bundles."""
    extra = CertFactory.root(TD, common_name="second CA of the same trust domain")
    live.api.set_extra_cas([extra.cert])
    with_extra = await live.source.wait_for(lambda s: extra.cert in s.bundles[TD], WAIT)
    stale = RotatingTls(with_extra)
    stale_server = await VerifyingServer(stale).start()
    live.api.set_extra_cas([])
    current = await live.source.wait_for(lambda s: extra.cert not in s.bundles[TD], WAIT)
    stale._current = ContextSet(current, stale.current.server, stale.current.client)
    try:
        reply = await attempt(
            stale_server.port, client_context(tmp_path, extra.issue_leaf(AGENT_ID))
        )
        assert reply == "DENY untrusted_chain"
    finally:
        await stale_server.close()
