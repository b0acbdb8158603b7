"""One sidecar process: identity source -> rotating TLS -> listeners, plus admin, signals, drain.

Start order: the admin listener first (so ``/readyz`` can say 503 while we wait), then the
Workload API source; the data-path listeners open once the first SVID of the configured trust
domain has arrived. Shutdown (SIGTERM/SIGINT): stop accepting, drain in-flight requests up to
``shutdown.drain_timeout``, then close everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from sidecar.config import Config, InboundConfig, ListenAddress, LogConfig
from sidecar.errors import ConfigError, StartupError
from sidecar.heap import HeapTrimmer, trim
from sidecar.identity.endpoint import ENDPOINT_ENV, check_socket_path
from sidecar.identity.snapshot import X509Snapshot
from sidecar.identity.workload_api import WorkloadApiSource
from sidecar.mcp.policy import Policy, load_policy_file
from sidecar.mcp.ratelimit import RateLimiter
from sidecar.metrics import Metrics
from sidecar.process import apply_scheduler
from sidecar.proxy.accesslog import AccessLogger, JsonLogFormatter
from sidecar.proxy.admin import build_admin_handler, operator_views, readiness, start_admin
from sidecar.proxy.connection import Listener, TlsPolicy, start_listener
from sidecar.proxy.fetch import JsonFetcher
from sidecar.proxy.inbound import InboundProxy
from sidecar.proxy.mcp_guard import McpGuard
from sidecar.proxy.mux import MuxEndpoint, build_endpoint
from sidecar.proxy.outbound import OutboundProxy
from sidecar.proxy.policy_reload import PolicyHolder
from sidecar.proxy.svid_header import JwtSvidHeaders
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected, RotatingTls
from sidecar.tokens.apikeys import ApiKeys, load_api_key_file
from sidecar.tokens.gate import TokenGate
from sidecar.tracing.loader import TracingUnavailable, load_tracing

log = logging.getLogger(__name__)


def needs_identity(config: Config) -> bool:
    """Only an OAuth-only ingress (``mtls: off``, no JWT-SVIDs, no outbound, no targets) runs
    without SPIFFE."""
    inbound = config.inbound
    return config.outbound is not None or (
        inbound is not None
        and (inbound.mtls == "required" or inbound.jwt_svid is not None or inbound.mux is not None)
    )


def _announce_dry_run(policy: Policy, source: str) -> None:
    if policy.dry_run:
        log.warning(
            "MCP policy from %s is in dry run: its denials are logged and counted as "
            "would_deny, not enforced",
            source,
        )


def _load_policy_file(path: Path) -> Policy:
    """A reloaded policy file; one in dry run is announced (it enforces nothing)."""
    policy = load_policy_file(path)
    _announce_dry_run(policy, str(path))
    return policy


class Sidecar:
    """Everything one ``mcp-sidecar run`` owns; usable in-process by tests and the demo."""

    def __init__(
        self,
        config: Config,
        *,
        access_stream: TextIO | None = None,
        environ: Mapping[str, str] | None = None,
        fast_path: bool = True,
    ) -> None:
        """``fast_path=False``: every request of the proxy listeners is served in a task of its
        own (the engine's coroutine path alone: the oracle of the callback path's tests)."""
        self.config = config
        self.fast_path = fast_path
        self.metrics = Metrics()
        self.access_log = AccessLogger(access_stream, enabled=config.log.access_log)
        #: OpenTelemetry tracing (``tracing:`` / ``OTEL_*``, read from ``environ`` or the
        #: process environment), ``None`` when off
        self.tracing = load_tracing(config.tracing, self.metrics, environ)
        self.source = WorkloadApiSource(config.workload_api) if needs_identity(config) else None
        self.tls = RotatingTls()
        self.listeners: dict[str, Listener] = {}
        self.inbound: InboundProxy | None = None
        self.outbound: OutboundProxy | None = None
        self.admin_port: int | None = None
        self.fetcher = JsonFetcher()
        self.policy: PolicyHolder[Policy] | None = None
        self.api_keys: PolicyHolder[ApiKeys] | None = None
        self._admin: Listener | None = None
        self._source_ready = readiness(self.source) if self.source else lambda: (True, "")
        self._wrong_trust_domain: str | None = None
        self._stopped = False
        self._trimmer: asyncio.Task[None] | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self.metrics.set_svid_expired_function(lambda: self.tls.expired)

    # -- identity --------------------------------------------------------------------------

    def _on_identity(self, snapshot: X509Snapshot) -> None:
        """Adopt a new SVID only if it belongs to the configured trust domain (fail closed)."""
        if snapshot.trust_domain != self.config.trust_domain:
            self._wrong_trust_domain = str(snapshot.svid.spiffe_id)
            log.error(
                "Workload API issued %s, outside the configured trust domain %r: not using it",
                snapshot.svid.spiffe_id,
                self.config.trust_domain,
            )
            return
        self._wrong_trust_domain = None
        if self.tls.expired:
            log.warning("a valid X.509-SVID arrived (%s): serving again", snapshot.svid.spiffe_id)
        self.tls.update(snapshot)
        self._watch_expiry(snapshot)

    def _watch_expiry(self, snapshot: X509Snapshot) -> None:
        """Say so, once, when our SVID expires without a renewal (RotatingTls refuses to use
        it from then on; this only makes the outage visible in the log)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, snapshot.svid.not_after.timestamp() - time.time())
        self._expiry_timer = loop.call_later(delay, self._report_expiry, snapshot)

    def _report_expiry(self, snapshot: X509Snapshot) -> None:
        self._expiry_timer = None
        log.error(
            "our X.509-SVID %s expired at %s and the Workload API (%s) has not renewed it: "
            "refusing every new TLS handshake and every request that needs our identity "
            "until a valid SVID arrives",
            snapshot.svid.spiffe_id,
            snapshot.svid.not_after.isoformat(),
            self.source.target if self.source is not None else "none",
        )

    def _jwt_bundles(self) -> Mapping[str, Mapping[str, Any]]:
        return self.source.jwt_bundles if self.source is not None else {}

    def our_id(self) -> SpiffeId:
        return self.tls.snapshot.svid.spiffe_id

    def ready(self) -> tuple[bool, str]:
        ok, reason = self._source_ready()
        if not ok:
            return ok, reason
        if self._wrong_trust_domain is not None:
            return False, "svid_outside_trust_domain"
        if not self.listeners and (self.config.inbound or self.config.outbound):
            return False, "listeners_not_started"
        return True, ""

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, svid_timeout: float | None = None) -> None:
        """Start admin and source, wait for an SVID (forever unless ``svid_timeout``), listen."""
        if self.source is not None:
            field = "workload_api" if self.config.workload_api else f"${ENDPOINT_ENV}"
            check_socket_path(self.source.target, field=field)
        admin = self.config.admin
        with _bind_errors("admin", admin.listen):
            self._admin, self.admin_port = await start_admin(
                build_admin_handler(
                    self.metrics,
                    self.ready,
                    operator_views(self.tls, self._jwt_bundles, self.config),
                ),
                admin.listen.host,
                admin.listen.port,
            )
        self.metrics.set_ready_function(lambda: self.ready()[0])
        admin_server = self._admin.server
        self.metrics.bind_listener("admin", lambda: len(admin_server.connections))
        if self.source is not None:
            self.metrics.bind_source(self.source)
            self.source.subscribe(self._on_identity)
            await self.source.start()
            await self._wait_for_identity(svid_timeout, self.source)
        await self._start_listeners()
        trimmer = HeapTrimmer(lambda: sum(lst.server.ended for lst in self.listeners.values()))
        self._trimmer = asyncio.create_task(trimmer.run(), name="heap-trimmer")

    async def _wait_for_identity(self, timeout: float | None, source: WorkloadApiSource) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                self.tls.current  # noqa: B018 - raises NotReady until an SVID was adopted
                if source.ready:
                    return
            except Exception:  # noqa: S110 - NotReady: keep waiting
                pass
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"no usable X.509-SVID from {source.target}")
            await asyncio.sleep(0.05)

    async def _start_listeners(self) -> None:
        cfg = self.config
        if cfg.inbound is not None:
            inbound = cfg.inbound
            gate = TokenGate(
                inbound, self._jwt_bundles, self.fetcher, api_keys=self._api_keys(inbound)
            )
            self.inbound = InboundProxy(
                inbound,
                self.our_id,
                self.metrics,
                self.access_log,
                gate,
                self._guard(inbound),
                mux=self._gateway(inbound),
            )
            self.inbound.tracing = self.tracing
            if self.inbound.pool is not None:
                self.metrics.bind_pool("inbound", "local", self.inbound.pool)
            if self.inbound.mux is not None:  # an edge gateway: one pool per target
                for target, link in self.inbound.mux.links.items():
                    self.metrics.bind_pool("inbound", target, link.pool)
            allowlist = inbound.allow_spiffe_ids
            policy = None
            if inbound.mtls == "required":
                policy = TlsPolicy(
                    context=lambda: self.tls.current.server,
                    verify=lambda ssl_object: self.tls.verify_peer(ssl_object, allowlist),
                    handshake_timeout=inbound.limits.header_timeout,
                    on_failure=lambda reason: self.metrics.tls_failure("inbound", reason),
                    on_rejected=self._rejected("inbound"),
                )
            self.listeners["inbound"] = await self._listen("inbound", self.inbound, inbound, policy)
        if cfg.outbound is not None:
            outbound = cfg.outbound
            self.outbound = OutboundProxy(
                outbound,
                self.tls,
                self.metrics,
                self.access_log,
                jwt_svid=self.source.fetch_jwt_svid if self.source else None,
                on_identity_rejected=self._rejected("outbound"),
            )
            self.outbound.tracing = self.tracing
            for route, pool in self.outbound.pools.items():
                self.metrics.bind_pool("outbound", route, pool)
            for route, mux in self.outbound.muxes.items():
                for target, link in mux.links.items():
                    self.metrics.bind_pool("outbound", f"{route}/{target}", link.pool)
            self.listeners["outbound"] = await self._listen(
                "outbound", self.outbound, outbound, None
            )

    def _api_keys(self, inbound: InboundConfig) -> Callable[[], ApiKeys] | None:
        """The API key file, reloaded when it changes; a file that disappeared admits no key."""
        if inbound.api_keys is None:
            return None
        cfg = inbound.api_keys
        holder = PolicyHolder(
            cfg.keys,
            path=Path(cfg.file),
            loader=load_api_key_file,
            interval=cfg.reload_interval,
            what="API key",
            on_missing=ApiKeys,
        )
        holder.start()
        self.api_keys = holder
        return lambda: holder.current

    def _gateway(self, inbound: InboundConfig) -> MuxEndpoint | None:
        """Edge-gateway mode: the targets, reached over mTLS with our own SVID."""
        if inbound.mux is None:
            return None
        return build_endpoint(
            "inbound",
            inbound.mux,
            inbound.limits,
            self.tls,
            self.metrics,
            JwtSvidHeaders(self.source.fetch_jwt_svid if self.source else None),
            self._rejected("outbound"),
            peer_is_target=False,
            breakers=inbound.circuit_breakers,
        )

    def _guard(self, inbound: InboundConfig) -> McpGuard:
        """Policy (hot-reloaded when it comes from a file) and rate limits of the inbound side."""
        holder: PolicyHolder[Policy] | None = None
        if inbound.mcp_policy is not None:
            cfg = inbound.mcp_policy
            _announce_dry_run(cfg.policy, cfg.file or "inbound.mcp_policy")
            holder = PolicyHolder(
                cfg.policy,
                path=Path(cfg.file) if cfg.file else None,
                loader=_load_policy_file,
                interval=cfg.reload_interval,
                metrics=self.metrics,
            )
            holder.start()
            self.policy = holder
        limiter = RateLimiter(inbound.rate_limits) if inbound.rate_limits else None
        return McpGuard(holder, limiter, self.metrics, self.access_log)

    def _rejected(self, direction: str) -> Callable[[PeerRejected], None]:
        def record(exc: PeerRejected) -> None:
            log.warning("%s peer rejected: %s (%s)", direction, exc.reason, exc.message)
            self.metrics.spiffe_rejection(direction, exc.reason)

        return record

    async def _listen(self, name: str, handler: Any, cfg: Any, tls: TlsPolicy | None) -> Listener:
        with _bind_errors(name, cfg.listen):
            listener = await start_listener(
                name,
                handler,
                cfg.listen.host,
                cfg.listen.port,
                tls=tls,
                limits=cfg.limits,
                fast_path=self.fast_path,
            )
        connections = listener.server.connections
        self.metrics.bind_listener(name, lambda: len(connections))
        return listener

    def port(self, name: str) -> int:
        return self.listeners[name].port

    async def stop(self) -> None:
        """Drain listeners (bounded by ``drain_timeout``), then close clients, source, admin."""
        if self._stopped:
            return
        self._stopped = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._trimmer is not None:
            self._trimmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trimmer
        await asyncio.gather(
            *(listener.close(self.config.drain_timeout) for listener in self.listeners.values())
        )
        for holder in (self.policy, self.api_keys):
            if holder is not None:
                await holder.stop()
        for proxy in (self.inbound, self.outbound):
            if proxy is not None:
                await proxy.close()
        if self.source is not None:
            await self.source.close()
        await self.fetcher.close()
        if self._admin is not None:
            await self._admin.close(0.0)
        if self.tracing is not None:
            await self.tracing.shutdown()
        self.access_log.flush_pending()


