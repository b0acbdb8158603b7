"""Load generators (none of them Python): wrk for request/response runs, curl for the others.

* ``keepalive``: wrk, N keep-alive connections into the plain-HTTP entry (the outbound proxy, or
  the upstream for ``direct``), POST of the 98-byte ``tools/call`` (``bench/post.lua``).
* ``newconn``: the same with ``Connection: close``: a new TCP connection to the outbound proxy for
  every request. The proxies keep their mTLS connections to each other pooled, as in production.
* ``newtls``: a full mTLS handshake for every request *on the hop between the pair*: curl, as the
  agent (its X.509-SVID from the same CA, and its JWT-SVID where the variant checks one), POSTs
  straight to the inbound proxy with ``Connection: close`` and ``--no-sessionid`` (no TLS session
  resumption), N transfers in parallel (``--parallel``). Measures the server side of the
  handshake plus the request; the load generator does the client side of every handshake, so its
  CPU column matters here (a saturated generator is flagged).
* ``sse``: N concurrent ``GET /sse`` streams through the pair for the whole duration (curl
  ``--parallel --max-time``); the upstream sends fixed-size events as fast as they are taken, and
  events/s is bytes received / event size / duration, counted at the client.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs

BODY = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
    b'{"name":"add","arguments":{"a":20,"b":22}}}'
)
assert len(BODY) == 98
MCP_HEADERS = (
    "Content-Type: application/json",
    "Accept: application/json, text/event-stream",
    "MCP-Protocol-Version: 2025-06-18",
)
LUA = Path(__file__).with_name("post.lua")
SATURATED = 0.9  # a load generator busy this fraction of its run is (nearly) the bottleneck


@dataclass
class LoadResult:
    """One measured run, as the client saw it."""

    count: int  # requests completed (events for SSE)
    seconds: float
    errors: int = 0
    error_detail: str = ""
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    loadgen_cpu: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    @property
    def loadgen_busy(self) -> float:
        return self.loadgen_cpu / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------- wrk


def wrk(
    wrk_path: str,
    url: str,
    *,
    connections: int,
    duration: float,
    close: bool,
    cpus: Sequence[int] | None,
) -> LoadResult:
    argv = [
        wrk_path,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
    ]
    if close:
        argv += ["--", "close"]
    code, out, err, _wall, cpu = procs.run_measured(argv, cpus=cpus, timeout=duration + 60)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if code != 0 or line is None:
        raise procs.BenchError(f"wrk failed (exit {code}):\n{out[-2000:]}\n{err[-2000:]}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = {k.removeprefix("err_"): int(v) for k, v in data.items() if k.startswith("err_") and v}
    non2xx = 0
    for ln in out.splitlines():
        if "Non-2xx or 3xx responses:" in ln:
            non2xx = int(ln.rsplit(":", 1)[1])
    if non2xx:
        errors["non-2xx"] = non2xx
    errors.pop("status", None)  # the same responses as non-2xx (>= 400), counted once
    return LoadResult(
        count=int(data["requests"]) - non2xx,
        seconds=int(data["duration_us"]) / 1e6,
        errors=sum(errors.values()),
        error_detail=", ".join(f"{k} {v}" for k, v in errors.items()),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        p999_ms=data["p999_us"] / 1000,
        loadgen_cpu=cpu,
    )


# --------------------------------------------------------------------------------------- curl


def _percentile(sorted_values: Sequence[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _count_error(errors: dict[str, int], status: str, message: str) -> None:
    key = f"HTTP {status}" if status != "000" else (message.strip() or "no HTTP answer")
    errors[key] = errors.get(key, 0) + 1


def _error_detail(errors: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3])


def _curl_config(path: Path, url: str, count: int) -> Path:
    path.write_text(f'url = "{url}"\noutput = "/dev/null"\n' * count)
    return path


def newtls(
    curl_path: str,
    url: str,
    *,
    connections: int,
    duration: float,
    cert: Path,
    key: Path,
    token: str | None,
    workdir: Path,
    cpus: Sequence[int] | None,
) -> LoadResult:
    """Fresh mTLS handshake per request straight into the inbound proxy (see module doc)."""
    body = workdir / "body.json"
    body.write_bytes(BODY)
    batch = max(200, connections * 40)
    config = _curl_config(workdir / "newtls.curl", url, batch)
    headers = [*MCP_HEADERS, "Connection: close"]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    argv = [
        curl_path,
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        str(connections),
        "--silent",
        "--http1.1",
        "--insecure",  # the load generator does not check the server; the proxies check it
        "--no-sessionid",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--data-binary",
        f"@{body}",
        *(arg for h in headers for arg in ("-H", h)),
        "--max-time",
        "30",  # a handshake or response that never comes fails instead of hanging the run
        "--write-out",
        "%{http_code} %{time_total} %{errormsg}\\n",
        "--config",
        str(config),
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ok = 0
    wall = cpu = 0.0
    while wall < duration:
        _code, out, _err, batch_wall, batch_cpu = procs.run_measured(
            argv, cpus=cpus, timeout=duration + 120
        )
        wall += batch_wall
        cpu += batch_cpu
        for ln in out.splitlines():
            parts = ln.split(maxsplit=2)
            if len(parts) < 2:
                continue
            if parts[0] == "200":
                ok += 1
                latencies.append(float(parts[1]) * 1000)
            else:
                _count_error(errors, parts[0], parts[2] if len(parts) > 2 else "")
    latencies.sort()
    return LoadResult(
        count=ok,
        seconds=wall,
        errors=sum(errors.values()),
        error_detail=_error_detail(errors),
        p50_ms=_percentile(latencies, 50),
        p99_ms=_percentile(latencies, 99),
        p999_ms=_percentile(latencies, 99.9),
        loadgen_cpu=cpu,
        notes=[f"curl batches of {batch} transfers; wall time includes curl start-up"],
    )


def sse(
    curl_path: str,
    url: str,
    *,
    streams: int,
    duration: float,
    event_size: int,
    workdir: Path,
    cpus: Sequence[int] | None,
) -> LoadResult:
    """``streams`` SSE streams for ``duration`` seconds; counts whole events received."""
    config = _curl_config(workdir / "sse.curl", url, streams)
    argv = [
        curl_path,
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        str(streams),
        "--silent",
        "--no-buffer",
        "--http1.1",
        "--max-time",
        f"{duration:.3f}",
        "--write-out",
        "%{http_code} %{size_download} %{time_starttransfer} %{time_total} %{errormsg}\\n",
        "--config",
        str(config),
    ]
    _code, out, _err, wall, cpu = procs.run_measured(argv, cpus=cpus, timeout=duration + 60)
    events = 0
    windows: list[float] = []
    first_event_ms: list[float] = []
    errors: dict[str, int] = {}
    for ln in out.splitlines():
        parts = ln.split(maxsplit=4)
        if len(parts) < 4:
            continue
        status, size, ttfb, total = parts[0], int(parts[1]), float(parts[2]), float(parts[3])
        if status != "200":
            _count_error(errors, status, parts[4] if len(parts) > 4 else "")
            continue
        events += size // event_size
        windows.append(max(total - ttfb, 1e-6))
        first_event_ms.append(ttfb * 1000)
    first_event_ms.sort()
    seconds = statistics.median(windows) if windows else wall
    return LoadResult(
        count=events,
        seconds=seconds,
        errors=sum(errors.values()),
        error_detail=_error_detail(errors),
        p50_ms=None,
        p99_ms=None,
        p999_ms=None,
        loadgen_cpu=cpu,
        notes=[
            f"{streams} streams of {event_size}-byte events; time to first byte p50 "
            f"{_percentile(first_event_ms, 50) or 0:.1f} ms"
        ],
    )
