"""``mcp-sidecar`` command line: one sub-command per job, each defined next to its code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sidecar import __version__


def build_parser() -> argparse.ArgumentParser:
    from sidecar.identity import devserver

    parser = argparse.ArgumentParser(
        prog="mcp-sidecar",
        description="SPIFFE mTLS sidecar for AI agents and MCP servers.",
    )
    parser.add_argument("--version", action="version", version=f"mcp-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev-workload-api",
        help="run the embedded dev SPIFFE Workload API (local/test stand-in for a SPIRE agent)",
        description=devserver.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    devserver.configure_parser(dev)
    dev.set_defaults(handler=devserver.run_from_args)

    demo = commands.add_parser("demo", help="run the local mesh demo")
    demo.set_defaults(handler=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    print(
        "mcp-sidecar demo: not yet — the mTLS data path (issue 3) has not landed.\n"
        "What works today: `mcp-sidecar dev-workload-api --help` (dev SPIFFE Workload API)."
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    result = handler(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
