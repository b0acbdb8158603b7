"""``mcp-sidecar webhook``: the mutating admission webhook that injects the sidecar into pods.

An aiohttp HTTPS server answering ``POST /inject`` with AdmissionReview ``admission.k8s.io/v1``
(the only version its ``MutatingWebhookConfiguration`` registers), plus ``GET /healthz`` and
``GET /readyz`` for the kubelet. The injection itself is :func:`sidecar.inject.plan_injection`,
the same function ``mcp-sidecar inject`` uses; its JSON Patch goes back base64-encoded with the
request's ``uid``.

Answers, and why (the webhook is registered with ``failurePolicy: Fail``: a pod that asked for a
sidecar must never run without one, since that would be a silent allow):

* pod injected -> ``allowed: true`` + ``patchType: JSONPatch`` + ``patch``;
* pod skipped (opted out, already injected, ``hostNetwork``, system namespace), or a request this
  webhook is not for (not a pod ``CREATE``) -> ``allowed: true`` without a patch; skips of pods
  that asked for injection carry an admission ``warnings`` entry (kubectl prints it);
* pod that asked for injection but cannot be injected safely (volume name taken, invalid label
  or ConfigMap annotation) -> ``allowed: false``, ``status.code: 422`` with the reason;
* malformed review (not JSON, not an object, wrong ``apiVersion``/``kind``, no ``request.uid``,
  no object) -> HTTP 400 with an AdmissionReview whose response is ``allowed: false``
  (``status.code: 400``): the API server treats a non-200 answer as a failed call and applies
  the failure policy, which denies -- the body says why for a human with curl.

TLS: the certificate and key are files (``--tls-cert``/``--tls-key``), e.g. a
``kubernetes.io/tls`` Secret mounted into the pod (created by ``deploy/kind/up.sh`` or by
cert-manager). They are re-read when they change (checked every ``--reload-interval`` seconds):
new handshakes get the new certificate through the server context's SNI callback, open
connections keep theirs.

One JSON line per admission decision goes to stdout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO

from aiohttp import web

from sidecar.inject import (
    DEFAULT_RELOAD_INTERVAL,
    InjectionError,
    InjectOptions,
    Skip,
    plan_injection,
)
from sidecar.metrics import WebhookMetrics

log = logging.getLogger(__name__)

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"
INJECT_PATH: Final = "/inject"
MAX_BODY: Final = 4 * 1024 * 1024
"""Kubernetes objects are at most ~1.5 MiB in etcd; an AdmissionReview holds the object twice at
most (object, oldObject)."""

# ---------------------------------------------------------------------------- AdmissionReview


@dataclass(frozen=True, slots=True)
class Decision:
    """What the webhook answered (for the log line): ``injected``, ``skipped``, ``ignored``,
    ``denied`` or ``invalid``."""

    outcome: str
    reason: str
    uid: str = ""
    namespace: str = ""
    name: str = ""


class _Invalid(Exception):
    """A malformed AdmissionReview (HTTP 400)."""


def _review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def _status(code: int, message: str, reason: str) -> dict[str, Any]:
    return {"code": code, "message": message, "reason": reason}


def invalid_review(uid: str, message: str) -> dict[str, Any]:
    """The body of an HTTP 400 answer: a v1 AdmissionReview that denies, naming the problem."""
    return _review(
        {"uid": uid, "allowed": False, "status": _status(400, message, "BadRequest")},
    )


def _uid_of(payload: object) -> str:
    """The request uid if there is a usable one (to echo it even in an error answer)."""
    if isinstance(payload, Mapping):
        request = payload.get("request")
        if isinstance(request, Mapping):
            uid = request.get("uid")
            if isinstance(uid, str):
                return uid
    return ""


def _pod_name(pod: Mapping[str, Any], request: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata")
    if isinstance(metadata, Mapping):
        name = metadata.get("name") or metadata.get("generateName")
        if isinstance(name, str) and name:
            return name
    name = request.get("name")
    return name if isinstance(name, str) else ""


def review_response(
    payload: object, options: InjectOptions
) -> tuple[int, dict[str, Any], Decision]:
    """Answer one decoded AdmissionReview: (HTTP status, response body, decision for the log).

    Pure (no I/O): the aiohttp handler only decodes JSON and writes the answer.
    """
    uid = _uid_of(payload)
    try:
        request = _validated_request(payload)
    except _Invalid as exc:
        return 400, invalid_review(uid, str(exc)), Decision("invalid", str(exc), uid)

    namespace = request.get("namespace")
    namespace = namespace if isinstance(namespace, str) else ""
    kind = request.get("kind")
    resource = request.get("resource")
    is_pod = (
        isinstance(kind, Mapping)
        and kind.get("group", "") == ""
        and kind.get("kind") == "Pod"
        and isinstance(resource, Mapping)
        and resource.get("resource") == "pods"
        and not request.get("subResource")
    )
    if request.get("operation") != "CREATE" or not is_pod:
        what = f"{request.get('operation')} {json.dumps(kind, sort_keys=True)}"
        return (
            200,
            _review({"uid": uid, "allowed": True}),
            Decision("ignored", f"not a pod CREATE: {what}", uid, namespace),
        )
    pod = request.get("object")
    if not isinstance(pod, Mapping):
        message = "request.object must be the pod (a JSON object)"
        return 400, invalid_review(uid, message), Decision("invalid", message, uid, namespace)
    name = _pod_name(pod, request)
    try:
        plan = plan_injection(pod, namespace or None, options)
    except InjectionError as exc:
        message = f"mcp-sidecar injection refused: {exc}"
        body = _review(
            {"uid": uid, "allowed": False, "status": _status(422, message, "Invalid")},
        )
        return 200, body, Decision("denied", str(exc), uid, namespace, name)
    if isinstance(plan, Skip):
        response: dict[str, Any] = {"uid": uid, "allowed": True}
        if plan.warn:
            response["warnings"] = [f"mcp-sidecar: not injected: {plan.reason}"]
        return 200, _review(response), Decision("skipped", plan.reason, uid, namespace, name)
    patch = base64.b64encode(json.dumps(plan, separators=(",", ":")).encode()).decode("ascii")
    body = _review({"uid": uid, "allowed": True, "patchType": "JSONPatch", "patch": patch})
    return 200, body, Decision("injected", f"{len(plan)} patch operations", uid, namespace, name)


def _validated_request(payload: object) -> Mapping[str, Any]:
    if not isinstance(payload, Mapping):
        raise _Invalid("the body must be a JSON object (an AdmissionReview)")
    api_version = payload.get("apiVersion")
    if api_version != ADMISSION_API_VERSION:
        raise _Invalid(
            f"unsupported apiVersion {json.dumps(api_version)}: this webhook speaks "
            f"{ADMISSION_API_VERSION} only (admissionReviewVersions: [v1])"
        )
    if payload.get("kind") != "AdmissionReview":
        raise _Invalid(f"kind must be AdmissionReview, got {json.dumps(payload.get('kind'))}")
    request = payload.get("request")
    if not isinstance(request, Mapping):
        raise _Invalid("request is missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise _Invalid("request.uid is missing or not a non-empty string")
    return request


# ---------------------------------------------------------------------------------------- TLS


class CertificateReloader:
    """Server TLS context from certificate/key files, rebuilt when the files change.

    ``context`` is what the listener uses; its SNI callback (run on every handshake, with or
    without SNI) hands each new connection the newest context. A failed reload (half-written
    files, key and certificate not matching) keeps the previous certificate and is logged.
    """

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._stamp = self._file_stamp()
        self.current = self._build()
        self.context = self._build()
        self.context.sni_callback = self._select
        self.reloads = 0

    def _file_stamp(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in (self.cert_file, self.key_file):
            st = os.stat(path)  # follows the symlinks a mounted Secret is made of
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _build(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def _select(self, sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        if sslobj.context is not self.current:
            sslobj.context = self.current

    def check(self) -> bool:
        """Reload if the files changed; True if a new certificate is now in use."""
        try:
            stamp = self._file_stamp()
        except OSError as exc:
            log.warning("cannot stat TLS files, keeping the current certificate: %s", exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            context = self._build()
        except (OSError, ssl.SSLError) as exc:
            log.warning("cannot load the new TLS certificate, keeping the current one: %s", exc)
            return False
        self._stamp = stamp
        self.current = context
        self.reloads += 1
        log.info("reloaded the TLS certificate from %s", self.cert_file)
        return True


# ------------------------------------------------------------------------------------- server


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _log_decision(stream: TextIO | None, decision: Decision) -> None:
    line = json.dumps(
        {
            "time": _now(),
            "event": "admission",
            "outcome": decision.outcome,
            "reason": decision.reason,
            "uid": decision.uid,
            "namespace": decision.namespace,
            "pod": decision.name,
        }
    )
    with contextlib.suppress(Exception):
        print(line, file=stream or sys.stdout, flush=True)


@dataclass(frozen=True, slots=True)
class _State:
    options: InjectOptions
    log_stream: TextIO | None
    metrics: WebhookMetrics


def _decided(state: _State, decision: Decision, started: float) -> None:
    """One admission answered: its log line and its metrics."""
    _log_decision(state.log_stream, decision)
    state.metrics.admission(decision.outcome, time.perf_counter() - started)


STATE_KEY: Final = web.AppKey("mcp_sidecar_webhook", _State)


def _json(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


async def _inject(request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request.app[STATE_KEY]
    content_type = request.content_type
    if content_type != "application/json":
        message = f"Content-Type must be application/json, got {content_type!r}"
        _decided(state, Decision("invalid", message), started)
        return _json(415, invalid_review("", message))
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        message = f"body larger than {MAX_BODY} bytes"
        _decided(state, Decision("invalid", message), started)
        return _json(413, invalid_review("", message))
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        message = f"body is not JSON: {exc}"
        _decided(state, Decision("invalid", message), started)
        return _json(400, invalid_review("", message))
    status, body, decision = review_response(payload, state.options)
    _decided(state, decision, started)
    return _json(status, body)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[STATE_KEY].metrics.render(request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


def build_app(
    options: InjectOptions,
    log_stream: TextIO | None = None,
    metrics: WebhookMetrics | None = None,
) -> web.Application:
    """The webhook's routes: ``POST /inject``, ``GET /healthz``, ``GET /readyz``,
    ``GET /metrics`` (Prometheus)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = _State(options, log_stream, metrics or WebhookMetrics())
    app.router.add_post(INJECT_PATH, _inject)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _healthz)
    app.router.add_get("/metrics", _metrics)
    return app


