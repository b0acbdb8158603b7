"""``python -m bench.idle``: idle RSS of our sidecar pair, without a load generator.

Starts the dev Workload API and the ``ours-full`` pair of the main bench (same configs, real
``mcp-sidecar run`` processes), waits until both answer ``/readyz`` and one more second, reads
``VmRSS`` of each, stops them; ``--repeat`` times, then prints every sample and the median.
``--sidecar PATH`` runs another installation's ``mcp-sidecar`` (e.g. a venv made with a bare
``pip install .``), so the runtime set can be measured without the dev and demo extras.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench import identity, ours, procs


def sample(ids: identity.Identities, cli: list[str], workdir: Path) -> dict[str, float]:
    """One start of the pair: ``{"outbound": MiB, "inbound": MiB}`` after it is idle."""
    i_port, i_admin, o_port, o_admin, upstream = procs.free_ports(5)
    policy = ours.DEFAULT_MCP_POLICY
    inbound_cfg = ours.inbound_config(
        ids, i_port, i_admin, upstream, full=True, mcp_policy=policy, access_log=False
    )
    outbound_cfg = ours.outbound_config(ids, o_port, o_admin, i_port, full=True, access_log=False)
    started: list[procs.Proc] = []
    try:
        for name, config, admin in (
            ("inbound", inbound_cfg, i_admin),
            ("outbound", outbound_cfg, o_admin),
        ):
            started.append(ours.start(name, config, admin, workdir, None, cli=cli))
        time.sleep(1.0)
        return {proc.name: proc.rss_mib() for proc in started}
    finally:
        for proc in started:
            proc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="starts of the pair (3)")
    parser.add_argument(
        "--sidecar", type=Path, default=None, help="the mcp-sidecar to measure (this venv's)"
    )
    args = parser.parse_args(argv)
    cli = [str(args.sidecar)] if args.sidecar else ours.sidecar_cli()
    with tempfile.TemporaryDirectory(prefix="bench-idle-", dir="/tmp") as tmp:
        state = Path(tmp)
        ids = identity.prepare(state)
        wapi = identity.start_workload_api(ids, ours.sidecar_cli(), None)
        try:
            samples = [sample(ids, cli, state / f"run{i}") for i in range(args.repeat)]
        finally:
            wapi.stop()
    for role in ("outbound", "inbound"):
        values = [s[role] for s in samples]
        listed = " ".join(f"{v:.1f}" for v in values)
        print(f"{role}: idle RSS MiB {listed} (median {statistics.median(values):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
