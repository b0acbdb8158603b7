"""Demo agent for Kubernetes: calls the math MCP server's ``add`` and ``multiply`` in a loop.

Run ``python -m sidecar.demo.agent_loop --url http://127.0.0.1:15001/math/mcp --interval 5``
next to an outbound sidecar. Every iteration opens a session with the official MCP SDK client
(legacy ``initialize`` handshake), calls ``add(i, i + 1)`` and ``multiply(i, i + 1)``, checks the
answers and closes the session; one line per call goes to stdout::

    2026-11-27T10:00:00.000Z ok      add(1, 2) = 3 (41 ms)
    2026-11-27T10:00:00.000Z refused multiply(1, 2): HTTP 403 not_allowlisted: ...
    2026-11-27T10:00:05.000Z error   add(2, 3): ConnectError: All connection attempts failed

``ok`` is a correct answer, ``refused`` an HTTP 401/403 from the mesh (the body's ``error`` and
``message`` follow), ``error`` anything else (another HTTP error such as a sidecar's 502/504 with
its reason, an unreachable sidecar, a timeout, a wrong answer). A failure
is logged and the loop goes on: with the default ``--iterations 0`` it runs until SIGTERM/SIGINT
and then exits 0; it never exits because a call failed. With ``--iterations N`` it stops after N
iterations, prints a ``summary`` line and exits 0 if every call had the expected outcome (``ok``;
``refused`` with ``--expect-refused``, which the rogue workload of the Kubernetes demo uses), 1
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, TextIO

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation, TextContent

Outcome = Literal["ok", "refused", "error"]

CLIENT_INFO: Final = Implementation(name="mesh-demo-agent", version="0.1.0")
DEFAULT_URL: Final = "http://127.0.0.1:15001/math/mcp"
DEFAULT_INTERVAL: Final = 5.0
DEFAULT_TIMEOUT: Final = 15.0
REFUSAL_STATUSES: Final = frozenset({401, 403})
_MAX_BODY_IN_LINE: Final = 300


@dataclass(frozen=True, slots=True)
class CallRecord:
    iteration: int
    tool: str
    arguments: tuple[int, int]
    outcome: Outcome
    detail: str
    """The result (ok) or what went wrong."""
    elapsed_ms: int

    def line(self, now: str) -> str:
        call = f"{self.tool}({self.arguments[0]}, {self.arguments[1]})"
        if self.outcome == "ok":
            return f"{now} ok      {call} = {self.detail} ({self.elapsed_ms} ms)"
        return f"{now} {self.outcome:<7} {call}: {self.detail}"


class _HttpFailure(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def _timestamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _describe_body(body: str) -> str:
    """``error: message`` from a sidecar's JSON error body, else the (shortened) text."""
    with contextlib.suppress(ValueError):
        data = json.loads(body)
        if isinstance(data, dict) and "error" in data:
            return f"{data['error']}: {data.get('message', '')}".strip().rstrip(":")
    text = " ".join(body.split())
    return text[:_MAX_BODY_IN_LINE]


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_exceptions(sub)]
    return [exc]


def _classify(exc: BaseException, failed: _HttpFailure | None) -> tuple[Outcome, str]:
    if failed is not None:
        outcome: Outcome = "refused" if failed.status in REFUSAL_STATUSES else "error"
        return outcome, f"HTTP {failed.status} {_describe_body(failed.body)}"
    leaves = _leaf_exceptions(exc)
    leaf = leaves[0] if leaves else exc
    if isinstance(leaf, TimeoutError):
        return "error", "timed out"
    return "error", f"{type(leaf).__name__}: {leaf}".rstrip(": ")


def _number(result: CallToolResult) -> float | None:
    structured = result.structured_content
    if isinstance(structured, dict) and isinstance(structured.get("result"), int | float):
        return float(structured["result"])
    for block in result.content:
        if isinstance(block, TextContent):
            with contextlib.suppress(ValueError):
                return float(block.text)
    return None


def _format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