@dataclass
class RunningWebhook:
    """A started webhook server (tests and ``run_from_args``)."""

    runner: web.AppRunner
    port: int
    tls: CertificateReloader
    reload_task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.reload_task is not None:
            self.reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reload_task
        await self.runner.cleanup()


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ValueError(f"not a host:port address: {text!r}")
    return host.strip("[]"), int(port)


async def start_webhook(
    options: InjectOptions,
    *,
    cert_file: str,
    key_file: str,
    host: str = "127.0.0.1",
    port: int = 0,
    reload_interval: float = DEFAULT_RELOAD_INTERVAL,
    log_stream: TextIO | None = None,
) -> RunningWebhook:
    """Start the HTTPS webhook in the running loop; ``port=0`` picks a free port."""
    tls = CertificateReloader(cert_file, key_file)
    metrics = WebhookMetrics()
    metrics.bind_certificate(tls)
    runner = web.AppRunner(
        build_app(options, log_stream, metrics), access_log=None, shutdown_timeout=5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.context)
    await site.start()
    bound = int(runner.addresses[0][1]) if runner.addresses else port
    running = RunningWebhook(runner, bound, tls)
    if reload_interval > 0:

        async def reload_loop() -> None:
            while True:
                await asyncio.sleep(reload_interval)
                tls.check()

        running.reload_task = asyncio.create_task(reload_loop(), name="webhook-tls-reload")
    return running


__all__ = [
    "ADMISSION_API_VERSION",
    "INJECT_PATH",
    "CertificateReloader",
    "Decision",
    "RunningWebhook",
    "build_app",
    "invalid_review",
    "review_response",
    "start_webhook",
]
