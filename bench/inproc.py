"""``python -m bench.inproc``: the whole pair in one process, for low-noise before/after numbers.

The main bench runs each part in its own process, pinned to shared cores, and its req/s and CPU
per request move by ±10% between runs on this machine with the code unchanged. That hides
changes of a few µs per request. Here a keep-alive client, our outbound and inbound sidecars (the
real runtime: dev Workload API over unix sockets, mTLS, the ``ours-full`` checks), and the bench
upstream all share one uvloop loop. The figure is this process's CPU time per request for all of
them together (client and upstream included, about 20 µs): no scheduler or other process in
between. Repeats on this machine agree within about ±3%.

It is a tool for comparing two versions of the code, not a result: ``RESULTS.md`` holds the real
runs. ``--profile FILE`` writes a cProfile of the measured requests (cProfile roughly doubles
Python-heavy costs; the ranking is what counts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop

from bench import ours
from bench.identity import AGENT_ID, SERVER_ID, TRUST_DOMAIN, prepare
from bench.upstream import serve_protocol
from sidecar.config import parse_config
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"add","arguments":{"a":20,"b":22}}}'
)
DEADLINE = 300.0  # seconds: no measurement may hang a terminal or CI


class _Client(asyncio.Protocol):
    """One keep-alive connection: POST, read the answer, POST again while the budget lasts."""

    def __init__(self, request: bytes, budget: list[int], done: asyncio.Future[None]) -> None:
        self.request = request
        self.budget = budget
        self.done = done
        self.buf = b""
        self.answered = 0
        self.failed = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if self.budget[0] <= 0:
            if not self.done.done():
                self.done.set_result(None)
            return
        self.budget[0] -= 1
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buf[:end].lower()
        _, found, rest = head.partition(b"\r\ncontent-length: ")
        length = int(rest.split(b"\r\n", 1)[0]) if found else 0
        if len(self.buf) < end + 4 + length:
            return
        if self.buf.startswith(b"HTTP/1.1 200 "):
            self.answered += 1
        else:
            self.failed += 1
        self.buf = self.buf[end + 4 + length :]
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost: {exc!r}"))


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    """A collector in another process (``bench.otlp_sink``); yields its traces URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = subprocess.Popen([sys.executable, "-m", "bench.otlp_sink", "--port", str(port)])  # noqa: S603
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("bench.otlp_sink did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1/traces"
    finally:
        sink.terminate()
        sink.wait(10)


@asynccontextmanager
async def pair(
    *,
    full: bool,
    access_log: bool,
    routes: Callable[[int], list[dict[str, Any]]] | None = None,
    tracing: str | None = None,
    fast_path: str = "both",
) -> AsyncIterator[int]:
    """Dev Workload API, bench upstream, inbound and outbound sidecars with the main bench's
    configs (``bench.ours``: the same checks as ``ours-full`` / ``ours-mtls``); yields the
    outbound listener's port. ``routes(inbound port)``: more outbound routes. ``tracing``: an
    OTLP/HTTP traces URL to trace every request to. ``fast_path``: which sidecars serve the
    common exchange on callbacks (``both``, ``inbound``, ``outbound``; ``none``: every request
    in a task)."""

    def traced(config: dict[str, Any]) -> dict[str, Any]:
        if tracing is not None:
            config["tracing"] = {"enabled": True, "endpoint": tracing}
        return config

    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(serve_protocol(256), "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-inproc-") as tmp:
        state = Path(tmp)
        ids = replace(
            prepare(state),
            agent_socket=f"unix://{state}/agent.sock",
            server_socket=f"unix://{state}/server.sock",
        )
        api = DevWorkloadApi(
            DevCA.load_or_create(ids.ca_dir, TRUST_DOMAIN),
            {ids.agent_socket: AGENT_ID, ids.server_socket: SERVER_ID},
        )
        await api.start()
        policy = ours.DEFAULT_MCP_POLICY if full else None
        sidecars: list[Sidecar] = []
        try:
            server = Sidecar(
                parse_config(
                    traced(
                        ours.inbound_config(
                            ids, 0, 0, up_port, full=full, mcp_policy=policy, access_log=access_log
                        )
                    )
                ),
                fast_path=fast_path in ("both", "inbound"),
            )
            sidecars.append(server)
            await server.start(svid_timeout=30)
            config = traced(
                ours.outbound_config(
                    ids, 0, 0, server.port("inbound"), full=full, access_log=access_log
                )
            )
            if routes is not None:
                config["outbound"]["routes"] += routes(server.port("inbound"))
            agent = Sidecar(parse_config(config), fast_path=fast_path in ("both", "outbound"))
            sidecars.append(agent)
            await agent.start(svid_timeout=30)
            yield agent.port("outbound")
        finally:
            for sidecar in reversed(sidecars):
                await sidecar.stop()
            await api.stop()
            upstream.close()


async def run_requests(
    port: int,
    count: int,
    connections: int,
    *,
    path: bytes = b"/math/mcp",
    body: bytes = BODY,
    headers: bytes = b"",
) -> tuple[int, float]:
    """``count`` requests over ``connections`` keep-alive connections; (answered, CPU s).
    ``headers``: extra header lines, each ending with CRLF."""
    loop = asyncio.get_running_loop()
    request = (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n"
        b"%sContent-Length: %d\r\n\r\n%s"
    ) % (path, port, headers, len(body), body)
    budget = [count]
    clients: list[_Client] = []
    gc.collect()
    started = time.process_time()
    for _ in range(connections):
        client = _Client(request, budget, loop.create_future())
        clients.append(client)
        await loop.create_connection(lambda c=client: c, "127.0.0.1", port)  # type: ignore[misc]
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), DEADLINE)
    cpu = time.process_time() - started
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    failed = sum(c.failed for c in clients)
    if failed:
        raise RuntimeError(f"{failed} requests were not answered 200")
    return sum(c.answered for c in clients), cpu


