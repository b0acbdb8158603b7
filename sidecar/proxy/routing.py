"""Outbound route selection (pure): Host match first (``host:port`` before ``host`` before
none), then the longest path prefix.

Prefixes match whole path segments only: ``/math`` matches ``/math``, ``/math/`` and
``/math/mcp`` but never ``/mathematics``. Routes are chosen by the Host the parser validated
(for an absolute-form target: its authority) and by the normalised path (``http1.target``),
which is also the path forwarded, so the route matched is the resource the server resolves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class RouteLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def path_prefix(self) -> str: ...
    @property
    def host(self) -> str | None: ...
    @property
    def strip_prefix(self) -> bool: ...


R = TypeVar("R", bound=RouteLike)


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[R]):
    route: R
    upstream_path: str  # raw path (+ query) to request upstream


def prefix_matches(prefix: str, path: str) -> bool:
    """``path`` (without query) lies under ``prefix`` on a segment boundary."""
    if prefix in ("", "/"):
        return True
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def select_route(routes: Sequence[R], host: str | None, target: str) -> RouteMatch[R] | None:
    """The route for a request, or None. ``target`` is the normalised path with its query."""
    path, sep, query = target.partition("?")
    host = host.lower() if host is not None else ""
    host_name = _host_without_port(host)
    best: R | None = None
    best_key: tuple[int, int] = (-1, -1)
    for route in routes:
        if route.host is None:
            rank = 0
        elif route.host == host:  # host and port as configured: the most specific
            rank = 2
        elif route.host == host_name:
            rank = 1
        else:
            continue
        if not prefix_matches(route.path_prefix, path):
            continue
        key = (rank, len(route.path_prefix.rstrip("/")))
        if key > best_key:
            best, best_key = route, key
    if best is None:
        return None
    upstream_path = path
    if best.strip_prefix:
        upstream_path = path[len(best.path_prefix.rstrip("/")) :] or "/"
        if not upstream_path.startswith("/"):
            upstream_path = "/" + upstream_path
    return RouteMatch(best, upstream_path + sep + query)


def _host_without_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
