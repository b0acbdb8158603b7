"""The private-API shims of ``sidecar.compat``, on both event loops we run on (asyncio's and
uvloop's): when a Python, uvloop or PyJWT release changes what they reach into, these fail
first, with the shim named."""

from __future__ import annotations

import asyncio
import json
import math
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest

from sidecar.compat import (
    compact_ascii_json_encoder,
    jwk_as_given,
    server_tls_protocol,
    tls_app_transport,
    unverified_chain_der,
)
from tests.certfactory import CertFactory, IssuedCert
from tests.eventloops import LOOPS
from tests.tlsharness import client_context, server_context
from tests.tokens.jwtkit import ec_key, public_jwk

TIMEOUT = 10.0


@dataclass
class TlsByUs(asyncio.Protocol):
    """Puts TLS under itself at accept, as ``sidecar.proxy.connection`` does; then echoes."""

    context: ssl.SSLContext
    chains: list[list[bytes]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    transport: asyncio.Transport | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        layer = server_tls_protocol(loop, self, self.context, waiter, handshake_timeout=TIMEOUT)
        transport.set_protocol(layer)
        layer.connection_made(transport)
        task = loop.create_task(self._handshake(layer, waiter, transport))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handshake(
        self, layer: object, waiter: asyncio.Future[None], raw: asyncio.BaseTransport
    ) -> None:
        try:
            await waiter
        except Exception as exc:
            self.failures.append(exc)
            self.failed.set()
            raw.close()
            return
        self.transport = tls_app_transport(layer)
        self.chains.append(unverified_chain_der(self.transport.get_extra_info("ssl_object")))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data.upper())


@pytest.fixture(scope="module")
def pki() -> tuple[IssuedCert, IssuedCert]:
    """(server leaf, client leaf under an intermediate) of one root."""
    root = CertFactory.root()
    server = root.issue_leaf("spiffe://example.org/server")
    client = root.issue_intermediate().issue_leaf("spiffe://example.org/client")
    return server, client


def contexts(tmp_path: Path, pki: tuple[IssuedCert, IssuedCert]) -> tuple[ssl.SSLContext, ...]:
    server, client = pki
    trusted = (server.root.cert,)
    return (
        server_context(tmp_path, server),
        client_context(tmp_path, client, trusted),
        client_context(tmp_path, None, trusted),
    )


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_tls_put_on_at_accept_serves_and_reads_the_peer_chain(
    loop_name: str, tmp_path: Path, pki: tuple[IssuedCert, IssuedCert]
) -> None:
    server_ctx, with_cert, without_cert = contexts(tmp_path, pki)

    async def scenario() -> tuple[TlsByUs, bytes, str]:
        protocol = TlsByUs(server_ctx)  # the Event belongs to this loop
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=with_cert), TIMEOUT
            )
            writer.write(b"ping\n")
            echoed = await asyncio.wait_for(reader.readline(), TIMEOUT)
            writer.close()
            # No client certificate: the handshake fails and the waiter says so.
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, ssl=without_cert), TIMEOUT
                )
                writer.close()
            except (ssl.SSLError, ConnectionError):
                pass
            await asyncio.wait_for(protocol.failed.wait(), TIMEOUT)
            return protocol, echoed, type(loop).__module__
        finally:
            server.close()

    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        protocol, echoed, module = runner.run(asyncio.wait_for(scenario(), 30))
    assert module.startswith(loop_name)
    assert echoed == b"PING\n"
    _, client = pki
    assert protocol.chains == [client.chain_der()]  # leaf first, then the intermediate
    assert len(protocol.chains[0]) == 2
    assert isinstance(protocol.failures[0], ssl.SSLError | ConnectionError)


def test_unverified_chain_of_a_connection_without_peer_certificate_is_empty(
    tmp_path: Path, pki: tuple[IssuedCert, IssuedCert]
) -> None:
    server, _ = pki
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*server.write(tmp_path, "server"))
    ssl_object = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)
    assert unverified_chain_der(ssl_object) == []


def test_jwk_as_given_is_the_jwk_pyjwt_was_built_from() -> None:
    jwk = public_jwk(ec_key(), "k1", alg="ES256")
    assert jwk_as_given(jwt.PyJWK(jwk)) == jwk


def test_compact_ascii_json_encoder_is_json_dumps_with_our_options() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    value = {"a": [1, 2.5, None, True], "é": "naïve \n \u2028", "o": Opaque(), "n": {"k": "v"}}
    expected = json.dumps(
        value, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str
    )
    assert compact_ascii_json_encoder()(value) == expected
    with pytest.raises(ValueError, match="Out of range float"):
        compact_ascii_json_encoder()({"x": math.nan})
