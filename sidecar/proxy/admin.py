"""The admin listener: ``/healthz`` (alive), ``/readyz`` (has a usable SVID), ``/metrics``.

Every answer, errors included, is JSON except the Prometheus exposition. It is meant for a
loopback or pod-local address (``admin.listen``); it has no authentication of its own.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from sidecar.metrics import IdentitySource, Metrics

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], tuple[bool, str]]
Clock = Callable[[], dt.datetime]

METRICS_KEY = web.AppKey("metrics", Metrics)
READY_KEY: web.AppKey[ReadyCheck] = web.AppKey("ready")


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


def _error(status: int, error: str, message: str, **headers: str) -> web.Response:
    return web.json_response(
        {"error": error, "message": message, "status": status}, status=status, headers=headers
    )


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        return _error(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path}",
            Allow=", ".join(sorted(exc.allowed_methods)),
        )
    except web.HTTPNotFound:
        return _error(404, "not_found", f"no admin endpoint at {request.path}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    try:
        ok, reason = request.app[READY_KEY]()
    except Exception:  # a broken check means "not ready", never a 500
        log.exception("readiness check failed")
        ok, reason = False, "readiness_check_failed"
    if ok:
        return web.json_response({"status": "ready"})
    return web.json_response({"status": "not_ready", "reason": reason}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS_KEY].render(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def build_admin_app(metrics: Metrics, ready: ReadyCheck) -> web.Application:
    """The admin application. ``ready`` answers ``(ready, reason)``; see ``readiness``.

    It does not bind ``metrics``' ready gauge to ``ready``: call
    ``metrics.set_ready_function(lambda: ready()[0])`` for the two to agree.
    """
    app = web.Application(middlewares=[_json_errors])
    app[METRICS_KEY] = metrics
    app[READY_KEY] = ready
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


async def start_admin(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (``0``: any free port); returns the runner (call
    ``await runner.cleanup()`` to stop) and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(bound)