async def measure(args: argparse.Namespace) -> list[float]:
    """µs of CPU per request, one figure per repeat."""
    figures: list[float] = []
    async with pair(
        full=args.variant == "full",
        access_log=args.access_log,
        tracing=args.tracing_url,
        fast_path=args.fast_path,
    ) as port:
        await run_requests(port, args.warmup, args.connections)
        profiler = cProfile.Profile() if args.profile else None
        for _ in range(args.repeat):
            if profiler is not None:
                profiler.enable()
            answered, cpu = await run_requests(port, args.requests, args.connections)
            if profiler is not None:
                profiler.disable()
            figures.append(1e6 * cpu / answered)
        if profiler is not None:
            profiler.dump_stats(args.profile)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__)
    parser.add_argument("--variant", choices=("full", "mtls"), default="full")
    parser.add_argument("--requests", type=int, default=20000, help="per repeat (20000)")
    parser.add_argument("--warmup", type=int, default=2000, help="unmeasured requests (2000)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--access-log", action="store_true", help="access and audit logs on")
    parser.add_argument(
        "--fast-path",
        choices=("both", "inbound", "outbound", "none"),
        default="both",
        help="sidecars serving the common exchange on callbacks (both; none: all in tasks)",
    )
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile here")
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="OpenTelemetry tracing on in both sidecars, every request sampled, exported over "
        "OTLP/HTTP to a collector in another process (bench.otlp_sink)",
    )
    args = parser.parse_args(argv)
    # The sidecars log to stdout: with --access-log their lines go to /dev/null, not the terminal.
    with contextlib.ExitStack() as stack:
        args.tracing_url = stack.enter_context(otlp_sink()) if args.tracing else None
        sink = stack.enter_context(open(os.devnull, "w"))
        stack.enter_context(contextlib.redirect_stdout(sink))
        figures = uvloop.run(measure(args))
    logs = f", fast path: {args.fast_path}" if args.fast_path != "both" else ""
    logs += ", access logs on" if args.access_log else ""
    logs += ", tracing on (OTLP/HTTP, all sampled)" if args.tracing else ""
    print(
        f"ours-{args.variant}{logs}: {statistics.median(figures):.1f} µs CPU per request "
        f"(median of {len(figures)}: {', '.join(f'{f:.1f}' for f in figures)}; one process: "
        f"client, outbound, inbound, upstream; {args.connections} connections)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
