"""The admin listener: ``/healthz`` (alive), ``/readyz`` (has a usable SVID), ``/metrics``, and
the operator's views and controls, Envoy-style: ``/certs`` (our SVID and the bundles we trust),
``/config_dump`` (the effective configuration, secrets redacted) and ``POST /logging?level=``
(change the log level of the running process).

Every answer, errors included, is JSON except the Prometheus exposition. It is meant for a
loopback address (``admin.listen`` defaults to 127.0.0.1:15000): it has no authentication of
its own, so whoever can reach it can read the configuration and change the log level. A change
is only accepted by ``POST`` without an ``Origin`` header, so a web page a browser on the same
machine shows cannot make one (a browser sends ``Origin`` with every cross-site ``POST``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from multidict import CIMultiDict

from sidecar.config import LOG_LEVELS, Config, Limits
from sidecar.metrics import IdentitySource, Metrics
from sidecar.proxy.admin_views import certs_view, config_view
from sidecar.proxy.connection import Listener, start_listener
from sidecar.proxy.messages import Request, Response, json_error, json_response
from sidecar.tls.contexts import NotReady, RotatingTls

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]
Clock = Callable[[], dt.datetime]
AdminHandler = Callable[[Request], Awaitable[Response]]

ADMIN_LIMITS = Limits(
    header_timeout=10.0, keepalive_timeout=60.0, max_header_size=16 * 1024, max_request_body=0
)
READ: frozenset[str] = frozenset({"GET", "HEAD"})
CHANGE: frozenset[str] = frozenset({"POST"})


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def readiness(source: IdentitySource, *, clock: Clock = _utc_now) -> ReadyCheck:
    """Turn a ``WorkloadApiSource`` into a ``/readyz`` check: ``(False, "no_svid")`` before the
    first SVID, ``(False, "svid_expired")`` once it expired (e.g. a long Workload API outage),
    ``(True, "")`` otherwise."""

    def check() -> tuple[bool, str]:
        snapshot = source.snapshot
        if snapshot is None:
            return False, "no_svid"
        if not snapshot.is_valid_at(clock()):
            return False, "svid_expired"
        return True, ""

    return check


@dataclass(frozen=True)
class OperatorViews:
    """Where ``/certs`` and ``/config_dump`` read from (callables: always the current state)."""

    certs: Callable[[], dict[str, Any]]
    config: Callable[[], Any]


def operator_views(
    tls: RotatingTls,
    jwt_bundles: Callable[[], Mapping[str, Mapping[str, Any]]],
    config: Config,
    *,
    clock: Clock = _utc_now,
) -> OperatorViews:
    """The views of one sidecar: its rotating TLS state, JWT bundles and configuration."""

    def certs() -> dict[str, Any]:
        try:
            snapshot = tls.snapshot
        except NotReady:
            snapshot = None
        return certs_view(snapshot, jwt_bundles(), clock())

    return OperatorViews(certs=certs, config=lambda: config_view(config))


def set_log_level(request: Request) -> Response:
    """``POST /logging?level=debug``: the level of the root logger, i.e. of every log line of
    the process (the access log is separate and unaffected)."""
    if "origin" in request.headers:
        return json_error(
            403, "browser_request_refused", "admin changes are not accepted from a browser"
        )
    query = parse_qsl(request.raw_path.partition("?")[2], keep_blank_values=True)
    levels = [value.lower() for key, value in query if key == "level"]
    unknown = sorted({key for key, _ in query if key != "level"})
    if unknown or len(levels) != 1 or levels[0] not in LOG_LEVELS:
        return json_error(
            400,
            "bad_log_level",
            f"expected exactly one ?level= out of {', '.join(LOG_LEVELS)}"
            + (f"; unknown parameters: {', '.join(unknown)}" if unknown else ""),
        )
    root = logging.getLogger()
    previous = logging.getLevelName(root.level).lower()
    root.setLevel(levels[0].upper())
    log.warning("log level changed from %s to %s (admin /logging)", previous, levels[0])
    return json_response({"level": levels[0], "previous": previous})


def build_admin_handler(
    metrics: Metrics, ready: ReadyCheck, views: OperatorViews | None = None
) -> AdminHandler:
    """The admin endpoints. ``ready`` answers ``(ready, reason)``; see ``readiness``. Without
    ``views`` there is no ``/certs`` and no ``/config_dump``.

    It does not bind ``metrics``' ready gauge to ``ready``: call
    ``metrics.set_ready_function(lambda: ready()[0])`` for the two to agree.
    """

    def readyz() -> Response:
        try:
            ok, reason = ready()
        except Exception:  # a broken check means "not ready", never a 500
            log.exception("readiness check failed")
            ok, reason = False, "readiness_check_failed"
        if ok:
            return json_response({"status": "ready"})
        return json_response({"status": "not_ready", "reason": reason}, status=503)

    def exposition(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("Accept"))
        return Response(200, CIMultiDict({"Content-Type": content_type}), body)

    endpoints: dict[str, tuple[frozenset[str], Callable[[Request], Response]]] = {
        "/healthz": (READ, lambda request: json_response({"status": "ok"})),
        "/readyz": (READ, lambda request: readyz()),
        "/metrics": (READ, exposition),
        "/logging": (CHANGE, set_log_level),
    }
    if views is not None:
        endpoints["/certs"] = (READ, lambda request: json_response(views.certs()))
        endpoints["/config_dump"] = (READ, lambda request: json_response(views.config()))

    async def handle(request: Request) -> Response:
        endpoint = endpoints.get(request.path)
        if endpoint is None:
            return json_error(404, "not_found", f"no admin endpoint at {request.path}")
        methods, answer = endpoint
        if request.method not in methods:
            response = json_error(
                405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
            )
            response.headers["Allow"] = ", ".join(sorted(methods))
            return response
        return answer(request)

    return handle


async def start_admin(handler: AdminHandler, host: str, port: int) -> tuple[Listener, int]:
    """Serve the admin endpoints on ``host:port`` (``0``: any free port), plain HTTP, on the
    data path's engine; returns the listener (``await listener.close(0)`` to stop) and the
    bound port."""
    listener = await start_listener("admin", handler, host, port, tls=None, limits=ADMIN_LIMITS)
    return listener, listener.port
