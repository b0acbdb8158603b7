"""Processes of a benchmark: start pinned to CPUs, wait until ready, read CPU time and RSS, stop.

CPU time is ``utime + stime`` of ``/proc/PID/stat`` (all threads of the process, in clock ticks);
memory is ``VmRSS`` (now) and ``VmHWM`` (peak) of ``/proc/PID/status``. The peak is reset before
each measured run by writing ``5`` to ``/proc/PID/clear_refs`` (Linux >= 4.0), so every run
reports its own peak; where that is refused, the peak is "since start" and the report says so.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
TASKSET = shutil.which("taskset")
STOP_GRACE = 10.0


class BenchError(RuntimeError):
    """The benchmark cannot go on (a process died, a port never opened, a tool is missing)."""


def cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in cpus)


def pinned(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    """``argv`` prefixed with ``taskset -c CPUS`` (or unchanged when not pinning)."""
    if not cpus:
        return list(argv)
    if TASKSET is None:
        raise BenchError("taskset (util-linux) not found; install it or pass --no-pin")
    return [TASKSET, "-c", cpu_list(cpus), *argv]


@dataclass
class Proc:
    """One long-running process of the benchmark (a proxy, the upstream, the Workload API)."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    peak_resettable: bool = field(default=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise BenchError(
                f"{self.name} exited with {self.popen.returncode}; last log lines:\n"
                f"{self.log_tail()}"
            )

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log.read_text("utf-8", "replace")[-limit:]
        except OSError as exc:
            return f"<no log: {exc}>"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every thread of the process so far."""
        text = Path(f"/proc/{self.pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def _status_kib(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024

    def reset_peak(self) -> None:
        """Make ``VmHWM`` restart from the current RSS (``clear_refs`` value 5)."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            self.peak_resettable = False

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(STOP_GRACE)


def start(
    name: str,
    argv: Sequence[str],
    log: Path,
    *,
    cpus: Sequence[int] | None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    full = pinned(argv, cpus)
    with log.open("wb") as out:
        popen = subprocess.Popen(  # noqa: S603 - our own argv
            full,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    return Proc(name, full, popen, log)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago (bound together, released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_until(
    what: str, probe: Callable[[], bool], timeout: float, procs: Sequence[Proc] = ()
) -> None:
    """Poll ``probe`` until true; fail early if one of ``procs`` dies, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        for proc in procs:
            proc.check_alive()
        if probe():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}:\n{p.log_tail()}" for p in procs)
            raise BenchError(f"{what}: not ready within {timeout:.0f}s\n{tails}")
        time.sleep(0.05)


def http_status(url: str, *, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def http_body(url: str, *, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
        return str(resp.read().decode("utf-8", "replace"))


def tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_measured(
    argv: Sequence[str], *, cpus: Sequence[int] | None, timeout: float
) -> tuple[int, str, str, float, float]:
    """Run a load generator to completion: ``(exit code, stdout, stderr, wall s, CPU s)``.

    CPU seconds come from ``wait4``'s rusage of the child (exact, all its threads)."""
    full = pinned(argv, cpus)
    cpu_before = children_cpu()
    started = time.monotonic()
    popen = subprocess.Popen(  # noqa: S603 - our own argv
        full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        popen.kill()
        out, err = popen.communicate()
        raise BenchError(f"{argv[0]} did not finish within {timeout:.0f}s") from None
    wall = time.monotonic() - started
    # communicate() reaped the child: its CPU time is now in our RUSAGE_CHILDREN.
    cpu = children_cpu() - cpu_before
    return (
        popen.returncode,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        wall,
        cpu,
    )


def children_cpu() -> float:
    """CPU seconds of all reaped children of this process so far (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
