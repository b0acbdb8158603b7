"""Every Prometheus metric of the sidecar, in one place (no aiohttp: the admin app only renders).

Each ``Metrics`` owns its own ``CollectorRegistry``, so tests and several sidecars in one process
never collide on the global registry. Label values are bounded: peer SPIFFE IDs beyond a cap
collapse to ``"other"``, reasons are normalised to short snake_case and capped too, directions and
statuses are checked against small closed sets. A metric call never raises into the request path
for a bad label value; it records it under ``"other"`` instead.

Metric names (all prefixed ``mcp_sidecar_``)::

    requests_total{direction,peer,status}            counter
    request_duration_seconds{direction}              histogram, 0.5 ms ... 60 s
    request_bytes_total{direction}                   counter, request body bytes read
    response_bytes_total{direction}                  counter, response body bytes sent
    tool_call_duration_seconds{tool}                 histogram, forwarded tools/call (inbound)
    active_connections{listener}                     gauge at scrape time (inbound, outbound, admin)
    upstream_pool_connections{direction,route}       gauge at scrape time: open connections
    upstream_pool_idle_connections{direction,route}  gauge at scrape time: idle, reusable
    upstream_pool_pending_connections{direction,route} gauge at scrape time: being opened
    tls_handshake_failures_total{direction,reason}   counter
    spiffe_rejections_total{direction,reason}        counter
    upstream_errors_total{direction,reason}          counter
    upstream_overflow_total{direction,route,limit}   counter, circuit breaker refusals (503)
    svid_expiry_timestamp_seconds                    gauge, unix time of our SVID's notAfter
    svid_expired                                     gauge 1/0 at scrape time: ours expired,
                                                     every handshake and request is refused
    svid_rotations_total                             counter, SVID serial number changed
    svid_time_to_expiry_seconds{trust_domain}        gauge at scrape time (our SVID)
    bundle_time_to_expiry_seconds{trust_domain}      gauge at scrape time (earliest CA)
    bundle_rotations_total{trust_domain}             counter, the set of CAs changed
    trace_spans_exported_total                       counter (tracing on)
    trace_spans_dropped_total{reason}                counter: queue_full, export_failed
    workload_api_updates_total                       counter, X.509 contexts received
    workload_api_connected{stream}                   gauge 1/0 at scrape time (x509, jwt_bundles)
    ready                                            gauge 1/0 at scrape time
    build_info{version}                              gauge, always 1
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.loop_metrics import CounterValue, HistogramValue, LoopCounter, LoopHistogram

if TYPE_CHECKING:
    from sidecar.identity.snapshot import X509Snapshot

PREFIX: Final = "mcp_sidecar_"
DIRECTIONS: Final = frozenset({"inbound", "outbound"})
OTHER: Final = "other"
NO_PEER: Final = "none"
UNKNOWN_REASON: Final = "unknown"
MAX_REASON_LENGTH: Final = 64
DEFAULT_PEER_CAP: Final = 256
DEFAULT_REASON_CAP: Final = 128
DEFAULT_TRUST_DOMAIN_CAP: Final = 64

# From a sub-millisecond local hop to a long MCP tool call; SSE streams that stay open longer than
# the last bucket land in +Inf.
DURATION_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

MAX_CACHED_CHILDREN = 4096
_SHA256 = hashes.SHA256()
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NOT_LABEL_CHAR = re.compile(r"[^a-z0-9]+")


def normalise_reason(reason: object) -> str:
    """A stable, short snake_case label: ``"ConnectTimeout"`` -> ``"connect_timeout"``,
    ``"not allowlisted!"`` -> ``"not_allowlisted"``; empty -> ``"unknown"``; at most 64 chars."""
    text = _CAMEL_BOUNDARY.sub("_", str(reason)[: MAX_REASON_LENGTH * 4])
    text = _NOT_LABEL_CHAR.sub("_", text.lower()).strip("_")
    return text[:MAX_REASON_LENGTH].rstrip("_") or UNKNOWN_REASON


def status_label(status: int | str) -> str:
    """``"200"`` for a real HTTP status (100-599), ``"other"`` for anything else."""
    try:
        code = int(status)
    except (TypeError, ValueError):
        return OTHER
    return str(code) if 100 <= code <= 599 else OTHER


def direction_label(direction: str) -> str:
    return direction if direction in DIRECTIONS else OTHER


class _BoundedValues:
    """Admits at most ``cap`` distinct label values; later newcomers become ``"other"``."""

    def __init__(self, cap: int) -> None:
        if cap < 0:
            raise ValueError(f"label cap must be >= 0, got {cap}")
        self.cap = cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self.cap:
                return OTHER
            self._seen.add(value)
            return value


class PoolState(Protocol):
    """What ``bind_pool`` reads of an ``UpstreamPool`` at scrape time."""

    @property
    def open_connections(self) -> int: ...

    @property
    def idle_connections(self) -> int: ...

    @property
    def pending_connections(self) -> int: ...


class _ByteCounters(Collector):
    """``request_bytes_total`` and ``response_bytes_total`` from ``Metrics.bytes_in/out``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        for name, help_text, counts in (
            ("request", "Request body bytes read from clients", self._metrics.bytes_in),
            ("response", "Response body bytes sent to clients", self._metrics.bytes_out),
        ):
            family = CounterMetricFamily(
                f"{PREFIX}{name}_bytes", f"{help_text}, by direction.", labels=["direction"]
            )
            for direction, count in sorted(counts.items()):
                family.add_metric([direction], float(count))
            yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())


