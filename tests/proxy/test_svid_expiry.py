"""Our own SVID expires during a Workload API outage: it is never presented, nothing is forwarded.

The dev Workload API issues short-lived SVIDs to a real mesh and then goes away; once the
sidecars' SVIDs have expired (bounded polling, no timed assertion):

* a new TLS client gets no handshake from the inbound (if one completed, the certificate it saw
  must be valid: an expired one is the defect);
* a request on an inbound connection opened before the expiry gets 503 ``svid_expired`` and the
  connection is closed;
* the outbound refuses to connect (503 ``svid_expired``) and does not reuse its pooled
  connection; the inbound sees no new connection;
* the upstream receives nothing; ``mcp_sidecar_svid_expired`` is 1 and a log line says why;

and once a Workload API is back, both serve again with a valid certificate.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from sidecar.dev.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar
from sidecar.spiffe.ids import SpiffeId
from tests.certfactory import IssuedCert
from tests.polling import until
from tests.proxy.mesh import AGENT, IDENTITIES, WAIT, local_mesh
from tests.tlsharness import client_context

TTL = dt.timedelta(seconds=3)  # the SVIDs the sidecars hold when the Workload API goes away
REQUEST = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


async def readyz(session: aiohttp.ClientSession, sidecar: Sidecar) -> tuple[int, str]:
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/readyz") as resp:
        return resp.status, (await resp.json()).get("reason", "")


class TlsClient:
    """A raw TLS client (presenting a genuine agent SVID) that records the server certificate
    of every handshake it completes, with when it completed."""

    def __init__(self, ctx: ssl.SSLContext, port: int) -> None:
        self.ctx = ctx
        self.port = port
        self.seen: list[tuple[x509.Certificate, dt.datetime]] = []

    def every_certificate_was_valid_when_presented(self) -> bool:
        return all(cert.not_valid_after_utc > when for cert, when in self.seen)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx), WAIT
            )
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return None  # no handshake: nothing presented
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        self.seen.append((x509.load_der_x509_certificate(der), dt.datetime.now(dt.UTC)))
        return reader, writer

    @staticmethod
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """One request; the whole answer if the server then closes, else its first bytes."""
        writer.write(REQUEST)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            return b""
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return head + await asyncio.wait_for(reader.readexactly(length), WAIT)


async def test_expired_own_svid_is_never_presented_and_nothing_is_forwarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="sidecar.runtime")
    async with (
        local_mesh(x509_ttl=TTL) as mesh,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session,
    ):
        chain, key = mesh.api.ca.issue_x509_svid(SpiffeId.parse(AGENT), dt.timedelta(hours=1))
        client = TlsClient(client_context(tmp_path, IssuedCert(chain[0], key)), mesh.inbound_port)
        outbound = f"{mesh.outbound_url}/math/mcp"

        # before: a keep-alive inbound connection, and a pooled outbound one
        opened = await client.connect()
        assert opened is not None
        assert (await client.exchange(*opened)).startswith(b"HTTP/1.1 200 ")
        async with session.post(outbound, data=b"{}") as resp:
            assert resp.status == 200
        forwarded = len(mesh.upstream.requests)

        # the Workload API goes away; wait (bounded) until both sidecars hold an expired SVID
        await mesh.api.stop()

        async def both_expired() -> bool:
            states = [await readyz(session, s) for s in (mesh.server, mesh.agent)]
            return states == [(503, "svid_expired")] * 2

        await until(both_expired, "both sidecars to hold an expired SVID", interval=0.05)

        # inbound, open connection: refused with a reason, then closed
        answer = await client.exchange(*opened)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"Connection: close" in answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "svid_expired"
        # inbound, new handshakes: never completed with the expired certificate
        for _ in range(3):
            assert await client.connect() is None
        assert client.every_certificate_was_valid_when_presented()
        assert len(client.seen) == 1  # only the handshake made before the expiry
        # outbound: refused before connecting; the pooled connection is not used
        inbound_server = mesh.server.listeners["inbound"].server
        accepted_before = inbound_server.ended + len(inbound_server.connections)
        async with session.post(outbound, data=b"{}") as resp:
            assert resp.status == 503
            assert (await resp.json())["error"] == "svid_expired"
        assert inbound_server.ended + len(inbound_server.connections) == accepted_before
        assert len(mesh.upstream.requests) == forwarded  # nothing reached the upstream

        for sidecar in (mesh.server, mesh.agent):
            text = sidecar.metrics.render()[0].decode()
            assert "\nmcp_sidecar_svid_expired 1.0\n" in text
        server_text = mesh.server.metrics.render()[0].decode()
        assert (
            'mcp_sidecar_tls_handshake_failures_total{direction="inbound",reason="svid_expired"} '
            "3.0"
        ) in server_text
        expired_lines = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
        assert len(expired_lines) == 2  # one per sidecar, when its SVID expired
        assert all("refusing every new TLS handshake" in line for line in expired_lines)

        # a Workload API is back: valid SVIDs, both sides serve again
        back = DevWorkloadApi(
            mesh.api.ca, {mesh.sockets[name]: sid for name, sid in IDENTITIES.items()}
        )
        await back.start()
        try:

            async def both_ready() -> bool:
                states = [(await readyz(session, s))[0] for s in (mesh.server, mesh.agent)]
                return states == [200, 200]

            await until(both_ready, "both sidecars to be ready again", interval=0.05)
            async with session.post(outbound, data=b"{}") as resp:
                assert resp.status == 200
            again = await client.connect()
            assert again is not None
            assert (await client.exchange(*again)).startswith(b"HTTP/1.1 200 ")
            assert client.every_certificate_was_valid_when_presented()
            assert len(client.seen) == 2
            assert len(mesh.upstream.requests) == forwarded + 2
        finally:
            await back.stop()
