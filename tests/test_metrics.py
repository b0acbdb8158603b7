"""Metrics: names and labels in the exposition, bounded label cardinality, following a source."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from sidecar import __version__
from sidecar.dev.devca import DevCA
from sidecar.identity.snapshot import X509Snapshot, X509Svid
from sidecar.metrics import Metrics, normalise_reason, status_label
from sidecar.spiffe.ids import SpiffeId

TD = "example.org"
AGENT = "spiffe://example.org/ns/agents/sa/agent"
MATH = "spiffe://example.org/ns/mcp/sa/math"


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered exposition, keyed by name and sorted labels."""
    body, _ = m.render()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, tuple(sorted(labels.items()))))


def make_snapshot(ca: DevCA, ttl: dt.timedelta = dt.timedelta(hours=1)) -> X509Snapshot:
    sid = SpiffeId.parse(AGENT)
    chain, key = ca.issue_x509_svid(sid, ttl)
    return X509Snapshot(svid=X509Svid(sid, chain, key), bundles={TD: (ca.ca_cert,)})


class FakeSource:
    """Has what ``Metrics.bind_source`` reads of a ``WorkloadApiSource``."""

    def __init__(self, snapshot: X509Snapshot | None = None) -> None:
        self.snapshot = snapshot
        self.ready = snapshot is not None
        self.x509_stream_connected = False
        self.jwt_stream_connected = False
        self.listeners: list[Callable[[X509Snapshot], None]] = []

    def subscribe(self, listener: Callable[[X509Snapshot], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def push(self, snapshot: X509Snapshot) -> None:
        self.snapshot = snapshot
        self.ready = True
        for listener in list(self.listeners):
            listener(snapshot)


def test_render_content_type_and_build_info() -> None:
    m = Metrics()
    body, content_type = m.render()
    assert content_type == CONTENT_TYPE_LATEST
    assert b"# TYPE mcp_sidecar_requests_total counter" in body
    assert value(m, "mcp_sidecar_build_info", version=__version__) == 1.0
    assert value(m, "mcp_sidecar_ready") == 0.0
    assert value(m, "mcp_sidecar_workload_api_connected", stream="x509") == 0.0


def test_render_negotiates_openmetrics() -> None:
    body, content_type = Metrics().render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_observe_request_counts_and_times() -> None:
    m = Metrics()
    m.observe_request("inbound", AGENT, 200, 0.003)
    m.observe_request("inbound", AGENT, 200, 0.2)
    m.observe_request("outbound", MATH, "503", 1.5)
    assert value(
        m, "mcp_sidecar_requests_total", direction="inbound", peer=AGENT, status="200"
    ) == (2.0)
    assert (
        value(m, "mcp_sidecar_requests_total", direction="outbound", peer=MATH, status="503") == 1.0
    )
    assert value(m, "mcp_sidecar_request_duration_seconds_count", direction="inbound") == 2.0
    assert value(
        m, "mcp_sidecar_request_duration_seconds_bucket", direction="inbound", le="0.005"
    ) == (1.0)
    assert (
        value(m, "mcp_sidecar_request_duration_seconds_bucket", direction="inbound", le="0.0005")
        == 0.0
    )
    assert (
        value(m, "mcp_sidecar_request_duration_seconds_bucket", direction="outbound", le="60.0")
        == 1.0
    )


def test_request_labels_are_bounded() -> None:
    m = Metrics()
    m.observe_request("sideways", None, 0, -1.0)
    m.observe_request("inbound", "", "abc", 0.0)
    assert value(m, "mcp_sidecar_requests_total", direction="other", peer="none", status="other")
    assert value(m, "mcp_sidecar_requests_total", direction="inbound", peer="none", status="other")
    assert value(m, "mcp_sidecar_request_duration_seconds_sum", direction="other") == 0.0


def test_peer_cap_collapses_to_other() -> None:
    m = Metrics(peer_cap=3)
    for i in range(5):
        m.observe_request("inbound", f"spiffe://example.org/w/{i}", 200, 0.01)
    m.observe_request("inbound", "spiffe://example.org/w/0", 200, 0.01)  # known: still counted
    s = samples(m)
    peers = {dict(labels)["peer"] for (name, labels) in s if name == "mcp_sidecar_requests_total"}
    assert peers == {f"spiffe://example.org/w/{i}" for i in range(3)} | {"other"}
    other = (
        "mcp_sidecar_requests_total",
        (("direction", "inbound"), ("peer", "other"), ("status", "200")),
    )
    assert s[other] == 2.0
    w0 = (
        "mcp_sidecar_requests_total",
        (("direction", "inbound"), ("peer", "spiffe://example.org/w/0"), ("status", "200")),
    )
    assert s[w0] == 2.0


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("not_allowlisted", "not_allowlisted"),
        ("ConnectTimeout", "connect_timeout"),
        ("ClientConnectorError", "client_connector_error"),
        ("untrusted chain!\n", "untrusted_chain"),
        ("", "unknown"),
        ("???", "unknown"),
        ("x" * 500, "x" * 64),
        ("a" * 63 + "-b", "a" * 63),
    ],
)
def test_normalise_reason(raw: str, label: str) -> None:
    assert normalise_reason(raw) == label


