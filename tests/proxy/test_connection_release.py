"""Every connection of a TLS listener is released, whichever way its handshake ends.

Anyone who can reach the inbound port can abandon handshakes; a connection that stays tracked
after that is memory an attacker keeps for free. The SSL protocols of asyncio and uvloop do not
call ``connection_lost`` of their application protocol for a connection lost mid-handshake, so
these run on both loops: an in-process listener (its ``connections`` set and the connection
object itself must be gone), then a real ``mcp-sidecar run`` process driven with thousands of
aborted handshakes and churn (``bench.churn``): its ``mcp_sidecar_active_connections`` gauge must
come back to zero and its RSS near its idle level, and SIGTERM must stop it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import ssl
import tempfile
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import churn, procs
from sidecar.config import Limits
from sidecar.proxy.connection import HttpConnection, Listener, TlsPolicy, start_listener
from sidecar.proxy.messages import Request, Response, json_response
from sidecar.spiffe.ids import SpiffeId
from tests import tlsharness
from tests.certfactory import CertFactory
from tests.eventloops import LOOPS
from tests.polling import until

WAIT = 10.0  # bound on every wait for something that must happen
TD = "example.org"


@pytest.fixture(scope="module")
def server_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    leaf = CertFactory.root(TD).issue_leaf(f"spiffe://{TD}/ns/mcp/sa/server")
    return tlsharness.server_context(tmp_path_factory.mktemp("pki"), leaf)


async def ok(request: Request) -> Response:
    return json_response({"ok": True})


@dataclass
class Failures:
    reasons: list[str] = field(default_factory=list)

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


@contextlib.asynccontextmanager
async def tls_listener(
    ctx: ssl.SSLContext, failures: Failures, handshake_timeout: float = WAIT
) -> AsyncIterator[Listener]:
    def verify(ssl_object: Any) -> SpiffeId:
        raise AssertionError("no handshake completes in these tests")

    policy = TlsPolicy(
        context=lambda: ctx,
        verify=verify,
        handshake_timeout=handshake_timeout,
        on_failure=failures,
    )
    limits = Limits(header_timeout=600.0, keepalive_timeout=600.0)  # only TLS can end things
    listener = await start_listener("test", ok, "127.0.0.1", 0, tls=policy, limits=limits)
    try:
        yield listener
    finally:
        await asyncio.wait_for(listener.close(0.0), WAIT)


async def pending_connection(listener: Listener) -> weakref.ref[HttpConnection]:
    """The one connection the listener tracks (waits until there is one)."""
    await until(lambda: len(listener.server.connections) == 1)
    return weakref.ref(next(iter(listener.server.connections)))


def reset(sock: socket.socket) -> None:
    churn._reset(sock)


HELLO = churn.client_hello()


def run_on(loop: str, scenario: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(scenario())


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("reset_before_hello", "connection_closed"),
        ("reset_mid_hello", "connection_closed"),
        ("fin_mid_hello", "connection_closed"),
        ("never_starts", "handshake_timeout"),
        ("no_client_certificate", "peer_did_not_return_a_certificate"),
    ],
)
def test_a_connection_whose_handshake_dies_is_released_at_once(
    loop: str, how: str, reason: str, server_context: ssl.SSLContext
) -> None:
    async def scenario() -> tuple[list[str], bool]:
        failures = Failures()
        timeout = 0.3 if how == "never_starts" else WAIT
        async with tls_listener(server_context, failures, timeout) as listener:
            sock = await asyncio.to_thread(
                socket.create_connection, ("127.0.0.1", listener.port), WAIT
            )
            conn = await pending_connection(listener)
            if how == "reset_before_hello":
                reset(sock)
            elif how == "reset_mid_hello":
                await asyncio.to_thread(sock.sendall, HELLO[: len(HELLO) // 2])
                reset(sock)
            elif how == "fin_mid_hello":
                await asyncio.to_thread(sock.sendall, HELLO[: len(HELLO) // 2])
                sock.close()
            elif how == "no_client_certificate":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the refusal is in the handshake
                with pytest.raises(ssl.SSLError):
                    await asyncio.to_thread(ctx.wrap_socket, sock)
            await until(lambda: not listener.server.connections)
            await until(lambda: bool(failures.reasons))
            sock.close()
            # released by reference counting alone: no cycle keeps the connection's TLS state
            gc.disable()
            try:
                await until(lambda: conn() is None)
                released = conn() is None
            finally:
                gc.enable()
            return failures.reasons, released

    reasons, released = run_on(loop, scenario)
    assert reasons == [reason]
    assert released


@pytest.mark.parametrize("loop", LOOPS)
def test_drain_closes_pending_handshakes_at_once_without_counting_them(
    loop: str, server_context: ssl.SSLContext
) -> None:
    async def scenario() -> tuple[list[str], int, bytes]:
        failures = Failures()
        async with tls_listener(server_context, failures) as listener:
            socks = [
                await asyncio.to_thread(
                    socket.create_connection, ("127.0.0.1", listener.port), WAIT
                )
                for _ in range(3)
            ]
            await asyncio.to_thread(socks[0].sendall, HELLO[: len(HELLO) // 2])
            await until(lambda: len(listener.server.connections) == 3)
            # drain_timeout of an hour: only closing pending handshakes at once ends this
            await asyncio.wait_for(listener.close(3600.0), WAIT)
            left = len(listener.server.connections)
            data = await asyncio.to_thread(socks[1].recv, 1)
            for sock in socks:
                sock.close()
            return failures.reasons, left, data

    reasons, left, data = run_on(loop, scenario)
    assert left == 0
    assert data == b""
    assert reasons == []  # our own closing is not a failed handshake


# -- a real sidecar process ---------------------------------------------------------------


@pytest.fixture
def state() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="churn-", dir="/tmp") as d:
        yield Path(d)


RSS_SLACK_MIB = 4.0


def test_sidecar_releases_every_aborted_handshake_and_its_memory(state: Path) -> None:
    """2,000 aborted handshakes (reset at once / after half a ClientHello), 500 left to time
    out and 200 idle mTLS connections closed, after a warm-up round: nothing stays tracked and
    RSS comes back (bounded wait) to within a few MiB of the warmed-up idle level."""
    with churn.running_inbound(
        state, {"limits": {"header_timeout": churn.HANDSHAKE_TIMEOUT}}
    ) as inbound:
        churn.churn(inbound, aborted=400, timed_out=400, idle=300)  # warm-up
        idle_mib = churn.settle(inbound)
        failures_before = churn.handshake_failures(inbound.metrics())
        answered = churn.churn(inbound, aborted=2000, timed_out=500, idle=200)
        inbound.wait_released()
        assert inbound.open_connections() == 0
        assert answered == 200  # the idle connections were real, served connections
        failures = churn.handshake_failures(inbound.metrics()) - failures_before
        assert failures == 2500  # every aborted handshake was seen (and counted) by the sidecar
        procs.wait_until(
            f"RSS back within {RSS_SLACK_MIB} MiB of {idle_mib:.1f} MiB",
            lambda: inbound.proc.rss_mib() <= idle_mib + RSS_SLACK_MIB,
            churn.WAIT,
            [inbound.proc],
        )


def test_idle_sidecar_with_pending_handshakes_stops_at_once_on_sigterm(state: Path) -> None:
    with churn.running_inbound(
        state,
        {"limits": {"header_timeout": "10m"}},  # pending handshakes would wait this long
        shutdown={"drain_timeout": "1h"},
    ) as inbound:
        pending = [
            socket.create_connection(("127.0.0.1", inbound.port), timeout=WAIT) for _ in range(20)
        ]
        try:
            pending[0].sendall(HELLO[: len(HELLO) // 2])
            procs.wait_until(
                "20 connections tracked",
                lambda: inbound.open_connections() == 20,
                WAIT,
                [inbound.proc],
            )
            inbound.proc.popen.send_signal(signal.SIGTERM)
            # bounded: an hour of drain_timeout would fail this long before it ended
            assert inbound.proc.popen.wait(churn.WAIT) == 0
        finally:
            for sock in pending:
                sock.close()
