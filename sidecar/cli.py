"""``mcp-sidecar`` command line: one sub-command per job, each defined next to its code."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sidecar import __version__

if TYPE_CHECKING:
    from sidecar.config import Config

#: Top-level modules of the ``demo`` extra (the MCP SDK and what the demo imports of its stack).
DEMO_PACKAGES = frozenset({"mcp", "uvicorn", "starlette", "anyio", "httpx2", "pydantic"})


def build_parser() -> argparse.ArgumentParser:
    from sidecar import apikey_cli, inject, webhook_cli
    from sidecar import demo as demo_package
    from sidecar.config import LOG_LEVELS
    from sidecar.mcp import explain

    parser = argparse.ArgumentParser(
        prog="mcp-sidecar",
        description="SPIFFE mTLS sidecar for AI agents and MCP servers.",
    )
    parser.add_argument("--version", action="version", version=f"mcp-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Its flags are parsed by sidecar.dev.devserver itself (_dev_workload_api), so that no other
    # command, ``run`` above all, loads the dev Workload API (about 1 MiB).
    dev = commands.add_parser(
        "dev-workload-api",
        help="run the embedded dev SPIFFE Workload API (local/test stand-in for a SPIRE agent)",
        add_help=False,
    )
    dev.set_defaults(handler=_dev_workload_api, passes_unknown_args=True)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file and print every problem",
        description="Validate a YAML configuration file. Prints every problem as "
        "'path: message' on stderr and exits 1, or a short summary on stdout and exits 0. "
        "Every key is described in docs/configuration.md.",
    )
    check.add_argument("file", metavar="FILE", help="the YAML configuration file")
    check.set_defaults(handler=_check_config)

    run = commands.add_parser(
        "run",
        help="run the sidecar (inbound and/or outbound listeners, admin endpoints)",
        description="Run the sidecar with a YAML configuration (see docs/configuration.md). "
        "An invalid configuration is refused with every problem listed, exit code 1.",
    )
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration file")
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="log level, overriding log.level of the configuration (change it while running: "
        "POST /logging?level=... on the admin listener)",
    )
    run.set_defaults(handler=_run)

    explain_cmd = commands.add_parser(
        "explain",
        help="show whether the inbound MCP policy allows one call, and which rule decided",
        description=explain.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.configure_parser(explain_cmd)
    explain_cmd.set_defaults(handler=explain.run_from_args)

    demo = commands.add_parser(
        "demo",
        help="run the local mesh demo (dev Workload API, MCP server, sidecars, MCP client)",
        description=demo_package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_package.configure_parser(demo)
    demo.set_defaults(handler=_demo)

    inject_cmd = commands.add_parser(
        "inject",
        help="add the sidecar to the pods of a Kubernetes manifest (like istioctl kube-inject)",
        description="Read a Kubernetes manifest and write it with the mcp-sidecar container, "
        "its SPIFFE CSI volume, config volume, probes and resources added to every Pod, "
        "Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob (docs/kubernetes.md). "
        "Already injected, opted-out (mcp-sidecar.io/inject=false), hostNetwork and "
        "system-namespace pods are left unchanged (noted on stderr). Comments are not kept.",
    )
    inject.configure_parser(inject_cmd)
    inject_cmd.set_defaults(handler=inject.run_from_args)

    webhook_cmd = commands.add_parser(
        "webhook",
        help="run the mutating admission webhook that injects the sidecar (HTTPS)",
        description=webhook_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    webhook_cli.configure_parser(webhook_cmd)
    webhook_cmd.set_defaults(handler=webhook_cli.run_from_args)

    api_key_cmd = commands.add_parser(
        "api-key",
        help="create an API key for inbound.api_keys (prints the key once and its hash entry)",
        description=apikey_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apikey_cli.configure_parser(api_key_cmd)
    api_key_cmd.set_defaults(handler=apikey_cli.run_from_args)
    return parser


def _load_or_report(path: str) -> Config | None:
    """The parsed config, or None after printing every problem as ``path: message``."""
    from sidecar.config import load_config
    from sidecar.errors import ConfigErrors

    try:
        return load_config(path)
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.file)
    if config is None:
        return 1
    print(f"{args.file}: OK")
    for line in config.summary():
        print(f"  {line}")
    return 0


def _dev_workload_api(args: argparse.Namespace) -> int:
    from sidecar.dev import devserver

    parser = argparse.ArgumentParser(
        prog="mcp-sidecar dev-workload-api",
        description=devserver.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    devserver.configure_parser(parser)
    return devserver.run_from_args(parser.parse_args(args.unknown_args))


DEMO_EXTRA_MISSING = (
    "mcp-sidecar demo: the demo needs the official MCP SDK, which is not installed: "
    "pip install 'mcp-sidecar[demo]'"
)


def _demo(args: argparse.Namespace) -> int:
    # Imported only here: the demo pulls in the MCP SDK (hundreds of ms, tens of MiB), which a
    # production sidecar (``run``) neither carries nor installs (the ``demo`` extra).
    try:
        if getattr(args, "scenario", "mesh") == "delegation":
            from sidecar.demo.delegation import run_from_args
        else:
            from sidecar.demo.mesh import run_from_args
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] not in DEMO_PACKAGES:
            raise
        print(DEMO_EXTRA_MISSING, file=sys.stderr)
        return 1
    return run_from_args(args)


def _run(args: argparse.Namespace) -> int:
    from sidecar.runtime import run

    config = _load_or_report(args.config)
    if config is None:
        return 1
    if args.log_level is not None:
        log = dataclasses.replace(config.log, level=args.log_level)
        config = dataclasses.replace(config, log=log)
    return run(config)  # start-up errors are one line (runtime.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_unknown_args", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.unknown_args = unknown
    handler = args.handler
    result = handler(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
