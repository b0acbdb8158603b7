"""The benchmark harness (``bench/``): a cheap end-to-end smoke run and its report rendering.

No timing assertions (numbers on a shared machine are noise): only that ``python -m bench`` runs
one variant end to end and produces its table, and that the report computes ratios to Envoy and
appends to the results file without losing earlier runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.checks import Check
from bench.load import LoadResult

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    shutil.which("wrk") is None or shutil.which("curl") is None,
    reason="wrk or curl not installed (`make bench` installs them as root: apt-get install wrk)",
)
@pytest.mark.timeout(60)
def test_one_short_run_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--variants",
            "ours-mtls",
            "--runs",
            "keepalive",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--connections",
            "2",
            "--out",
            str(out),
            "--label",
            "smoke",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=55,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "#### keepalive" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| ours-mtls | "))
    assert row.split("|")[2].strip() not in ("0", "n/a")  # some requests went through the pair
    assert "#### what each variant was verified to check" in done.stdout
    text = out.read_text()
    assert "## Optimization log" in text and "— smoke" in text


def _measurement(variant: str, run: str, count: int, p99: float) -> report.Measurement:
    result = LoadResult(count=count, seconds=1.0, p50_ms=1.0, p99_ms=p99, p999_ms=p99 * 2)
    cpu = {"outbound": count / 2000, "inbound": count / 2000, "upstream": 0.01}
    return report.Measurement(variant, run, result, cpu=cpu, peak_rss={"outbound": 50.0})


def _report() -> report.Report:
    return report.Report(
        title="t",
        command="python -m bench",
        machine={"nproc": "2"},
        versions={"python": "3"},
        placement=["p"],
        settings={"duration": "1 s"},
        notes=[],
        variants=["envoy-full", "ours-full"],
        runs=["keepalive"],
        measurements=[
            _measurement("envoy-full", "keepalive", 8000, 4.0),
            _measurement("ours-full", "keepalive", 4000, 2.0),
        ],
        idle_rss={"ours-full": {"outbound": 40.0, "inbound": 41.0}},
        checks={"ours-full": [Check("forwards", False, "200", True)]},
        connections=16,
        sse_streams=16,
        commit="abc",
    )


def test_report_ratios_and_results_file(tmp_path: Path) -> None:
    rep = _report()
    text = report.markdown(rep)
    assert "| ours-full / envoy-full | **0.50x** | 0.50x |" in text
    out = tmp_path / "RESULTS.md"
    report.write_results(out, rep, "before", "2026-01-01 10:00")
    report.write_results(out, rep, "after", "2026-01-01 11:00")
    results = out.read_text()
    assert results.count("## Optimization log") == 1
    log = results[results.index(report.LOG_START) : results.index(report.LOG_END)]
    assert "| before |" in log and "| after |" in log
    assert log.index("| before |") < log.index("| after |")
    assert results.count("### t") == 2


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args``, which must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.timeout(120)
@pytest.mark.parametrize("extra", [[], ["--variant", "mtls", "--access-log"]])
def test_inproc_pair_answers_every_request(extra: list[str]) -> None:
    """``python -m bench.inproc``: the pair in one process; it raises unless every request is
    answered 200 through the checks, and prints the CPU figure."""
    done = run_module("bench.inproc", "--requests", "300", "--warmup", "50", *extra)
    variant = "ours-mtls, access logs on" if extra else "ours-full"
    assert re.fullmatch(
        rf"{re.escape(variant)}: \d+\.\d µs CPU per request \(median of 3: .*\)\n", done.stdout
    ), done.stdout


def test_repeats_alternate_variants() -> None:
    from bench.cli import rotated

    variants = ["envoy-full", "ours-full", "envoy-mtls"]
    orders = [rotated(variants, rep) for rep in range(3)]
    assert orders == [
        ["envoy-full", "ours-full", "envoy-mtls"],
        ["ours-full", "envoy-mtls", "envoy-full"],
        ["envoy-mtls", "envoy-full", "ours-full"],
    ]
    assert {tuple(sorted(o)) for o in orders} == {tuple(sorted(variants))}


def _repeats(variant: str, rates: list[int]) -> report.Measurement:
    return report.combine([_measurement(variant, "keepalive", r, 2.0) for r in rates])


def test_ratio_is_paired_by_repeat_and_flags_drift() -> None:
    """A machine that slows down between repeats moves both variants of a repeat alike: the
    per-repeat ratio stays put where a ratio of medians would not, and the drift is flagged."""
    envoy = _repeats("envoy-full", [10000, 6000, 8000])
    ours = _repeats("ours-full", [11000, 6600, 8800])
    rate = report.paired(ours, envoy, "rate")
    assert rate is not None
    assert (round(rate.low, 3), round(rate.median, 3), round(rate.high, 3)) == (1.1, 1.1, 1.1)
    assert rate.envoy_spread == 0.5
    assert rate.flags == ["Envoy moved 50% between repeats"]
    steady = report.paired(_repeats("o", [9000, 10500, 9900]), _repeats("e", [10000] * 3), "rate")
    assert steady is not None and steady.flags == ["repeats fall on both sides of 1.0"]
    assert steady.text() == "0.99x (0.90-1.05)"
    rep = _report()
    rep.measurements = [envoy, ours]
    text = report.markdown(rep)
    assert "| ours-full / envoy-full | **1.10x (1.10-1.10)** |" in text
    assert "ratio unreliable: Envoy moved 50% between repeats" in text


@pytest.mark.timeout(120)
def test_mux_overhead_answers_every_request_on_both_routes() -> None:
    """``python -m bench.mux``: the plain and the multiplexing route alternate; it raises unless
    every request of both is answered 200, and prints both figures and their difference."""
    done = run_module("bench.mux", "--requests", "200", "--warmup", "50", "--repeat", "2")
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"single +\d+\.\d µs CPU per request \(.*\)", lines[0]), lines
    assert re.fullmatch(r"mux +\d+\.\d µs CPU per request \(.*\)", lines[1]), lines
    assert lines[2].startswith("mux - single: ")
