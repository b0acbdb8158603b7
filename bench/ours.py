"""Our pair: an outbound and an inbound ``mcp-sidecar run -c FILE`` process, as in production.

Both get their SVIDs from the dev Workload API subprocess (unix sockets), listen on fixed free
loopback ports and are ready when their admin ``/readyz`` answers 200.

* ``ours-mtls``: inbound with mTLS + ``allow_spiffe_ids`` only; outbound route with
  ``server_spiffe_id``.
* ``ours-mtls-batch`` / ``ours-full-batch``: the same, run with ``process.scheduler: batch``.
* ``ours-full``: also ``inbound.jwt_svid`` (audience = the server's SPIFFE ID, ``bind_to_peer``),
  the outbound route's ``jwt_svid_audience`` (fetched from the Workload API and cached by the
  sidecar) and ``inbound.mcp_policy`` allowing the benchmarked tool only — when this version of
  the sidecar accepts the block (``mcp_policy_status``); otherwise ``ours-full`` runs without it
  and every report says so.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import procs, profiling
from bench.identity import ALLOW, SERVER_ID, TRUST_DOMAIN, Identities

#: The default ``inbound.mcp_policy`` block: allow-list; the agents may ``tools/call`` the
#: benchmarked tool and nothing else (the session methods and ``*/list`` are always allowed by the
#: sidecar) — what the Envoy RBAC policy allows. ``--mcp-policy FILE`` replaces it.
DEFAULT_MCP_POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "agents-call-add",
            "when": {"spiffe_ids": list(ALLOW)},
            "tools": ["add"],
        }
    ],
}


def sidecar_cli() -> list[str]:
    """How to start ``mcp-sidecar``: the venv's console script, else ``python -m sidecar.cli``."""
    script = Path(sys.executable).with_name("mcp-sidecar")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "sidecar.cli"]


@dataclass(frozen=True)
class PolicyStatus:
    """Whether ``inbound.mcp_policy`` can be used, and what to say if not."""

    block: dict[str, Any] | None
    note: str


def mcp_policy_status(block: dict[str, Any], ids: Identities, upstream_port: int) -> PolicyStatus:
    """Use ``block`` if this version of the config accepts it, else say why not."""
    from sidecar import config as sidecar_config
    from sidecar.errors import ConfigErrors

    if "inbound.mcp_policy" in sidecar_config.UNSUPPORTED_KEYS:
        return PolicyStatus(
            None,
            "inbound.mcp_policy is not supported by this version of the sidecar yet "
            "(sidecar.config.UNSUPPORTED_KEYS): ours-full runs WITHOUT the MCP tool policy",
        )
    probe = inbound_config(ids, 1, 2, upstream_port, full=True, mcp_policy=block, access_log=False)
    try:
        sidecar_config.parse_config(probe)
    except ConfigErrors as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        return PolicyStatus(
            None,
            f"the bench's mcp_policy block is not accepted by this version ({problems}); "
            "pass --mcp-policy FILE: ours-full runs WITHOUT the MCP tool policy",
        )
    return PolicyStatus(block, "")


def inbound_config(
    ids: Identities,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    *,
    full: bool,
    mcp_policy: dict[str, Any] | None,
    access_log: bool,
    scheduler: str = "normal",
) -> dict[str, Any]:
    inbound: dict[str, Any] = {
        "listen": f"127.0.0.1:{listen_port}",
        "upstream": f"http://127.0.0.1:{upstream_port}",
        "mtls": "required",
        "allow_spiffe_ids": list(ALLOW),
    }
    if full:
        inbound["jwt_svid"] = {"audiences": [SERVER_ID], "bind_to_peer": True}
        if mcp_policy is not None:
            inbound["mcp_policy"] = mcp_policy
    return {
        "trust_domain": TRUST_DOMAIN,
        "workload_api": ids.server_socket,
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "inbound": inbound,
        "log": {"level": "warning", "access_log": access_log},
        "shutdown": {"drain_timeout": "1s"},  # nothing is in flight when the bench stops us
        "process": {"scheduler": scheduler},
    }


def outbound_config(
    ids: Identities,
    listen_port: int,
    admin_port: int,
    inbound_port: int,
    *,
    full: bool,
    access_log: bool,
    scheduler: str = "normal",
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "name": "math",
        "path_prefix": "/math",
        "upstream": f"https://127.0.0.1:{inbound_port}",
        "server_spiffe_id": SERVER_ID,
    }
    if full:
        route["jwt_svid_audience"] = SERVER_ID
    return {
        "trust_domain": TRUST_DOMAIN,
        "workload_api": ids.agent_socket,
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "outbound": {"listen": f"127.0.0.1:{listen_port}", "routes": [route]},
        "log": {"level": "warning", "access_log": access_log},
        "shutdown": {"drain_timeout": "1s"},
        "process": {"scheduler": scheduler},
    }


def start(
    name: str,
    config: dict[str, Any],
    admin_port: int,
    workdir: Path,
    cpus: Sequence[int] | None,
    *,
    cprofile_dir: Path | None = None,
    cli: list[str] | None = None,
) -> procs.Proc:
    """Write ``config``, run ``mcp-sidecar run -c`` on it and wait for ``/readyz`` 200.

    With ``cprofile_dir``, the process runs under cProfile and writes ``NAME.pstats`` there when
    it stops. ``cli`` replaces this venv's ``mcp-sidecar`` (another installation's)."""
    from sidecar.config import parse_config
    from sidecar.errors import ConfigErrors

    try:
        parse_config(config)
    except ConfigErrors as exc:
        problems = "\n  ".join(str(p) for p in exc.problems)
        raise procs.BenchError(f"{name}: the generated config is invalid:\n  {problems}") from exc
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = cli or sidecar_cli()
    if cprofile_dir is not None:
        cli = profiling.cprofile_argv(cprofile_dir / f"{name}.pstats")
    argv = [*cli, "run", "-c", str(path)]
    proc = procs.start(name, argv, workdir / f"{name}.log", cpus=cpus)
    url = f"http://127.0.0.1:{admin_port}/readyz"
    procs.wait_until(name, lambda: procs.http_status(url) == 200, 60.0, [proc])
    return proc
