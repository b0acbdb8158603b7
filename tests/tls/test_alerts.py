"""TLS alerts (``sidecar.tls.alerts``): received ones named, ours actually sent.

Sending is checked end to end: our HTTP engine serves TLS with a context from
``build_server_context``-style ``AlertingContext`` and a plain blocking client (OpenSSL on a real
socket, no asyncio in between) must receive the alert by name, on both event loops and both TLS
versions — without the alert it would see a bare reset or end of file.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from sidecar.config import Limits
from sidecar.proxy.connection import TlsPolicy, start_listener
from sidecar.proxy.messages import Request, Response
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.alerts import ALERTS, AlertingContext, received_alert
from tests.certfactory import CertFactory
from tests.eventloops import LOOPS
from tests.tlsharness import server_context

WAIT = 10.0
TD = "example.org"


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] ...")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(
    ("reason", "alert"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "unknown_ca"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "bad_certificate"),
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "certificate_required"),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "handshake_failure"),
        ("TLSV1_ALERT_ACCESS_DENIED", "access_denied"),
        ("TLSV1_UNRECOGNIZED_NAME", "unrecognized_name"),
        ("TLSV1_ALERT_USER_CANCELLED", "user_canceled"),
    ],
)
def test_an_alert_from_the_peer_is_named(reason: str, alert: str) -> None:
    assert received_alert(ssl_error(reason)) == alert
    assert alert in ALERTS


@pytest.mark.parametrize(
    "exc",
    [
        ssl_error("CERTIFICATE_VERIFY_FAILED"),  # we refused them: not their alert
        ssl_error("WRONG_VERSION_NUMBER"),
        ssl_error("TLSV1_ALERT_SOMETHING_NEW"),  # not in the closed set (a metric label)
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
        ConnectionResetError(),
        None,
    ],
)
def test_anything_else_is_no_alert(exc: BaseException | None) -> None:
    assert received_alert(exc) is None


# -- our server sends its alert ---------------------------------------------------------------


async def never_called(request: Request) -> Response:
    raise AssertionError("a refused client never reaches the handler")


def refused_client(
    port: int, ctx: ssl.SSLContext
) -> tuple[BaseException | None, BaseException | None]:
    """(error of the handshake, error of the first read after it) of one blocking client."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        try:
            conn = ctx.wrap_socket(raw)
        except (ssl.SSLError, OSError) as exc:
            return exc, None
        try:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = conn.recv(100)
        except (ssl.SSLError, OSError) as exc:
            return None, exc
        finally:
            conn.close()
        return None, AssertionError(f"answered {data!r}")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("certificate", ["untrusted", "none"])
def test_our_server_sends_its_alert_to_a_refused_client(
    loop: str, version: ssl.TLSVersion, certificate: str, tmp_path: Path
) -> None:
    trusted = CertFactory.root(TD)
    leaf = trusted.issue_leaf(f"spiffe://{TD}/ns/mcp/sa/s")
    server = server_context(tmp_path, leaf, context_class=AlertingContext)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    if certificate == "untrusted":
        stranger = CertFactory.root(TD).issue_leaf(f"spiffe://{TD}/ns/agents/sa/a")
        client.load_cert_chain(*stranger.write(tmp_path, "client"))

    def verify(ssl_object: object) -> SpiffeId:
        raise AssertionError("no handshake completes")

    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        policy = TlsPolicy(context=lambda: server, verify=verify, handshake_timeout=WAIT)
        listener = await start_listener(
            "test", never_called, "127.0.0.1", 0, tls=policy, limits=Limits()
        )
        try:
            return await asyncio.to_thread(refused_client, listener.port, client)
        finally:
            await listener.close(0.0)

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        at_handshake, at_read = runner.run(scenario())
    expected = {
        ("untrusted", ssl.TLSVersion.TLSv1_2): "unknown_ca",
        ("untrusted", ssl.TLSVersion.TLSv1_3): "unknown_ca",
        ("none", ssl.TLSVersion.TLSv1_2): "handshake_failure",
        ("none", ssl.TLSVersion.TLSv1_3): "certificate_required",
    }[certificate, version]
    # TLS 1.2: the refusal is part of the handshake; TLS 1.3: the client finished first and
    # reads the alert afterwards
    error = at_handshake if version is ssl.TLSVersion.TLSv1_2 else at_read
    assert received_alert(error) == expected, (at_handshake, at_read)
