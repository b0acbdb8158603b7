"""Outbound route selection: Host first, then the longest whole-segment path prefix."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sidecar.proxy.routing import select_route


@dataclass(frozen=True)
class Route:
    name: str
    path_prefix: str = "/"
    host: str | None = None
    strip_prefix: bool = True


ROUTES = [
    Route("math", "/math"),
    Route("math-local", "/", host="math.local"),
    Route("math-port", "/", host="math.local:8080"),
    Route("v6", "/", host="[::1]"),
    Route("mathematics", "/math/ematics", strip_prefix=False),
]


@pytest.mark.parametrize(
    ("host", "target", "route", "upstream_path"),
    [
        ("x", "/math", "math", "/"),
        ("x", "/math/", "math", "/"),
        ("x", "/math/mcp?a=/../b", "math", "/mcp?a=/../b"),  # the query is data
        ("x", "/mathematics", None, None),  # whole segments only
        ("x", "/math/ematics/x", "mathematics", "/math/ematics/x"),
        ("math.local", "/mcp", "math-local", "/mcp"),
        ("MATH.Local", "/mcp", "math-local", "/mcp"),  # host names are case-insensitive
        ("math.local:15001", "/mcp", "math-local", "/mcp"),
        ("Math.Local:8080", "/mcp", "math-port", "/mcp"),
        ("[::1]:443", "/mcp", "v6", "/mcp"),
        ("other.local", "/mcp", None, None),
        (None, "/math/mcp", "math", "/mcp"),
    ],
)
def test_select_route(
    host: str | None, target: str, route: str | None, upstream_path: str | None
) -> None:
    match = select_route(ROUTES, host, target)
    if route is None:
        assert match is None
        return
    assert match is not None
    assert (match.route.name, match.upstream_path) == (route, upstream_path)