async def run_iteration(
    url: str, iteration: int, *, timeout: float = DEFAULT_TIMEOUT
) -> list[CallRecord]:
    """One session: ``add(i, i+1)`` and ``multiply(i, i+1)``; never raises (except cancel)."""
    a, b = iteration, iteration + 1
    calls: list[tuple[str, float]] = [("add", a + b), ("multiply", a * b)]
    records: list[CallRecord] = []
    failure: _HttpFailure | None = None

    async def remember_failure(response: httpx2.Response) -> None:
        nonlocal failure
        if response.status_code >= 400 and failure is None and response.request.method == "POST":
            await response.aread()  # a short JSON error from a sidecar, never an SSE stream
            failure = _HttpFailure(response.status_code, response.text)

    started = time.monotonic()
    pending = list(calls)
    try:
        async with asyncio.timeout(timeout):
            http = httpx2.AsyncClient(
                timeout=httpx2.Timeout(timeout),
                event_hooks={"response": [remember_failure]},
            )
            async with (
                http,
                Client(
                    streamable_http_client(url, http_client=http),
                    mode="legacy",
                    client_info=CLIENT_INFO,
                    read_timeout_seconds=timeout,
                    cache=None,
                ) as client,
            ):
                for tool, expected in calls:
                    call_started = time.monotonic()
                    result = await client.call_tool(tool, {"a": a, "b": b})
                    elapsed = int((time.monotonic() - call_started) * 1000)
                    pending.pop(0)
                    value = _number(result)
                    if result.is_error or value is None or not math.isclose(value, expected):
                        text = " ".join(
                            c.text for c in result.content if isinstance(c, TextContent)
                        )
                        detail = f"unexpected answer {text!r} (wanted {_format_number(expected)})"
                        records.append(
                            CallRecord(iteration, tool, (a, b), "error", detail, elapsed)
                        )
                    else:
                        records.append(
                            CallRecord(
                                iteration, tool, (a, b), "ok", _format_number(value), elapsed
                            )
                        )
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        outcome, detail = _classify(exc, failure)
        elapsed = int((time.monotonic() - started) * 1000)
        # A failure after the calls (e.g. closing the session) does not undo their answers.
        records.extend(
            CallRecord(iteration, tool, (a, b), outcome, detail, elapsed) for tool, _ in pending
        )
    return records


async def run_loop(
    url: str,
    *,
    interval: float = DEFAULT_INTERVAL,
    iterations: int = 0,
    timeout: float = DEFAULT_TIMEOUT,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> list[CallRecord]:
    """Iterate until ``iterations`` are done (0 = until ``stop`` is set); returns every record."""
    stop = stop or asyncio.Event()
    records: list[CallRecord] = []
    iteration = 0
    while not stop.is_set() and (iterations == 0 or iteration < iterations):
        iteration += 1
        for record in await run_iteration(url, iteration, timeout=timeout):
            records.append(record)
            print(record.line(_timestamp()), file=out or sys.stdout, flush=True)
        if iterations and iteration >= iterations:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
    return records


def summary(records: Sequence[CallRecord]) -> str:
    counts = {outcome: sum(r.outcome == outcome for r in records) for outcome in ("ok", "refused")}
    errors = len(records) - counts["ok"] - counts["refused"]
    return f"summary: {counts['ok']} ok, {counts['refused']} refused, {errors} error"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.demo.agent_loop",
        description="Call the demo MCP server's add and multiply tools in a loop.",
    )
    parser.add_argument("--url", default=DEFAULT_URL, help="MCP endpoint (default: %(default)s)")
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help="pause between iterations (default: %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=int,
        default=0,
        metavar="N",
        help="stop after N iterations and exit 0 only if every call had the expected outcome; "
        "0 = run until SIGTERM (default)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="bound for one iteration (default: %(default)s)",
    )
    parser.add_argument(
        "--expect-refused",
        action="store_true",
        help="with --iterations: succeed only if every call was refused (HTTP 401/403)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # One line per call on stdout is the output; the SDK's and httpx's request logs are noise.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2", "mcp"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.iterations < 0 or args.interval < 0 or args.timeout <= 0:
        print("--iterations and --interval must be >= 0, --timeout > 0", file=sys.stderr)
        return 2

    async def run() -> list[CallRecord]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(f"{_timestamp()} agent calling {args.url}", flush=True)
        return await run_loop(
            args.url,
            interval=args.interval,
            iterations=args.iterations,
            timeout=args.timeout,
            stop=stop,
        )

    records = asyncio.run(run())
    print(summary(records), flush=True)
    if not args.iterations:
        return 0
    wanted: Outcome = "refused" if args.expect_refused else "ok"
    complete = len(records) == 2 * args.iterations
    return 0 if complete and all(r.outcome == wanted for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CallRecord", "main", "run_iteration", "run_loop", "summary"]
