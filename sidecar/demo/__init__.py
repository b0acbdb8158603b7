"""``mcp-sidecar demo``: a whole agentic mesh on this machine, exercised and explained.

Starts the embedded dev Workload API (stand-in for SPIRE) with five identities — an agent, the
``math`` and ``clock`` MCP servers, an edge gateway and a rogue workload — two real MCP servers
(official SDK) behind their inbound sidecars, and outbound sidecars for the agent and the rogue.
The agent then lists and calls tools through the mesh with the official MCP client; the rogue is
refused. The agent also sees both servers' tools through one multiplexing route (``/tools``),
and the edge gateway (OAuth in, with a demo issuer's tokens) lets an admin call ``echo`` and a
user only ``get_time``. Prints a short report and exits 0 when everything behaved as a mesh
must. (The demo's code lives in ``sidecar.demo.mesh``,
imported only when the demo runs.)

``--scenario delegation``: the agent acts for users. Their tokens are exchanged by the agent's
sidecar at a local security token service (RFC 8693) and the server's policy decides on user and
agent together (``sidecar.demo.delegation``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        choices=("mesh", "delegation"),
        default="mesh",
        help="mesh (default): agents, a rogue, tools; delegation: an agent acting for users "
        "through token exchange",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the mesh up after the report (Ctrl-C to stop) for curl / MCP Inspector",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the dev CA, sockets, configs and access logs go (default: a temp dir)",
    )