def test_status_label() -> None:
    assert status_label(200) == "200"
    assert status_label("404") == "404"
    assert status_label(99) == "other"
    assert status_label(600) == "other"


def test_refusals_failures_and_upstream_errors() -> None:
    m = Metrics()
    m.tls_failure("inbound", "handshake_timeout")
    m.spiffe_rejection("inbound", "not_allowlisted")
    m.spiffe_rejection("outbound", "unexpected_server_id")
    m.spiffe_rejection("outbound", "UnexpectedServerId")
    m.upstream_error("outbound", "connect_refused")
    assert (
        value(
            m,
            "mcp_sidecar_tls_handshake_failures_total",
            direction="inbound",
            reason="handshake_timeout",
        )
        == 1.0
    )
    assert (
        value(
            m, "mcp_sidecar_spiffe_rejections_total", direction="inbound", reason="not_allowlisted"
        )
        == 1.0
    )
    assert (
        value(
            m,
            "mcp_sidecar_spiffe_rejections_total",
            direction="outbound",
            reason="unexpected_server_id",
        )
        == 2.0
    )
    assert (
        value(
            m, "mcp_sidecar_upstream_errors_total", direction="outbound", reason="connect_refused"
        )
        == 1.0
    )


def test_reason_cap() -> None:
    m = Metrics(reason_cap=2)
    for reason in ("a", "b", "c", "d"):
        m.upstream_error("outbound", reason)
    reasons = {
        dict(labels)["reason"]
        for (name, labels) in samples(m)
        if name == "mcp_sidecar_upstream_errors_total"
    }
    assert reasons == {"a", "b", "other"}


def test_bind_source_follows_updates_and_rotations(ca: DevCA) -> None:
    m = Metrics()
    source = FakeSource()
    m.bind_source(source)
    assert value(m, "mcp_sidecar_ready") == 0.0
    assert value(m, "mcp_sidecar_svid_expiry_timestamp_seconds") == 0.0

    first = make_snapshot(ca)
    source.push(first)
    assert value(m, "mcp_sidecar_workload_api_updates_total") == 1.0
    assert value(m, "mcp_sidecar_svid_rotations_total") == 0.0
    assert value(m, "mcp_sidecar_svid_expiry_timestamp_seconds") == (
        first.svid.not_after.timestamp()
    )
    assert value(m, "mcp_sidecar_ready") == 1.0

    # Same SVID again (e.g. a bundle-only change): an update, not a rotation.
    source.push(X509Snapshot(svid=first.svid, bundles={TD: (ca.ca_cert,), "other.test": ()}))
    assert value(m, "mcp_sidecar_workload_api_updates_total") == 2.0
    assert value(m, "mcp_sidecar_svid_rotations_total") == 0.0

    second = make_snapshot(ca, dt.timedelta(hours=2))
    assert second.svid.serial_number != first.svid.serial_number
    source.push(second)
    assert value(m, "mcp_sidecar_workload_api_updates_total") == 3.0
    assert value(m, "mcp_sidecar_svid_rotations_total") == 1.0
    assert value(m, "mcp_sidecar_svid_expiry_timestamp_seconds") == (
        second.svid.not_after.timestamp()
    )


