"""Outbound route selection (pure): Host match first, then the longest path prefix.

Prefixes match whole path segments only: ``/math`` matches ``/math``, ``/math/`` and
``/math/mcp`` but never ``/mathematics``.
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


def select_route(routes: Sequence[R], host: str | None, raw_path: str) -> RouteMatch[R] | None:
    """The route for a request, or None. ``raw_path`` is the undecoded path with its query."""
    path, sep, query = raw_path.partition("?")
    host_name = _host_without_port(host)
    best: R | None = None
    best_key: tuple[int, int] = (-1, -1)
    for route in routes:
        if route.host is not None and route.host != host_name and route.host != (host or ""):
            continue
        if not prefix_matches(route.path_prefix, path):
            continue
        key = (1 if route.host is not None else 0, len(route.path_prefix.rstrip("/")))
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


def _host_without_port(host: str | None) -> str | None:
    if host is None:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
