"""Aborted TLS handshakes and connection churn against a real inbound sidecar, and its memory after.

Anyone who can reach the inbound port can open connections and abandon their TLS handshakes;
every such connection must leave nothing behind. This drives, against ``mcp-sidecar run`` (a
subprocess with its SVID from the dev Workload API, forwarding to ``bench.upstream``):

* ``reset``: connect, then reset (RST, ``SO_LINGER`` 0) before sending anything;
* ``partial``: connect, send half a ClientHello, reset;
* ``timeout``: connect and say nothing until the sidecar's handshake timeout cuts us off;
* ``idle``: complete an mTLS handshake with an allowlisted SVID, one request, stay idle, close.

and then reads the sidecar's ``VmRSS`` (``/proc/PID/status``) and its
``mcp_sidecar_active_connections`` gauge. A warm-up round of every kind runs first, so the idle
figure already includes what the first connections of each kind allocate for good (code paths,
SSL state caches, allocator arenas); the figures compare idle-after-warm-up with after-churn.

Run: ``python -m bench.churn [--aborted 10000] [--idle 1000]`` (prints the figures; about a
minute). ``tests/proxy/test_connection_release.py`` runs the same with fewer connections.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import ssl
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import identity, ours, procs
from sidecar.heap import CHECK_INTERVAL

WAIT = 60.0  # bound on every wait for the sidecar
HANDSHAKE_TIMEOUT = 0.5  # the inbound's header_timeout, which bounds its TLS handshakes
TIMEOUT_BATCH = 500  # handshakes left to time out at once
REQUEST = b"POST /mcp HTTP/1.1\r\nHost: churn\r\nContent-Length: 2\r\n\r\n{}"


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (from an in-memory handshake that goes no further)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def _reset(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def connect_and_reset(port: int, count: int, prefix: bytes = b"") -> None:
    """``count`` connections that send ``prefix`` (maybe nothing) and are reset."""
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        if prefix:
            sock.sendall(prefix)
        _reset(sock)


def left_to_time_out(port: int, count: int) -> None:
    """``count`` connections that never start their handshake, ``TIMEOUT_BATCH`` at a time;
    returns once the sidecar has closed every one of them."""
    while count > 0:
        batch = [
            socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            for _ in range(min(count, TIMEOUT_BATCH))
        ]
        for sock in batch:
            with contextlib.suppress(ConnectionError):
                if sock.recv(1) != b"":
                    raise procs.BenchError("the sidecar sent bytes before any ClientHello")
            sock.close()
        count -= len(batch)


def idle_then_closed(port: int, ctx: ssl.SSLContext, count: int) -> int:
    """``count`` mTLS connections open together, one request on each, then all closed.
    Returns how many answers were ``200``."""
    conns: list[ssl.SSLSocket] = []
    ok = 0
    try:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = ctx.wrap_socket(raw)
            conns.append(conn)
            conn.sendall(REQUEST)
            if conn.recv(65536).startswith(b"HTTP/1.1 200 "):
                ok += 1
    finally:
        for conn in conns:
            conn.close()
    return ok


def client_context(ids: identity.Identities) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # the server's SVID has a URI SAN only; its chain is verified
    ctx.load_verify_locations(ids.bundle)
    ctx.load_cert_chain(ids.agent.chain, ids.agent.key)
    return ctx


# ----------------------------------------------------------------------------- the sidecar


@dataclass
class Inbound:
    """A running inbound sidecar process and what it takes to drive it."""

    proc: procs.Proc
    port: int
    admin_port: int
    ctx: ssl.SSLContext

    def metrics(self) -> str:
        return procs.http_body(f"http://127.0.0.1:{self.admin_port}/metrics")

    def sample(self, name: str, **labels: str) -> float:
        """One sample of the Prometheus text exposition (0 when absent)."""
        return sample(self.metrics(), name, **labels)

    def open_connections(self) -> float:
        return self.sample("mcp_sidecar_active_connections", listener="inbound")

    def wait_released(self) -> None:
        """Until the sidecar tracks no connection (bounded)."""
        procs.wait_until(
            "every connection released", lambda: self.open_connections() == 0, WAIT, [self.proc]
        )


def sample(exposition: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in exposition.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


@contextlib.contextmanager
def running_inbound(
    state: Path, inbound: dict[str, Any] | None = None, **sections: Any
) -> Iterator[Inbound]:
    """The dev Workload API, ``bench.upstream`` and an inbound sidecar (``inbound`` keys are
    merged into its ``inbound`` section, ``sections`` replace top-level ones), all
    subprocesses; always stopped."""
    ids = identity.prepare(state)
    with contextlib.ExitStack() as cleanup:
        up_port, port, admin_port = procs.free_ports(3)
        upstream = procs.start(
            "upstream",
            [sys.executable, "-m", "bench.upstream", "--port", str(up_port)],
            state / "upstream.log",
            cpus=None,
        )
        cleanup.callback(upstream.stop)
        procs.wait_until("upstream", lambda: procs.tcp_open(up_port), WAIT, [upstream])
        wapi = identity.start_workload_api(ids, ours.sidecar_cli(), None)
        cleanup.callback(wapi.stop)
        config = ours.inbound_config(
            ids, port, admin_port, up_port, full=False, mcp_policy=None, access_log=False
        )
        config["inbound"].update(inbound or {})
        config.update(sections)
        proc = ours.start("inbound", config, admin_port, state, None)
        cleanup.callback(proc.stop)
        yield Inbound(proc, port, admin_port, client_context(ids))


# ----------------------------------------------------------------------------- the run


@dataclass
class Figures:
    cold_mib: float  # idle, right after start-up
    idle_mib: float  # idle, after the warm-up round
    after_mib: list[float]  # after each measured round, every connection released
    aborted: int
    timed_out: int
    idle_conns: int
    answered: int
    handshake_failures: float
    open_after: float


def churn(inbound: Inbound, *, aborted: int, timed_out: int, idle: int) -> int:
    """Drive ``aborted`` aborted handshakes (half reset at once, half after half a ClientHello),
    ``timed_out`` handshakes left to time out and ``idle`` idle connections; return how many
    requests on the idle connections were answered 200."""
    hello = client_hello()
    connect_and_reset(inbound.port, aborted // 2)
    connect_and_reset(inbound.port, aborted - aborted // 2, hello[: len(hello) // 2])
    left_to_time_out(inbound.port, timed_out)
    return idle_then_closed(inbound.port, inbound.ctx, idle)


def settle(inbound: Inbound) -> float:
    """Wait until every connection is released and the sidecar had the time to trim its heap
    (``sidecar.heap``: it looks every few seconds); return its RSS (MiB)."""
    inbound.wait_released()
    time.sleep(2 * CHECK_INTERVAL + 1)
    return inbound.proc.rss_mib()


def measure(
    state: Path, *, aborted: int, timed_out: int, idle: int, rounds: int = 2, warmup: int = 400
) -> Figures:
    with running_inbound(state, {"limits": {"header_timeout": HANDSHAKE_TIMEOUT}}) as inbound:
        cold_mib = settle(inbound)
        churn(inbound, aborted=warmup, timed_out=warmup, idle=warmup)
        idle_mib = settle(inbound)
        after_mib = []
        answered = 0
        for _ in range(rounds):
            answered += churn(inbound, aborted=aborted, timed_out=timed_out, idle=idle)
            after_mib.append(settle(inbound))
        return Figures(
            cold_mib,
            idle_mib,
            after_mib,
            aborted,
            timed_out,
            idle,
            answered,
            handshake_failures(inbound.metrics()),
            inbound.open_connections(),
        )


def handshake_failures(exposition: str) -> float:
    """Failed inbound TLS handshakes, every reason together."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith('mcp_sidecar_tls_handshake_failures_total{direction="inbound"')
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.churn", description=__doc__)
    parser.add_argument("--aborted", type=int, default=10_000, help="aborted handshakes")
    parser.add_argument("--timed-out", type=int, default=2_000, help="handshakes left to time out")
    parser.add_argument("--idle", type=int, default=1_000, help="idle connections, then closed")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="churn-", dir="/tmp") as tmp:
        figures = measure(
            Path(tmp),
            aborted=args.aborted,
            timed_out=args.timed_out,
            idle=args.idle,
            rounds=args.rounds,
        )
    rounds = " -> ".join(
        f"{mib:.1f} MiB ({mib - figures.idle_mib:+.1f})" for mib in figures.after_mib
    )
    print(
        f"per round: {figures.aborted} aborted handshakes, {figures.timed_out} left to time "
        f"out, {figures.idle_conns} idle connections closed; {len(figures.after_mib)} rounds\n"
        f"idle connections answered 200: {figures.answered}; handshake failures counted: "
        f"{figures.handshake_failures:.0f}; open connections after: {figures.open_after:.0f}\n"
        f"RSS idle after start-up {figures.cold_mib:.1f} MiB, idle after warm-up "
        f"{figures.idle_mib:.1f} MiB, after each round: {rounds}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