def test_bind_source_connected_is_computed_at_scrape_time(ca: DevCA) -> None:
    m = Metrics()
    source = FakeSource()
    m.bind_source(source)
    assert value(m, "mcp_sidecar_workload_api_connected", stream="x509") == 0.0
    source.x509_stream_connected = True
    assert value(m, "mcp_sidecar_workload_api_connected", stream="x509") == 1.0
    assert value(m, "mcp_sidecar_workload_api_connected", stream="jwt_bundles") == 0.0
    source.jwt_stream_connected = True
    assert value(m, "mcp_sidecar_workload_api_connected", stream="jwt_bundles") == 1.0
    source.x509_stream_connected = False
    assert value(m, "mcp_sidecar_workload_api_connected", stream="x509") == 0.0


def test_bind_source_with_existing_snapshot_and_unbind(ca: DevCA) -> None:
    existing = make_snapshot(ca)
    source = FakeSource(existing)
    m = Metrics()
    unbind = m.bind_source(source)
    # What the source held before binding sets the gauge but is neither update nor rotation.
    assert value(m, "mcp_sidecar_svid_expiry_timestamp_seconds") == (
        existing.svid.not_after.timestamp()
    )
    assert value(m, "mcp_sidecar_workload_api_updates_total") == 0.0
    source.push(make_snapshot(ca))
    assert value(m, "mcp_sidecar_svid_rotations_total") == 1.0
    unbind()
    unbind()  # idempotent
    assert source.listeners == []
    source.push(make_snapshot(ca))
    assert value(m, "mcp_sidecar_workload_api_updates_total") == 1.0


def test_rebinding_replaces_the_previous_source(ca: DevCA) -> None:
    m = Metrics()
    old, new = FakeSource(), FakeSource()
    m.bind_source(old)
    m.bind_source(new)
    assert old.listeners == []
    assert len(new.listeners) == 1


def test_set_ready_function() -> None:
    m = Metrics()
    state = {"ready": False}
    m.set_ready_function(lambda: state["ready"])
    assert value(m, "mcp_sidecar_ready") == 0.0
    state["ready"] = True
    assert value(m, "mcp_sidecar_ready") == 1.0


def test_svid_expired_is_computed_at_scrape_time() -> None:
    m = Metrics()
    state = {"expired": False}
    m.set_svid_expired_function(lambda: state["expired"])
    assert value(m, "mcp_sidecar_svid_expired") == 0.0
    state["expired"] = True
    assert value(m, "mcp_sidecar_svid_expired") == 1.0


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.upstream_error("outbound", "timeout")
    assert value(a, "mcp_sidecar_upstream_errors_total", direction="outbound", reason="timeout")
    assert (
        value(b, "mcp_sidecar_upstream_errors_total", direction="outbound", reason="timeout")
        is None
    )


def test_metrics_module_does_not_import_aiohttp() -> None:
    import subprocess
    import sys

    code = "import sys, sidecar.metrics; print('aiohttp' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


# -- operator metrics: bytes, tool calls, connections, pools, trust domains, spans -------------


def test_request_and_response_bytes_by_direction() -> None:
    m = Metrics()
    m.observe_request("inbound", AGENT, 200, 0.01, 120, 3000)
    m.observe_request("inbound", AGENT, 403, 0.01, 80, 0)
    m.observe_request("outbound", MATH, 200, 0.01)
    assert value(m, "mcp_sidecar_request_bytes_total", direction="inbound") == 200.0
    assert value(m, "mcp_sidecar_response_bytes_total", direction="inbound") == 3000.0
    assert value(m, "mcp_sidecar_request_bytes_total", direction="outbound") == 0.0


