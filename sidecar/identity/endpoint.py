"""Workload API endpoint addresses (SPIFFE Workload Endpoint spec, section 4).

``SPIFFE_ENDPOINT_SOCKET`` is ``unix:///absolute/path`` or ``tcp://IP:PORT``; anything else is a
configuration error rather than something to guess at.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from urllib.parse import urlsplit

from sidecar.errors import ConfigError, StartupError

ENDPOINT_ENV = "SPIFFE_ENDPOINT_SOCKET"


def resolve_endpoint(configured: str | None, *, field: str = "workload_api") -> str:
    """Return the gRPC target for the Workload API from config, else ``$SPIFFE_ENDPOINT_SOCKET``."""
    if configured:
        return grpc_target(configured, field=field)
    from_env = os.environ.get(ENDPOINT_ENV, "")
    if not from_env:
        raise ConfigError(field, f"not configured and ${ENDPOINT_ENV} is not set")
    return grpc_target(from_env, field=f"${ENDPOINT_ENV}")


def grpc_target(address: str, *, field: str = "workload_api") -> str:
    """Translate a SPIFFE endpoint URL into a gRPC channel target."""
    try:
        url = urlsplit(address)
        port = url.port
    except ValueError as exc:
        raise ConfigError(field, f"{address!r} is not a valid endpoint URL: {exc}") from exc
    if url.query or url.fragment or url.username or url.password:
        raise ConfigError(field, f"{address!r}: query, fragment and userinfo are not allowed")
    if url.scheme == "unix":
        if url.netloc or not url.path.startswith("/"):
            raise ConfigError(field, f"{address!r}: expected unix:///absolute/path")
        return f"unix://{url.path}"
    if url.scheme == "tcp":
        if url.path not in ("", "/") or port is None or not url.hostname:
            raise ConfigError(field, f"{address!r}: expected tcp://IP:PORT")
        try:
            ip = ipaddress.ip_address(url.hostname)
        except ValueError as exc:
            raise ConfigError(field, f"{address!r}: tcp host must be an IP address") from exc
        host = f"[{ip}]" if ip.version == 6 else str(ip)
        return f"{host}:{port}"
    raise ConfigError(field, f"{address!r}: scheme must be unix:// or tcp://")


def check_socket_path(target: str, *, field: str = "workload_api") -> None:
    """Refuse a unix socket path that can never work: its directory is missing, or something
    other than a socket sits there. A missing socket in an existing directory is fine — the
    SPIRE agent may start after us, and the source waits for it."""
    if not target.startswith("unix://"):
        return
    path = target[len("unix://") :]
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise StartupError(field, f"the Workload API socket's directory {directory} does not exist")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(
            field, f"cannot reach the Workload API socket {path}: {exc.strerror}"
        ) from exc
    if not stat.S_ISSOCK(mode):
        raise StartupError(field, f"{path} is not a unix socket")
