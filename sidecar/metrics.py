"""Every Prometheus metric of the sidecar, in one place (no aiohttp: the admin app only renders).

Each ``Metrics`` owns its own ``CollectorRegistry``, so tests and several sidecars in one process
never collide on the global registry. Label values are bounded: peer SPIFFE IDs beyond a cap
collapse to ``"other"``, reasons are normalised to short snake_case and capped too, directions and
statuses are checked against small closed sets. A metric call never raises into the request path
for a bad label value; it records it under ``"other"`` instead.

Metric names (all prefixed ``mcp_sidecar_``)::

    requests_total{direction,peer,status}            counter
    request_duration_seconds{direction}              histogram, 0.5 ms ... 60 s
    tls_handshake_failures_total{direction,reason}   counter
    spiffe_rejections_total{direction,reason}        counter
    upstream_errors_total{direction,reason}          counter
    upstream_overflow_total{direction,route,limit}   counter, circuit breaker refusals (503)
    svid_expiry_timestamp_seconds                    gauge, unix time of our SVID's notAfter
    svid_rotations_total                             counter, SVID serial number changed
    workload_api_updates_total                       counter, X.509 contexts received
    workload_api_connected{stream}                   gauge 1/0 at scrape time (x509, jwt_bundles)
    ready                                            gauge 1/0 at scrape time
    build_info{version}                              gauge, always 1
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import choose_encoder

from sidecar import __version__

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
        self._request_children: dict[tuple[str, object, int | str], tuple[Any, Any]] = {}
        self._mcp_children: dict[tuple[str | None, str | None, str], Any] = {}
        self._serial: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        r = self.registry

        self.requests = Counter(
            f"{PREFIX}requests_total",
            "Requests handled, by direction, peer SPIFFE ID and HTTP status.",
            ["direction", "peer", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}request_duration_seconds",
            "Time from request received to response finished, by direction.",
            ["direction"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
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
        self.mcp_requests = Counter(
            f"{PREFIX}mcp_requests_total",
            "MCP requests by JSON-RPC method, tool (unknown names collapse to 'other') and "
            "decision (allow, deny, rate_limited, invalid).",
            ["method", "tool", "decision"],
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

    # -- request path ----------------------------------------------------------------------

    def observe_request(
        self, direction: str, peer: object, status: int | str, seconds: float
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
        """Body and content type of the exposition. Without ``accept``: the Prometheus text
        format (``CONTENT_TYPE_LATEST``); with a request's ``Accept`` header: whatever it
        negotiates (OpenMetrics when asked for)."""
        if accept is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