@contextlib.contextmanager
def _bind_errors(section: str, listen: ListenAddress) -> Iterator[None]:
    """A listener that cannot bind (port in use, address not ours, no permission) is a
    start-up error naming its key, not a traceback."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why = "the port is already in use"
        host = f"[{listen.host}]" if ":" in listen.host else listen.host
        where = f"{host}:{listen.port}"
        raise StartupError(f"{section}.listen", f"cannot listen on {where}: {why.lower()}") from exc


def freeze_startup_objects() -> int:
    """Move everything alive after start-up (modules, config, TLS state: tens of thousands of
    objects) out of the garbage collector's sight, so that a full collection under load scans
    only what came later — a gen-2 pass over the start-up heap takes ~10 ms here, a tail-latency
    spike. Frozen objects are still freed by reference counting. Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def serve(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then drain and exit 0."""
    sidecar = Sidecar(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(sidecar.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        stopping.cancel()
        await sidecar.stop()
        raise starting.exception()  # type: ignore[misc]
    if not stopping.done():
        log.info("mcp-sidecar running: %s", {n: lst.port for n, lst in sidecar.listeners.items()})
        freeze_startup_objects()
        trim()  # what start-up freed goes back to the kernel: the idle RSS is what we keep
        await stopping
    log.info("shutting down: draining for up to %ss", config.drain_timeout)
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    await sidecar.stop()
    return 0


def configure_process_log(config: LogConfig, stream: TextIO | None = None) -> logging.Handler:
    """The root logger writes to ``stream`` (stderr) as ``log.format`` says; returns the
    handler."""
    handler = logging.StreamHandler(stream)
    if config.format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=config.level.upper(), handlers=[handler], force=True)
    return handler


def run(config: Config) -> int:
    """Entry point of ``mcp-sidecar run``: uvloop when available."""
    configure_process_log(config.log)
    apply_scheduler(config.process.scheduler)  # before any thread: they inherit it
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        try:
            return runner.run(serve(config))
        except (ConfigError, TracingUnavailable) as exc:
            # cannot start as configured: an OTEL_* value, a missing extra, a port in use, the
            # Workload API socket's path... one line, never a traceback
            print(f"mcp-sidecar: {exc.message}", file=sys.stderr)
            return 1