class _TrustDomainExpiry(Collector):
    """``svid_time_to_expiry_seconds`` and ``bundle_time_to_expiry_seconds`` per trust
    domain, computed from the current snapshot at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        svid = GaugeMetricFamily(
            f"{PREFIX}svid_time_to_expiry_seconds",
            "Seconds until our X.509-SVID expires (negative once expired), by trust domain.",
            labels=["trust_domain"],
        )
        bundle = GaugeMetricFamily(
            f"{PREFIX}bundle_time_to_expiry_seconds",
            "Seconds until the first CA of a trust domain's X.509 bundle expires.",
            labels=["trust_domain"],
        )
        snapshot = self._metrics.snapshot
        if snapshot is not None:
            now = time.time()
            label = self._metrics.trust_domain_label
            svid.add_metric(
                [label(snapshot.trust_domain)], snapshot.svid.not_after.timestamp() - now
            )
            earliest: dict[str, float] = {}
            for domain, cas in snapshot.bundles.items():
                if cas:
                    key = label(domain)
                    first = min(ca.not_valid_after_utc.timestamp() for ca in cas)
                    earliest[key] = min(first, earliest.get(key, first))
            for key, expiry in sorted(earliest.items()):
                bundle.add_metric([key], expiry - now)
        yield svid
        yield bundle

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class IdentitySource(Protocol):
    """What ``bind_source`` (and ``proxy.admin.readiness``) need of a ``WorkloadApiSource``."""

    @property
    def ready(self) -> bool: ...

    @property
    def snapshot(self) -> X509Snapshot | None: ...

    @property
    def x509_stream_connected(self) -> bool: ...

    @property
    def jwt_stream_connected(self) -> bool: ...

    def subscribe(self, listener: Callable[[X509Snapshot], None]) -> Callable[[], None]: ...


class Metrics:
    """The sidecar's metrics, registered in ``self.registry`` (its own, never the global one)."""

    def __init__(
        self,
        *,
        peer_cap: int = DEFAULT_PEER_CAP,
        reason_cap: int = DEFAULT_REASON_CAP,
        version: str = __version__,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._peer = _BoundedValues(peer_cap)
        self._reason = _BoundedValues(reason_cap)
        # (direction, peer, status) -> the labelled children, so the request path skips
        # prometheus-client's label validation and locking after the first request of a kind
        self._request_children: dict[
            tuple[str, object, int | str], tuple[CounterValue, HistogramValue]
        ] = {}
        self._mcp_children: dict[tuple[str | None, str | None, str], CounterValue] = {}
        self._tool_children: dict[str, HistogramValue] = {}
        self._trust_domain = _BoundedValues(DEFAULT_TRUST_DOMAIN_CAP)
        self._serial: int | None = None
        self._bundles: dict[str, frozenset[bytes]] | None = None
        #: the X.509 snapshot last seen (scrape-time expiry gauges)
        self.snapshot: X509Snapshot | None = None
        self._unsubscribe: Callable[[], None] | None = None
        r = self.registry

        # the request path's metrics: written on the event loop only (``loop_metrics``)
        self.requests = LoopCounter(
            f"{PREFIX}requests_total",
            "Requests handled, by direction, peer SPIFFE ID and HTTP status.",
            ["direction", "peer", "status"],
            registry=r,
        )
        self.request_duration = LoopHistogram(
            f"{PREFIX}request_duration_seconds",
            "Time from request received to response finished, by direction.",
            ["direction"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        # body bytes by direction: plain integers added on the request path (no lock, no
        # label lookup: the event loop is their only writer), exposed at scrape time
        self.bytes_in: dict[str, int] = dict.fromkeys(sorted(DIRECTIONS), 0)
        self.bytes_out: dict[str, int] = dict.fromkeys(sorted(DIRECTIONS), 0)
        r.register(_ByteCounters(self))
        self.tool_call_duration = LoopHistogram(
            f"{PREFIX}tool_call_duration_seconds",
            "Time from request received to response finished of forwarded tools/call requests, "
            "by tool (names the server listed; others as 'other').",
            ["tool"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.active_connections = Gauge(
            f"{PREFIX}active_connections",
            "Client connections open on a listener (inbound, outbound, admin).",
            ["listener"],
            registry=r,
        )
        self.pool_open = Gauge(
            f"{PREFIX}upstream_pool_connections",
            "Upstream connections open (busy and idle), by direction and route.",
            ["direction", "route"],
            registry=r,
        )
        self.pool_idle = Gauge(
            f"{PREFIX}upstream_pool_idle_connections",
            "Idle upstream connections kept for reuse, by direction and route.",
            ["direction", "route"],
            registry=r,
        )
        self.pool_pending = Gauge(
            f"{PREFIX}upstream_pool_pending_connections",
            "Upstream connections being opened (TCP, TLS, identity check) for waiting requests.",
            ["direction", "route"],
            registry=r,
        )
        self.bundle_rotations = Counter(
            f"{PREFIX}bundle_rotations_total",
            "Changes of a trust domain's X.509 bundle (CAs added or removed), by trust domain.",
            ["trust_domain"],
            registry=r,
        )
        self.spans_exported_total = Counter(
            f"{PREFIX}trace_spans_exported_total",
            "Spans delivered to the trace exporter's destination.",
            registry=r,
        )
        self.spans_dropped_total = Counter(
            f"{PREFIX}trace_spans_dropped_total",
            "Spans lost: queue_full (the export queue was full) or export_failed (the collector "
            "could not be reached or refused them).",
            ["reason"],
            registry=r,
        )
        r.register(_TrustDomainExpiry(self))
        self.tls_failures = Counter(
            f"{PREFIX}tls_handshake_failures_total",
            "TLS handshakes that failed, by direction and reason.",
            ["direction", "reason"],
            registry=r,
        )
        self.spiffe_rejections = Counter(
            f"{PREFIX}spiffe_rejections_total",
            "Peers refused by SPIFFE verification or the allowlist, by direction and reason.",
            ["direction", "reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            f"{PREFIX}upstream_errors_total",
            "Failures talking to the upstream, by direction and reason.",
            ["direction", "reason"],
            registry=r,
        )
        self.upstream_overflow = Counter(
            f"{PREFIX}upstream_overflow_total",
            "Requests refused with 503 by a circuit breaker, by direction, route ('local' for the "
            "inbound's MCP server) and limit (max_requests, max_pending_requests, "
            "max_connections).",
            ["direction", "route", "limit"],
            registry=r,
        )
        self.token_rejections = Counter(
            f"{PREFIX}token_rejections_total",
            "Requests refused by the token layer, by layer (jwt_svid, oauth) and reason.",
            ["layer", "reason"],
            registry=r,
        )
        self.mcp_requests = LoopCounter(
            f"{PREFIX}mcp_requests_total",
            "MCP requests by JSON-RPC method, tool (unknown names collapse to 'other') and "
            "decision (allow, deny, rate_limited, invalid).",
            ["method", "tool", "decision"],
            registry=r,
        )
        self.mux_sessions_gauge = Gauge(
            f"{PREFIX}mux_sessions",
            "Client sessions kept by a multiplexing endpoint (an outbound route with targets, "
            "or the edge gateway's inbound), by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self.mux_target_failures = Counter(
            f"{PREFIX}mux_target_failures_total",
            "Times a target of a multiplexing endpoint failed (it is then left out until it "
            "answers again), by endpoint, target and reason.",
            ["endpoint", "target", "reason"],
            registry=r,
        )
        self.mux_name_collisions = Counter(
            f"{PREFIX}mux_name_collisions_total",
            "Names left out of a merged list because several targets serve them "
            "(prefix_mode: never), by endpoint and kind.",
            ["endpoint", "kind"],
            registry=r,
        )
        self.policy_reload_errors = Counter(
            f"{PREFIX}policy_reload_errors_total",
            "Policy files that failed to load; the previous policy stayed in force.",
            registry=r,
        )
        self.policy_reloads = Counter(
            f"{PREFIX}policy_reloads_total",
            "Policy files loaded successfully after start.",
            registry=r,
        )
        self.svid_expiry = Gauge(
            f"{PREFIX}svid_expiry_timestamp_seconds",
            "Unix time at which our current X.509-SVID expires (notAfter).",
            registry=r,
        )
        self.svid_expired = Gauge(
            f"{PREFIX}svid_expired",
            "1 while our X.509-SVID has expired (the Workload API did not renew it): new "
            "handshakes and requests needing our identity are refused.",
            registry=r,
        )
        self.svid_rotations = Counter(
            f"{PREFIX}svid_rotations_total",
            "X.509-SVID rotations seen (the serial number changed).",
            registry=r,
        )
        self.workload_api_updates = Counter(
            f"{PREFIX}workload_api_updates_total",
            "X.509 contexts received from the Workload API.",
            registry=r,
        )
        self.workload_api_connected = Gauge(
            f"{PREFIX}workload_api_connected",
            "1 while the Workload API stream is connected, by stream (x509, jwt_bundles).",
            ["stream"],
            registry=r,
        )
        self.ready = Gauge(
            f"{PREFIX}ready",
            "1 while the sidecar is ready to serve (has a valid SVID).",
            registry=r,
        )
        self.build_info = Gauge(
            f"{PREFIX}build_info",
            "Always 1; the version label says which build is running.",
            ["version"],
            registry=r,
        )
        self.build_info.labels(version=version).set(1)
        for stream in ("x509", "jwt_bundles"):
            self.workload_api_connected.labels(stream=stream).set(0)
        self.ready.set(0)

    # -- label helpers ---------------------------------------------------------------------

    def peer_label(self, peer: object) -> str:
        """The peer label: ``"none"`` without a peer, ``"other"`` once the cap is reached."""
        if peer is None or peer == "":
            return NO_PEER
        return self._peer(str(peer))

    def reason_label(self, reason: object) -> str:
        return self._reason(normalise_reason(reason))

    def trust_domain_label(self, trust_domain: str) -> str:
        return self._trust_domain(trust_domain)

    # -- request path ----------------------------------------------------------------------

    def observe_request(
        self,
        direction: str,
        peer: object,
        status: int | str,
        seconds: float,
        bytes_in: int = 0,
        bytes_out: int = 0,
    ) -> None:
        """One finished request. ``peer``: inbound the client's SPIFFE ID, outbound the route's
        server ID (``None`` -> ``"none"``). Negative durations (clock steps) count as 0."""
        key = (direction, peer, status)
        children = self._request_children.get(key)
        if children is None:
            d = direction_label(direction)
            children = (
                self.requests.labels(
                    direction=d, peer=self.peer_label(peer), status=status_label(status)
                ),
                self.request_duration.labels(direction=d),
            )
            if len(self._request_children) < MAX_CACHED_CHILDREN:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(max(0.0, seconds))
        if direction in self.bytes_in:
            self.bytes_in[direction] += bytes_in
            self.bytes_out[direction] += bytes_out

    def observe_tool_call(self, tool: str, seconds: float) -> None:
        """One forwarded ``tools/call``; ``tool`` must already be bounded by the caller."""
        child = self._tool_children.get(tool)
        if child is None:
            child = self.tool_call_duration.labels(tool=tool)
            if len(self._tool_children) < MAX_CACHED_CHILDREN:
                self._tool_children[tool] = child
        child.observe(max(0.0, seconds))

    def spans_exported(self, count: int) -> None:
        self.spans_exported_total.inc(count)

    def spans_dropped(self, reason: str, count: int) -> None:
        self.spans_dropped_total.labels(reason=self.reason_label(reason)).inc(count)

    # -- connections (read at scrape time: nothing on the request path) --------------------

    def bind_listener(self, listener: str, count: Callable[[], int]) -> None:
        """``active_connections{listener}`` is ``count()`` at scrape time."""
        self.active_connections.labels(listener=listener).set_function(lambda: float(count()))

    def bind_pool(self, direction: str, route: str, pool: PoolState) -> None:
        """The upstream pool gauges of one pool (``route``: outbound the route name, inbound
        ``local``), read from ``pool`` at scrape time."""
        labels = {"direction": direction_label(direction), "route": route}
        self.pool_open.labels(**labels).set_function(lambda: float(pool.open_connections))
        self.pool_idle.labels(**labels).set_function(lambda: float(pool.idle_connections))
        self.pool_pending.labels(**labels).set_function(lambda: float(pool.pending_connections))

    def tls_failure(self, direction: str, reason: object) -> None:
        self.tls_failures.labels(
            direction=direction_label(direction), reason=self.reason_label(reason)
        ).inc()

    def spiffe_rejection(self, direction: str, reason: object) -> None:
        self.spiffe_rejections.labels(
            direction=direction_label(direction), reason=self.reason_label(reason)
        ).inc()

    def upstream_error(self, direction: str, reason: object) -> None:
        self.upstream_errors.labels(
            direction=direction_label(direction), reason=self.reason_label(reason)
        ).inc()

    def upstream_overflowed(self, direction: str, route: str, limit: str) -> None:
        """``route`` is a configured name (bounded by the configuration)."""
        self.upstream_overflow.labels(
            direction=direction_label(direction), route=route, limit=self.reason_label(limit)
        ).inc()

    def mcp_request(self, method: str | None, tool: str | None, decision: str) -> None:
        """``method`` and ``tool`` must already be bounded by the caller (known names or
        ``"other"``)."""
        key = (method, tool, decision)
        child = self._mcp_children.get(key)
        if child is None:
            child = self.mcp_requests.labels(
                method=method or "none", tool=tool or "none", decision=self.reason_label(decision)
            )
            if len(self._mcp_children) < MAX_CACHED_CHILDREN:
                self._mcp_children[key] = child
        child.inc()

    def mux_sessions(self, endpoint: str, count: int) -> None:
        self.mux_sessions_gauge.labels(endpoint=endpoint).set(count)

    def mux_target_failure(self, endpoint: str, target: str, reason: object) -> None:
        """``endpoint`` and ``target`` are names from the configuration (bounded)."""
        self.mux_target_failures.labels(
            endpoint=endpoint, target=target, reason=self.reason_label(reason)
        ).inc()

    def mux_name_collision(self, endpoint: str, kind: str) -> None:
        self.mux_name_collisions.labels(endpoint=endpoint, kind=kind).inc()

    def token_rejection(self, layer: str, reason: object) -> None:
        self.token_rejections.labels(
            layer=self.reason_label(layer), reason=self.reason_label(reason)
        ).inc()

    # -- identity --------------------------------------------------------------------------

    def observe_snapshot(self, snapshot: X509Snapshot) -> None:
        """One X.509 context from the Workload API: an update, and a rotation if the serial of
        our SVID differs from the previous one (the first snapshot is not a rotation)."""
        self.workload_api_updates.inc()
        self._record_svid(snapshot, count_rotation=True)

    def _record_svid(self, snapshot: X509Snapshot, *, count_rotation: bool) -> None:
        serial = snapshot.svid.serial_number
        if count_rotation and self._serial is not None and serial != self._serial:
            self.svid_rotations.inc()
        self._serial = serial
        self.svid_expiry.set(snapshot.svid.not_after.timestamp())
        bundles = {
            domain: frozenset(ca.fingerprint(_SHA256) for ca in cas)
            for domain, cas in snapshot.bundles.items()
        }
        if count_rotation and self._bundles is not None:
            for domain, cas in bundles.items():
                if self._bundles.get(domain, cas) != cas:
                    self.bundle_rotations.labels(trust_domain=self.trust_domain_label(domain)).inc()
        self._bundles = bundles
        self.snapshot = snapshot

    def set_svid_expired_function(self, expired: Callable[[], bool]) -> None:
        """Compute ``svid_expired`` at scrape time from ``expired``."""
        self.svid_expired.set_function(lambda: 1.0 if expired() else 0.0)

    def set_ready_function(self, ready: Callable[[], bool]) -> None:
        """Compute ``mcp_sidecar_ready`` at scrape time from ``ready`` (e.g. the admin's check)."""
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)

    def bind_source(self, source: IdentitySource) -> Callable[[], None]:
        """Follow ``source``: expiry gauge, updates and rotations on every X.509 context, and
        ``workload_api_connected`` / ``ready`` computed from it at scrape time.

        A snapshot the source already holds sets the expiry gauge (it is not counted as an
        update: it arrived before we listened). Binding again replaces the previous binding.
        Returns a function that unsubscribes.
        """
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        current = source.snapshot
        if current is not None:
            self._record_svid(current, count_rotation=False)
        self.workload_api_connected.labels(stream="x509").set_function(
            lambda: 1.0 if source.x509_stream_connected else 0.0
        )
        self.workload_api_connected.labels(stream="jwt_bundles").set_function(
            lambda: 1.0 if source.jwt_stream_connected else 0.0
        )
        self.set_ready_function(lambda: source.ready)
        unsubscribe = source.subscribe(self.observe_snapshot)
        bound = [True]

        def unbind() -> None:
            if self._unsubscribe is unbind:
                self._unsubscribe = None
            if bound[0]:
                bound[0] = False
                unsubscribe()

        self._unsubscribe = unbind
        return unbind

    # -- exposition ------------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        return render(self.registry, accept)


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """Body and content type of the exposition. Without ``accept``: the Prometheus text format
    (``CONTENT_TYPE_LATEST``); with a request's ``Accept`` header: whatever it negotiates
    (OpenMetrics when asked for)."""
    if accept is None:
        return generate_latest(registry), CONTENT_TYPE_LATEST
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


WEBHOOK_OUTCOMES: Final = frozenset({"injected", "skipped", "ignored", "denied", "invalid"})


class CertificateSource(Protocol):
    """What the webhook metrics read of its ``CertificateReloader`` at scrape time."""

    cert_file: str
    reloads: int


class _WebhookCertificate(Collector):
    def __init__(self, source: CertificateSource) -> None:
        self._source = source

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        reloads = CounterMetricFamily(
            f"{PREFIX}webhook_certificate_reloads",
            "Times the webhook loaded a new serving certificate from its files.",
        )
        reloads.add_metric([], float(self._source.reloads))
        yield reloads
        expiry = GaugeMetricFamily(
            f"{PREFIX}webhook_certificate_expiry_timestamp_seconds",
            "Unix time at which the certificate in the webhook's certificate file expires.",
        )
        try:
            with open(self._source.cert_file, "rb") as pem:
                cert = x509.load_pem_x509_certificate(pem.read())
        except (OSError, ValueError):
            pass  # an unreadable file: no sample (the reloader keeps serving the old one)
        else:
            expiry.add_metric([], cert.not_valid_after_utc.timestamp())
        yield expiry

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class WebhookMetrics:
    """The admission webhook's metrics (``mcp-sidecar webhook``, its own ``/metrics``)::

    webhook_admissions_total{outcome}                counter: injected, skipped, ignored,
                                                     denied, invalid
    webhook_request_duration_seconds                 histogram of POST /inject
    webhook_certificate_reloads_total                counter
    webhook_certificate_expiry_timestamp_seconds     gauge, read from the file at scrape time
    build_info{version}                              gauge, always 1
    """

    def __init__(self, *, version: str = __version__) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admissions = Counter(
            f"{PREFIX}webhook_admissions_total",
            "Admission reviews answered, by outcome (injected, skipped, ignored, denied, invalid).",
            ["outcome"],
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}webhook_request_duration_seconds",
            "Time to answer one admission review.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        build_info = Gauge(
            f"{PREFIX}build_info",
            "Always 1; the version label says which build is running.",
            ["version"],
            registry=r,
        )
        build_info.labels(version=version).set(1)
        for outcome in sorted(WEBHOOK_OUTCOMES):
            self.admissions.labels(outcome=outcome)

    def admission(self, outcome: str, seconds: float) -> None:
        label = outcome if outcome in WEBHOOK_OUTCOMES else OTHER
        self.admissions.labels(outcome=label).inc()
        self.duration.observe(max(0.0, seconds))

    def bind_certificate(self, source: CertificateSource) -> None:
        self.registry.register(_WebhookCertificate(source))

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        return render(self.registry, accept)
