"""Command-line glue of ``mcp-sidecar webhook`` (arguments, serve until SIGTERM), kept apart
from ``sidecar.webhook`` so that building the CLI parser does not import aiohttp's server into
every ``mcp-sidecar run`` process (memory)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from typing import Final

from sidecar.inject import (
    DEFAULT_CONFIG_MAP,
    DEFAULT_IMAGE,
    DEFAULT_RELOAD_INTERVAL,
    InjectOptions,
)

DEFAULT_LISTEN: Final = "0.0.0.0:9443"
DESCRIPTION: Final = """The mutating admission webhook that injects the sidecar into pods: an HTTPS
server answering POST /inject with AdmissionReview admission.k8s.io/v1, plus GET /healthz,
GET /readyz and GET /metrics (Prometheus). The certificate and key files are re-read when they
change. One JSON line per admission decision goes to stdout."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help="HTTPS address (default: %(default)s)"
    )
    parser.add_argument("--tls-cert", required=True, metavar="FILE", help="certificate (PEM)")
    parser.add_argument("--tls-key", required=True, metavar="FILE", help="private key (PEM)")
    parser.add_argument(
        "--image", default=DEFAULT_IMAGE, help="sidecar image to inject (default: %(default)s)"
    )
    parser.add_argument(
        "--config-map",
        default=DEFAULT_CONFIG_MAP,
        metavar="NAME",
        help="ConfigMap for pods without a mcp-sidecar.io/config-map annotation "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--reload-interval",
        type=float,
        default=DEFAULT_RELOAD_INTERVAL,
        metavar="SECONDS",
        help="how often to check the TLS files for a new certificate; 0 = never "
        "(default: %(default)s)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    from sidecar import webhook

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        host, port = webhook.parse_listen(args.listen)
    except ValueError as exc:
        print(f"--listen: {exc}", file=sys.stderr)
        return 1
    options = InjectOptions(image=args.image, config_map=args.config_map)
    log = logging.getLogger("sidecar.webhook")

    async def serve() -> int:
        try:
            running = await webhook.start_webhook(
                options,
                cert_file=args.tls_cert,
                key_file=args.tls_key,
                host=host,
                port=port,
                reload_interval=args.reload_interval,
            )
        except (OSError, ssl.SSLError) as exc:
            print(f"cannot start the webhook: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "mcp-sidecar webhook listening on https://%s:%d%s",
            host,
            running.port,
            webhook.INJECT_PATH,
        )
        try:
            await stop.wait()
        finally:
            await running.close()
        return 0

    return asyncio.run(serve())
