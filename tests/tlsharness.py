"""A real asyncio TLS server and client on loopback, built on ``sidecar.tls`` (test helper).

The server accepts with ``RotatingTls.listener_context()``, runs the post-handshake SPIFFE
verification and records what it decided, so tests assert on the server's own decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from sidecar.identity.snapshot import X509Snapshot, X509Svid, certificates_to_pem
from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist
from sidecar.tls.contexts import PeerRejected, RotatingTls
from tests.certfactory import IssuedCert

TIMEOUT = 10.0


def snapshot_of(leaf: IssuedCert, bundles: dict[str, tuple[x509.Certificate, ...]]) -> X509Snapshot:
    """An identity snapshot for ``leaf`` (its URI SAN is the ID) trusting ``bundles``."""
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uri = san.get_values_for_type(x509.UniformResourceIdentifier)[0]
    svid = X509Svid(SpiffeId.parse_workload(uri), leaf.chain(), leaf.key)
    return X509Snapshot(svid=svid, bundles=bundles)


@dataclass
class VerifyingServer:
    """Line-based echo server: answers ``OK <peer id>`` or ``DENY <reason>`` after the handshake."""

    tls: RotatingTls
    allowlist: Allowlist | None = None
    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> VerifyingServer:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=self.tls.listener_context()
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                peer = self.tls.verify_peer(writer.get_extra_info("ssl_object"), self.allowlist)
            except PeerRejected as exc:
                self.rejected.append(exc.reason)
                writer.write(f"DENY {exc.reason}\n".encode())
                await writer.drain()
                return
            self.accepted.append(str(peer))
            writer.write(f"OK {peer}\n".encode())
            await writer.drain()
            while line := await reader.readline():
                writer.write(b"ECHO " + line)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def server_context(
    tmp_path: Path,
    leaf: IssuedCert,
    trusted: IssuedCert | None = None,
    *,
    stem: str = "server",
    context_class: type[ssl.SSLContext] = ssl.SSLContext,
) -> ssl.SSLContext:
    """A plain server context (no SPIFFE checks) presenting ``leaf`` and requiring a client
    certificate that chains to ``trusted`` (by default ``leaf``'s own root)."""
    ctx = context_class(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*leaf.write(tmp_path, stem))
    ctx.load_verify_locations(cadata=(trusted or leaf.root).pem())
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    tmp_path: Path, identity: IssuedCert | None, trusted: tuple[x509.Certificate, ...] = ()
) -> ssl.SSLContext:
    """A plain client context presenting ``identity`` (no checks of the server unless trusted)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    if trusted:
        ctx.load_verify_locations(cadata=certificates_to_pem(trusted))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if identity is not None:
        cert_path, key_path = identity.write(tmp_path, stem=f"client-{id(identity)}")
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


@dataclass
class Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    greeting: str

    @property
    def ssl_object(self) -> ssl.SSLObject:
        obj = self.writer.get_extra_info("ssl_object")
        assert isinstance(obj, ssl.SSLObject)
        return obj

    def server_serial(self) -> int:
        der = self.ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    async def echo(self, text: str) -> str:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()
        return (await asyncio.wait_for(self.reader.readline(), TIMEOUT)).decode().strip()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


async def connect(port: int, ctx: ssl.SSLContext) -> Connection:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), TIMEOUT
    )
    greeting = (await asyncio.wait_for(reader.readline(), TIMEOUT)).decode().strip()
    return Connection(reader, writer, greeting)


async def attempt(port: int, ctx: ssl.SSLContext) -> str:
    """Connect and return the server's greeting, or ``HANDSHAKE_FAILED <error>``.

    With TLS 1.3 the client finishes its handshake before the server has checked the client
    certificate, so a server-side refusal shows up on the first read (alert or EOF).
    """
    try:
        conn = await connect(port, ctx)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"HANDSHAKE_FAILED {exc}"
    await conn.close()
    return conn.greeting or "HANDSHAKE_FAILED eof"
