"""The admin listener: ``/healthz`` (alive), ``/readyz`` (has a usable SVID), ``/metrics``.

Every answer, errors included, is JSON except the Prometheus exposition. It is meant for a
loopback or pod-local address (``admin.listen``); it has no authentication of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from multidict import CIMultiDict

from sidecar.config import Limits
from sidecar.metrics import IdentitySource, Metrics
from sidecar.proxy.connection import Listener, start_listener
from sidecar.proxy.messages import Request, Response, json_error, json_response

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]
Clock = Callable[[], dt.datetime]
AdminHandler = Callable[[Request], Awaitable[Response]]

ADMIN_LIMITS = Limits(
    header_timeout=10.0, keepalive_timeout=60.0, max_header_size=16 * 1024, max_request_body=0
)
_ALLOWED = "GET, HEAD"


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


def build_admin_handler(metrics: Metrics, ready: ReadyCheck) -> AdminHandler:
    """The admin endpoints. ``ready`` answers ``(ready, reason)``; see ``readiness``.

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

    endpoints: dict[str, Callable[[Request], Response]] = {
        "/healthz": lambda request: json_response({"status": "ok"}),
        "/readyz": lambda request: readyz(),
        "/metrics": exposition,
    }

    async def handle(request: Request) -> Response:
        endpoint = endpoints.get(request.path)
        if endpoint is None:
            return json_error(404, "not_found", f"no admin endpoint at {request.path}")
        if request.method not in ("GET", "HEAD"):
            response = json_error(
                405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
            )
            response.headers["Allow"] = _ALLOWED
            return response
        return endpoint(request)

    return handle


async def start_admin(handler: AdminHandler, host: str, port: int) -> tuple[Listener, int]:
    """Serve the admin endpoints on ``host:port`` (``0``: any free port), plain HTTP, on the
    data path's engine; returns the listener (``await listener.close(0)`` to stop) and the
    bound port."""
    listener = await start_listener("admin", handler, host, port, tls=None, limits=ADMIN_LIMITS)
    return listener, listener.port
