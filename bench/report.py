"""Markdown tables, ratios to Envoy, and ``bench/RESULTS.md`` (a log that every run appends to)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.checks import Check
from bench.load import SATURATED, LoadResult

ROLES = ("outbound", "inbound", "upstream")
PAIRS = (
    ("ours-full", "envoy-full"),
    ("ours-mtls", "envoy-mtls"),
    ("ours-full-batch", "envoy-full"),
    ("ours-mtls-batch", "envoy-mtls"),
    ("ours-full-batch", "ours-full"),
    ("ours-mtls-batch", "ours-mtls"),
)
RSS_TARGET_MIB = 60.0
LOG_START = "<!-- bench:optimization-log -->"
LOG_END = "<!-- bench:optimization-log-end -->"
RUNS_MARK = "<!-- bench:runs -->"

RUN_TITLES = {
    "keepalive": "keep-alive: wrk, POST tools/call (98 B), {c} connections",
    "newconn": "new connection per request: wrk + `Connection: close` into the outbound side "
    "(mTLS between the pair stays pooled), {c} connections",
    "newtls": "new mTLS handshake per request on the pair's hop: curl as the agent straight into "
    "the inbound side, `Connection: close`, no session resumption, {c} in parallel",
    "sse": "SSE: {s} concurrent GET streams through the pair, events counted at the client",
}


@dataclass
class Measurement:
    variant: str
    run: str
    result: LoadResult | None  # None: the run does not apply to this variant
    cpu: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds in the run
    peak_rss: dict[str, float] = field(default_factory=dict)  # role -> MiB
    rates: list[float] = field(default_factory=list)  # every repeat
    note: str = ""
    profiled: bool = False
    reps: list[Measurement] = field(default_factory=list)  # every repeat, in the order run
    app: LoadResult | None = None  # --busy-app: the application's own requests meanwhile

    def per_1k(self, role: str) -> float | None:
        if self.result is None or not self.result.count:
            return None
        seconds = self.result.loadgen_cpu if role == "load" else self.cpu.get(role)
        return None if seconds is None else seconds / (self.result.count / 1000)

    def proxies_per_1k(self) -> float | None:
        parts = [self.per_1k(r) for r in ("outbound", "inbound")]
        present = [p for p in parts if p is not None]
        return sum(present) if present else None


@dataclass
class Report:
    title: str
    command: str
    machine: dict[str, str]
    versions: dict[str, str]
    placement: list[str]
    settings: dict[str, str]
    notes: list[str]
    variants: list[str]
    runs: list[str]
    measurements: list[Measurement]
    idle_rss: dict[str, dict[str, float]]  # variant -> role -> MiB
    checks: dict[str, list[Check]]
    connections: int
    sse_streams: int
    commit: str


DRIFT_LIMIT = 0.15
"""Envoy's own spread between repeats ((max - min) / median of its rate) above which a run's
ratio is flagged: the machine moved more than most changes we measure."""


def combine(reps: list[Measurement]) -> Measurement:
    """The repeats of one variant and run: the median one (by rate) stands for them, with
    every repeat's rate and the repeats themselves (for ratios paired by repeat)."""
    ordered = sorted(reps, key=lambda m: m.result.rate if m.result else 0.0)
    chosen = ordered[len(ordered) // 2]
    chosen.rates = [m.result.rate for m in reps if m.result is not None]
    chosen.reps = list(reps)
    return chosen


def spread(values: list[float]) -> float | None:
    """(max - min) / median: how much one variant moved between repeats."""
    if len(values) < 2:
        return None
    ordered = sorted(values)
    middle = ordered[len(ordered) // 2]
    return (ordered[-1] - ordered[0]) / middle if middle else None


@dataclass
class PairedRatio:
    """ours / Envoy per repeat (both measured within the same repeat, minutes apart at most),
    summarised: the median, the range, and whether the machine's drift makes it unreliable."""

    median: float
    low: float
    high: float
    count: int
    envoy_spread: float | None

    @property
    def flags(self) -> list[str]:
        flags = []
        if self.envoy_spread is not None and self.envoy_spread > DRIFT_LIMIT:
            flags.append(f"Envoy moved {100 * self.envoy_spread:.0f}% between repeats")
        if self.count > 1 and self.low < 1.0 < self.high:
            flags.append("repeats fall on both sides of 1.0")
        return flags

    def text(self, digits: int = 2) -> str:
        out = f"{self.median:.{digits}f}x"
        if self.count > 1:
            out += f" ({self.low:.{digits}f}-{self.high:.{digits}f})"
        return out


def paired(a: Measurement, b: Measurement, value: str) -> PairedRatio | None:
    """Ratios of ``value`` ("rate", "p99" or "cpu") between ``a`` (ours) and ``b`` (Envoy),
    repeat by repeat; falls back to the medians when repeats cannot be paired."""
    left = a.reps or [a]
    right = b.reps or [b]
    if len(left) != len(right):
        left, right = [a], [b]
    ratios = []
    for x, y in zip(left, right, strict=True):
        ours, theirs = _value(x, value), _value(y, value)
        if ours is not None and theirs:
            ratios.append(ours / theirs)
    if not ratios:
        return None
    ratios.sort()
    return PairedRatio(
        ratios[len(ratios) // 2], ratios[0], ratios[-1], len(ratios), spread(b.rates)
    )


def _value(m: Measurement, value: str) -> float | None:
    if m.result is None:
        return None
    if value == "rate":
        return m.result.rate
    if value == "p99":
        return m.result.p99_ms
    return m.proxies_per_1k()


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def find(report: Report, variant: str, run: str) -> Measurement | None:
    for m in report.measurements:
        if m.variant == variant and m.run == run and m.result is not None:
            return m
    return None


def run_table(report: Report, run: str) -> list[str]:
    sse = run == "sse"
    unit = "events/s" if sse else "req/s"
    per = "1k events" if sse else "1k req"
    title = RUN_TITLES[run].format(c=report.connections, s=report.sse_streams)
    lines = [
        f"#### {run} — {title}",
        "",
        f"| variant | {unit} | p50 ms | p99 ms | p99.9 ms | errors | CPU s/{per}: outbound "
        "| inbound | upstream | load gen | peak RSS MiB out / in |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    notes: list[str] = []
    run_notes: dict[str, list[str]] = {}  # note -> variants it was made for
    for variant in report.variants:
        m = next((x for x in report.measurements if x.variant == variant and x.run == run), None)
        if m is None:
            continue
        if m.result is None:
            lines.append(f"| {variant} | n/a | | | | | | | | | |")
            if m.note:
                notes.append(f"{variant}: {m.note}")
            continue
        r = m.result
        rate = _rate(r.rate)
        if len(m.rates) > 1:
            rate += f" ({_rate(min(m.rates))}-{_rate(max(m.rates))})"
        if m.profiled:
            rate += " (profiled)"
        load = _f(m.per_1k("load"), 3)
        if r.loadgen_busy >= SATURATED:
            load += " ⚠"
            notes.append(
                f"{variant}: the load generator was busy {100 * r.loadgen_busy:.0f}% of the run: "
                "it may be the bottleneck, not the proxies"
            )
        rss = " / ".join(_f(m.peak_rss.get(role), 1) for role in ("outbound", "inbound"))
        errors = str(r.errors) if not r.errors else f"{r.errors} ({r.error_detail})"
        lines.append(
            f"| {variant} | {rate} | {_f(r.p50_ms)} | {_f(r.p99_ms)} | {_f(r.p999_ms)} | {errors} "
            f"| {_f(m.per_1k('outbound'), 3)} | {_f(m.per_1k('inbound'), 3)} "
            f"| {_f(m.per_1k('upstream'), 3)} | {load} | {rss} |"
        )
        for note in r.notes:
            run_notes.setdefault(note, []).append(variant)
    ratio_lines = []
    for ours, theirs in PAIRS:
        a, b = find(report, ours, run), find(report, theirs, run)
        if a is None or b is None or a.result is None or b.result is None:
            continue
        rate_ratio = paired(a, b, "rate")
        p99 = None if sse else paired(a, b, "p99")
        cpu = paired(a, b, "cpu")
        ratio_lines.append(
            f"| {ours} / {theirs} | **{rate_ratio.text() if rate_ratio else '-'}** "
            f"| {p99.text() if p99 else '-'} | {cpu.text() if cpu else '-'} "
            f"| {_pct(spread(b.rates))} / {_pct(spread(a.rates))} |"
        )
        for flag in rate_ratio.flags if rate_ratio else []:
            notes.append(f"{ours} / {theirs}: ratio unreliable: {flag}")
    if ratio_lines:
        lines += [
            "",
            f"| ratio, per repeat: median (range) | {unit} (≥ 1 is better) "
            f"| p99 (≤ 1 is better) | proxy CPU per {per} (≤ 1 is better) "
            "| spread between repeats: second / first |",
            "|---|--:|--:|--:|--:|",
            *ratio_lines,
        ]
    lines += app_table(report, run)
    notes += [f"{n} ({', '.join(vs)})" for n, vs in run_notes.items()]
    if notes:
        lines += ["", *(f"- {n}" for n in dict.fromkeys(notes))]
    return lines


def app_table(report: Report, run: str) -> list[str]:
    """``--busy-app``: how the application sharing the proxies' core fared during each variant's
    runs (its own requests, straight into it): median over the repeats."""
    rows = []
    for variant in report.variants:
        m = next((x for x in report.measurements if x.variant == variant and x.run == run), None)
        if m is None or m.result is None:
            continue
        apps = [r.app for r in (m.reps or [m]) if r.app is not None]
        if not apps:
            continue
        rows.append(
            f"| {variant} | {_rate(_median([a.rate for a in apps]) or 0.0)} "
            f"| {_f(_median([a.p50_ms for a in apps]))} "
            f"| {_f(_median([a.p99_ms for a in apps]))} |"
        )
    if not rows:
        return []
    return [
        "",
        "| busy application (its own requests, meanwhile) | req/s | p50 ms | p99 ms |",
        "|---|--:|--:|--:|",
        *rows,
    ]


def _median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None)
    return present[len(present) // 2] if present else None


def idle_table(report: Report) -> list[str]:
    rows = [
        f"| {v} | {_f(rss.get('outbound'), 1)} | {_f(rss.get('inbound'), 1)} "
        f"| {'yes' if all(x <= RSS_TARGET_MIB for x in rss.values()) else '**no**'} |"
        for v, rss in report.idle_rss.items()
        if rss
    ]
    if not rows:
        return []
    return [
        "#### idle RSS after start-up, before any load",
        "",
        f"| variant | outbound MiB | inbound MiB | ≤ {RSS_TARGET_MIB:.0f} MiB each |",
        "|---|--:|--:|---|",
        *rows,
    ]


def checks_table(report: Report) -> list[str]:
    names = ["forwards", "tool policy", "JWT required", "JWT bound to peer", "allowlist"]
    lines = [
        "#### what each variant was verified to check (probed before measuring)",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for variant in report.variants:
        checks = {c.name: c for c in report.checks.get(variant, [])}
        if not checks:
            continue
        cells = []
        for name in names:
            c = checks.get(name)
            if c is None:
                cells.append("-")
            elif not c.ok:
                cells.append(f"**UNEXPECTED** ({'no answer' if c.status == '000' else c.status})")
            elif c.name == "forwards":
                cells.append("yes")
            elif c.expect_refused:
                cells.append("refused " + ("(conn. closed)" if c.status == "000" else c.status))
            else:
                cells.append("not checked")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: Report) -> str:
    lines = [f"### {report.title}", ""]
    lines += [f"- command: `{report.command}`"]
    lines += [f"- machine: {', '.join(f'{k} {v}' for k, v in report.machine.items())}"]
    lines += [f"- versions: {', '.join(f'{k} {v}' for k, v in report.versions.items())}"]
    lines += [f"- placement: {'; '.join(report.placement)}"]
    lines += [f"- settings: {', '.join(f'{k} {v}' for k, v in report.settings.items())}"]
    lines += [f"- note: {n}" for n in report.notes]
    lines.append("")
    for run in report.runs:
        lines += [*run_table(report, run), ""]
    lines += [*idle_table(report), ""]
    lines += [*checks_table(report), ""]
    return "\n".join(lines)


def log_rows(report: Report, label: str, date: str) -> list[str]:
    rows = []
    for ours, theirs in PAIRS:
        cells = []
        found = False
        for run in ("keepalive", "newconn", "newtls", "sse"):
            a, b = find(report, ours, run), find(report, theirs, run)
            if a is None or b is None or a.result is None or b.result is None:
                cells.append("-")
                continue
            found = True
            rate = paired(a, b, "rate")
            cell = rate.text() if rate is not None else "-"
            p99 = None if run == "sse" else paired(a, b, "p99")
            if p99 is not None:
                cell += f" · p99 {p99.median:.2f}x"
            if rate is not None and rate.flags:
                cell += " ⚠"
            cells.append(cell)
        if not found:
            continue
        idle = report.idle_rss.get(ours, {})
        rss = f"{_f(idle.get('outbound'), 0)} / {_f(idle.get('inbound'), 0)}"
        rows.append(
            f"| {date} | {label} | {report.commit} | {ours} / {theirs} | "
            + " | ".join(cells)
            + f" | {rss} |"
        )
    return rows


HEADER = f"""# Benchmark results: mcp-sidecar pair vs Envoy pair

Written by `python -m bench` (`make bench`); the method, the variants and what each of them
checks are in [README.md](README.md). Every run appends one section under "Runs" and its ratios
to the optimization log. On a shared 2-core machine absolute numbers are noise: compare the
**ratios ours / Envoy** measured in the same run, and prefer runs with `--repeat 3`.

## Optimization log

Ratios ours / Envoy of each run (requests/s, or events/s for SSE: ≥ 1 means we are faster;
`p99` ≤ 1 means our tail latency is lower), and our idle RSS in MiB. With repeats, variants
alternate within each repeat and the ratio is the median of the per-repeat ratios (their range in
brackets); ⚠ marks a ratio the machine's drift makes unreliable (see the run's notes). Name a run
with `--label` (e.g. `--label "before: <change>"`, then `--label "after: <change>"`).

{LOG_START}
| date | label | commit | pair | keepalive | newconn | newtls | sse | idle RSS ours out / in |
|---|---|---|---|---|---|---|---|---|
{LOG_END}

## Runs

{RUNS_MARK}
"""


def write_results(path: Path, report: Report, label: str, date: str) -> None:
    """Append this run to ``path`` (created with its header if missing), keeping the rest."""
    text = path.read_text("utf-8") if path.exists() else HEADER
    if LOG_END not in text:
        text += (
            "\n## Optimization log\n\n" + HEADER[HEADER.index(LOG_START) : HEADER.index("## Runs")]
        )
    rows = log_rows(report, label, date)
    if rows:
        text = text.replace(LOG_END, "\n".join(rows) + "\n" + LOG_END, 1)
    text = text.rstrip("\n") + "\n\n" + markdown(report)
    path.write_text(re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n", "utf-8")
