"""``python -m bench.mux``: what multiplexing costs on ``tools/call``, in one process.

The set-up of ``bench.inproc`` (keep-alive client, our outbound and inbound sidecars with the
``ours-full`` checks by default, the bench upstream, one uvloop loop), with two routes on the same
outbound sidecar to the same inbound sidecar:

* ``single``: ``/math``, one upstream (the plain route);
* ``mux``: ``/tools``, a multiplexing route with two targets (``math``, ``paint``; both reach the
  same inbound sidecar on different paths), called as ``math__add`` within a session opened by
  one ``initialize``.

The two variants alternate inside every repeat (single, mux, single, mux, ...), so drifts of the
host hit both alike. The figure is this process's CPU time per request (client and upstream
included); the difference is the multiplexer's cost per call: parsing the client's message,
routing by name, rewriting the name, and parsing and re-writing the target's answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
from typing import Any

import uvloop

from bench.identity import SERVER_ID
from bench.inproc import BODY, DEADLINE, pair, run_requests

MUX_BODY = BODY.replace(b'"name":"add"', b'"name":"math__add"')
INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    b'"capabilities":{},"clientInfo":{"name":"bench","version":"0"}}}'
)


def mux_route(inbound_port: int, *, full: bool) -> dict[str, Any]:
    targets: list[dict[str, Any]] = []
    for name, path in (("math", "/mcp"), ("paint", "/paint")):
        target: dict[str, Any] = {
            "name": name,
            "upstream": f"https://127.0.0.1:{inbound_port}",
            "server_spiffe_id": SERVER_ID,
            "path": path,
        }
        if full:
            target["jwt_svid_audience"] = SERVER_ID
        targets.append(target)
    return {"name": "tools", "path_prefix": "/tools", "targets": targets}


async def open_session(port: int) -> str:
    """``initialize`` on the multiplexing route; its ``Mcp-Session-Id``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /tools/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
            % (len(INITIALIZE), INITIALIZE)
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
    finally:
        writer.close()
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "mcp-session-id":
            return value.strip()
    raise RuntimeError(f"initialize on the multiplexing route failed: {head[:200]!r}")


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"single": [], "mux": []}
    full = args.variant == "full"

    def routes(inbound_port: int) -> list[dict[str, Any]]:
        return [mux_route(inbound_port, full=full)]

    async with pair(full=full, access_log=False, routes=routes) as port:
        session = await open_session(port)
        variants = {
            "single": {"path": b"/math/mcp", "body": BODY, "headers": b""},
            "mux": {
                "path": b"/tools/mcp",
                "body": MUX_BODY,
                "headers": b"Mcp-Session-Id: %s\r\n" % session.encode(),
            },
        }
        for options in variants.values():
            await run_requests(port, args.warmup, args.connections, **options)
        for _ in range(args.repeat):
            for name, options in variants.items():
                answered, cpu = await run_requests(port, args.requests, args.connections, **options)
                figures[name].append(1e6 * cpu / answered)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mux", description=__doc__)
    parser.add_argument("--variant", choices=("full", "mtls"), default="full")
    parser.add_argument("--requests", type=int, default=20000, help="per repeat and route")
    parser.add_argument("--warmup", type=int, default=2000, help="unmeasured, per route")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        figures = uvloop.run(measure(args))
    single = statistics.median(figures["single"])
    for name in ("single", "mux"):
        runs = ", ".join(f"{f:.1f}" for f in figures[name])
        print(f"{name:<6} {statistics.median(figures[name]):6.1f} µs CPU per request ({runs})")
    # each repeat measured both routes back to back: their difference is the least disturbed
    # by the host's drift
    differences = [m - s for s, m in zip(figures["single"], figures["mux"], strict=True)]
    difference = statistics.median(differences)
    print(
        f"mux - single: {difference:+.1f} µs per tools/call ({100 * difference / single:+.1f}%; "
        f"median of the per-repeat differences {', '.join(f'{d:+.1f}' for d in differences)}); "
        f"ours-{args.variant}, one process: client, outbound, inbound, upstream; "
        f"{args.connections} connections; alternating, {args.repeat} repeats"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