def test_tool_call_duration_by_tool() -> None:
    m = Metrics()
    m.observe_tool_call("add", 0.002)
    m.observe_tool_call("add", 0.3)
    m.observe_tool_call("other", -1.0)
    assert value(m, "mcp_sidecar_tool_call_duration_seconds_count", tool="add") == 2.0
    assert value(m, "mcp_sidecar_tool_call_duration_seconds_bucket", tool="add", le="0.0025") == 1
    assert value(m, "mcp_sidecar_tool_call_duration_seconds_sum", tool="other") == 0.0


class Pool:
    open_connections = 3
    idle_connections = 2
    pending_connections = 1


def test_connections_and_pools_are_read_at_scrape_time() -> None:
    m = Metrics()
    live: set[int] = set()
    m.bind_listener("inbound", lambda: len(live))
    pool = Pool()
    m.bind_pool("outbound", "math", pool)
    assert value(m, "mcp_sidecar_active_connections", listener="inbound") == 0.0
    live.update({1, 2})
    pool.idle_connections = 0
    assert value(m, "mcp_sidecar_active_connections", listener="inbound") == 2.0
    labels = {"direction": "outbound", "route": "math"}
    assert value(m, "mcp_sidecar_upstream_pool_connections", **labels) == 3.0
    assert value(m, "mcp_sidecar_upstream_pool_idle_connections", **labels) == 0.0
    assert value(m, "mcp_sidecar_upstream_pool_pending_connections", **labels) == 1.0


def test_bundle_rotations_and_time_to_expiry_per_trust_domain(ca: DevCA) -> None:
    partner = DevCA.generate("partner.example")
    m = Metrics()
    source = FakeSource()
    m.bind_source(source)
    assert value(m, "mcp_sidecar_svid_time_to_expiry_seconds", trust_domain=TD) is None
    first = make_snapshot(ca, dt.timedelta(minutes=30))
    first = X509Snapshot(first.svid, {TD: (ca.ca_cert,), "partner.example": (partner.ca_cert,)})
    source.push(first)
    ttl = value(m, "mcp_sidecar_svid_time_to_expiry_seconds", trust_domain=TD)
    assert ttl is not None and 29 * 60 < ttl <= 30 * 60
    expected = partner.ca_cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    bundle = value(m, "mcp_sidecar_bundle_time_to_expiry_seconds", trust_domain="partner.example")
    assert bundle is not None and abs(bundle - expected.total_seconds()) < 60
    # a new SVID with the same bundles: no bundle rotation; a new partner CA: one
    source.push(X509Snapshot(make_snapshot(ca).svid, first.bundles))
    assert value(m, "mcp_sidecar_bundle_rotations_total", trust_domain=TD) is None
    rotated = DevCA.generate("partner.example")
    bundles = {TD: (ca.ca_cert,), "partner.example": (partner.ca_cert, rotated.ca_cert)}
    source.push(X509Snapshot(make_snapshot(ca).svid, bundles))
    assert value(m, "mcp_sidecar_bundle_rotations_total", trust_domain="partner.example") == 1.0
    assert value(m, "mcp_sidecar_svid_rotations_total") == 2.0


def test_span_counters() -> None:
    m = Metrics()
    m.spans_exported(5)
    m.spans_dropped("queue_full", 2)
    m.spans_dropped("export_failed", 3)
    assert value(m, "mcp_sidecar_trace_spans_exported_total") == 5.0
    assert value(m, "mcp_sidecar_trace_spans_dropped_total", reason="queue_full") == 2.0
    assert value(m, "mcp_sidecar_trace_spans_dropped_total", reason="export_failed") == 3.0
