"""``--profile VARIANT``: where our sidecars spend their CPU under the benchmark's load.

Default profiler: py-spy (PyPI wheel with a native binary; installed into the running venv with
pip on first use). It *attaches* to each sidecar process for exactly the measured part of a run
(``py-spy record --pid PID --nonblocking``: the target is never paused), runs on the load
generator's CPUs, and writes collapsed stacks (``--format raw``: one ``frame;frame;... count``
line per stack, readable by speedscope, flamegraph.pl or inferno) per run and process. A summary
of the hottest functions (self and inclusive samples) is printed and saved next to it.

Fallback (``--profiler cprofile``, or when py-spy cannot be installed): the sidecars are started
under ``python -m cProfile -o FILE`` and the stats cover their whole life (start-up, warm-up and
every run); a ``pstats`` summary sorted by own time is written when they stop. cProfile slows
the sidecars down a lot: its numbers are for finding hot spots only.
"""

from __future__ import annotations

import collections
import contextlib
import pstats
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from bench import procs

PYSPY_RATE = 250  # samples per second


def ensure_pyspy() -> str | None:
    """The py-spy binary, installing the wheel into this venv if needed; None if impossible."""
    found = Path(sys.executable).with_name("py-spy")
    if found.is_file():
        return str(found)
    if shutil.which("py-spy"):
        return shutil.which("py-spy")
    print("installing py-spy into this virtualenv (pip install py-spy) ...", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "py-spy"],
        check=False,
    )
    if done.returncode == 0 and found.is_file():
        return str(found)
    return None


@contextlib.contextmanager
def pyspy_record(
    pyspy: str,
    targets: Sequence[procs.Proc],
    out_dir: Path,
    stem: str,
    cpus: Sequence[int] | None,
    *,
    native: bool = False,
) -> Iterator[list[Path]]:
    """Record every target while the ``with`` block runs; yields the output paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen[bytes], Path]] = []
    for proc in targets:
        path = out_dir / f"{stem}-{proc.name}.collapsed.txt"
        argv = procs.pinned(
            [
                pyspy,
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                str(PYSPY_RATE),
                # --nonblocking never pauses the target; py-spy cannot combine it with --native,
                # which pauses the process for every sample (slower, and the numbers show it).
                *(["--native"] if native else ["--nonblocking"]),
                "--format",
                "raw",
                "--output",
                str(path),
            ],
            cpus,
        )
        log = (out_dir / f"{stem}-{proc.name}.py-spy.log").open("wb")
        running.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), path))  # noqa: S603
        log.close()
    try:
        yield [path for _, path in running]
    finally:
        for popen, _ in running:
            if popen.poll() is None:
                popen.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        for popen, _ in running:
            try:
                popen.wait(30)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()


def summarize_collapsed(path: Path, top: int = 20) -> str:
    """The hottest functions of a collapsed-stack file: own samples and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    try:
        lines = path.read_text("utf-8", "replace").splitlines()
    except OSError as exc:
        return f"(no profile: {exc})"
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "(no samples)"
    out = [f"{path.name}: {total} samples", "  own time:"]
    out += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    out.append("  inclusive:")
    out += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(out)


def cprofile_argv(out: Path) -> list[str]:
    """Prefix that starts ``sidecar.cli`` under cProfile, writing stats to ``out`` on exit."""
    return [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "sidecar.cli"]


def summarize_pstats(path: Path, top: int = 30) -> str:
    import io

    if not path.exists():
        return f"(no profile written to {path})"
    buf = io.StringIO()
    stats = pstats.Stats(str(path), stream=buf)
    stats.sort_stats("tottime").print_stats(top)
    return f"{path.name}:\n{buf.getvalue()}"
