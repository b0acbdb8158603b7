"""Before measuring a variant, prove what it checks: a few requests that must pass or be refused.

A benchmark of a proxy that silently stopped checking would be worthless, so each variant is
probed (with curl, as the agent or as a rogue workload, from the same CA) and the outcome goes
into the report next to its numbers:

* ``forwards``: a ``tools/call add`` through the pair gets 200 and the upstream's exact body;
* ``tool policy``: ``tools/call`` of a tool that is not allowed is refused (403) — or, where the
  variant has no tool policy, passes;
* ``JWT required``: a request to the inbound side with the agent's certificate but no token is
  refused (401) — or passes where no token is checked;
* ``JWT bound to peer``: the agent's certificate with the JWT-SVID of *another* workload is
  refused — or passes;
* ``allowlist``: a workload of the same trust domain that is not allowlisted is refused (403, or
  the connection is closed: Envoy's network RBAC).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.identity import Identities
from bench.load import BODY, MCP_HEADERS

FORBIDDEN_TOOL_BODY = BODY.replace(b'"add"', b'"rm_rf"')
#: What counts as "refused by this check" (anything else, a 504 say, is UNEXPECTED);
#: "000" = no HTTP answer: Envoy's network RBAC closes the connection of a stranger.
REFUSALS = {
    "tool policy": {"403"},
    "JWT required": {"401"},
    "JWT bound to peer": {"401", "403"},
    "allowlist": {"403", "000"},
}


@dataclass(frozen=True)
class Check:
    name: str
    expect_refused: bool
    status: str  # HTTP status as curl saw it; "000" = no HTTP answer (connection refused/closed)
    ok: bool

    def describe(self) -> str:
        want = "refused" if self.expect_refused else "passes"
        got = "no HTTP answer" if self.status == "000" else f"HTTP {self.status}"
        return f"{self.name}: {'ok' if self.ok else 'UNEXPECTED'} ({want}; {got})"


@dataclass(frozen=True)
class Expect:
    """What a variant claims to enforce."""

    jwt: bool
    jwt_bound: bool
    tool_policy: bool


def _curl(curl: str, url: str, body: bytes, extra: list[str], workdir: Path) -> tuple[str, bytes]:
    out = workdir / "check-body.out"
    payload = workdir / "check-request.json"
    payload.write_bytes(body)
    argv = [
        curl,
        "--silent",
        "--http1.1",
        "--max-time",
        "10",
        "--output",
        str(out),
        "--write-out",
        "%{http_code}",
        "--data-binary",
        f"@{payload}",
        *(arg for h in MCP_HEADERS for arg in ("-H", h)),
        *extra,
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)  # noqa: S603
    content = out.read_bytes() if out.exists() else b""
    out.unlink(missing_ok=True)
    return done.stdout.strip() or "000", content


def run_checks(
    curl: str,
    *,
    entry_url: str,
    inbound_url: str | None,
    expected_body: bytes,
    ids: Identities,
    expect: Expect,
    workdir: Path,
) -> list[Check]:
    checks: list[Check] = []
    status, content = _curl(curl, entry_url, BODY, [], workdir)
    checks.append(Check("forwards", False, status, status == "200" and content == expected_body))
    if inbound_url is None:
        return checks

    def probe(name: str, url: str, body: bytes, extra: list[str], refused: bool) -> None:
        code, _ = _curl(curl, url, body, extra, workdir)
        ok = code in REFUSALS[name] if refused else code == "200"
        checks.append(Check(name, refused, code, ok))

    probe("tool policy", entry_url, FORBIDDEN_TOOL_BODY, [], expect.tool_policy)

    def tls(who: str) -> list[str]:
        person = getattr(ids, who)
        return ["--insecure", "--cert", str(person.chain), "--key", str(person.key)]

    def bearer(token: str) -> list[str]:
        return ["-H", f"Authorization: Bearer {token}"]

    probe("JWT required", inbound_url, BODY, tls("agent"), expect.jwt)
    probe(
        "JWT bound to peer",
        inbound_url,
        BODY,
        [*tls("agent"), *bearer(ids.rogue.jwt_for_server)],
        expect.jwt_bound,
    )
    probe("allowlist", inbound_url, BODY, [*tls("rogue"), *bearer(ids.rogue.jwt_for_server)], True)
    return checks
