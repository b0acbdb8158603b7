"""The SDK pipeline without sockets: sampling that follows the caller, propagation, span
names, the resource, and the counted queue bound."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from multidict import CIMultiDict
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.mcp.jsonrpc import parse_body
from sidecar.proxy.handler import RequestInfo
from sidecar.proxy.messages import Request
from sidecar.spiffe.ids import SpiffeId
from sidecar.tls.contexts import PeerRejected
from sidecar.tracing.config import TracingConfig
from sidecar.tracing.sdk import Tracing, resource_for
from sidecar.tracing.settings import TraceSettings, resolve

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
BODY = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{}}}'


class Counters:
    def __init__(self) -> None:
        self.exported = 0
        self.dropped: dict[str, int] = {}

    def spans_exported(self, count: int) -> None:
        self.exported += count

    def spans_dropped(self, reason: str, count: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + count


class Conn:
    """A plain connection: no TLS peer."""

    def __init__(self) -> None:
        self.peer: SpiffeId | None = None
        self.rejection: PeerRejected | None = None
        self.peer_cert_sha256: str | None = None


async def _no_body() -> bytes:
    return b""


def request(headers: dict[str, str], method: str = "POST") -> Request:
    return Request(method, "/mcp", 1, CIMultiDict(headers), "http", Conn(), _no_body)


def settings(**changes: Any) -> TraceSettings:
    base = resolve(TracingConfig(enabled=True, service_name="test"), {})
    assert base is not None
    return replace(base, **changes)


def tracing(exporter: SpanExporter, **changes: Any) -> tuple[Tracing, Counters]:
    counters = Counters()
    return Tracing(settings(**changes), counters, exporter=exporter), counters


def finish(req: Request, status: int = 200) -> None:
    assert req.trace is not None
    req.trace.finish(status, RequestInfo())


@pytest.mark.parametrize(("flags", "recorded"), [("01", True), ("00", False)])
def test_the_callers_sampling_decision_is_followed_and_propagated(
    flags: str, recorded: bool
) -> None:
    memory = InMemorySpanExporter()
    t, counters = tracing(memory)
    req = request({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-{flags}"})
    trace = t.start(req, "outbound")
    forwarded: CIMultiDict[str] = CIMultiDict(traceparent="client's", tracestate="")
    trace.upstream(forwarded, BODY)
    finish(req)
    t.flush()
    (traceparent,) = forwarded.getall("traceparent")
    version, trace_id, parent, sent_flags = traceparent.split("-")
    assert (version, trace_id, sent_flags) == ("00", TRACE, flags)
    spans = memory.get_finished_spans()
    assert len(spans) == (1 if recorded else 0)
    assert counters.exported == len(spans)
    if recorded:
        (server,) = spans
        assert server.kind == SpanKind.SERVER and server.context is not None
        assert parent == format(server.context.span_id, "016x")  # the next hop's parent
        assert server.parent is not None and server.parent.is_remote
        assert format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
        assert server.name == "tools/call add"
        assert server.attributes is not None and server.attributes["jsonrpc.request.id"] == "7"


def test_a_request_without_traceparent_starts_a_trace_and_a_ratio_of_zero_records_none() -> None:
    memory = InMemorySpanExporter()
    t, _ = tracing(memory, sampler="parentbased_traceidratio", sampler_arg=0.0)
    req = request({})
    headers: CIMultiDict[str] = CIMultiDict()
    t.start(req, "inbound").upstream(headers, b"")
    finish(req)
    t.flush()
    assert memory.get_finished_spans() == ()
    flags = int(headers["traceparent"].rsplit("-", 1)[1], 16)
    assert flags & 1 == 0  # propagated, not sampled
    # a sampled caller is still followed under the same sampler
    req = request({"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"})
    t.start(req, "inbound")
    finish(req)
    t.flush()
    assert len(memory.get_finished_spans()) == 1


def test_service_name_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "team=mesh")
    resource = resource_for(settings(service_name=None))
    assert resource.attributes["service.name"] == "mcp-sidecar"
    assert resource.attributes["team"] == "mesh"  # the environment's attributes are kept
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-env")
    assert resource_for(settings(service_name=None)).attributes["service.name"] == "from-env"
    named = resource_for(settings(service_name="mine", resource_attributes={"team": "x"}))
    assert (named.attributes["service.name"], named.attributes["team"]) == ("mine", "x")


class Blocking(SpanExporter):
    """Holds the first export until released: a collector that does not answer."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        assert self.release.wait(10)
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def test_the_queue_bound_drops_and_counts_what_does_not_fit() -> None:
    exporter = Blocking()
    t, counters = tracing(exporter, max_queue_size=2)
    for _ in range(2):  # a batch of 2: the export thread takes it and blocks
        req = request({})
        t.start(req, "inbound")
        finish(req)
    assert exporter.entered.wait(10)
    for _ in range(5):  # 2 fit in the queue, 3 are dropped and counted
        req = request({})
        t.start(req, "inbound")
        finish(req)
    assert counters.dropped == {"queue_full": 3}
    exporter.release.set()
    t.flush()
    assert exporter.spans == counters.exported == 4
    assert t.processor.queued == 0


def test_a_failing_exporter_is_counted_never_raised() -> None:
    class Broken(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            raise RuntimeError("collector exploded")

    t, counters = tracing(Broken())
    req = request({})
    t.start(req, "inbound")
    finish(req, 500)
    t.flush()
    assert counters.dropped == {"export_failed": 1} and counters.exported == 0


@pytest.mark.parametrize(
    ("outcome", "event"),
    [
        ("rate_limited", "mcp_sidecar.rate_limited"),
        ("deny", "mcp_sidecar.policy_denied"),
        ("invalid", "mcp_sidecar.invalid_request"),
    ],
)
def test_a_refused_mcp_call_is_an_error_with_its_event(outcome: str, event: str) -> None:
    memory = InMemorySpanExporter()
    t, _ = tracing(memory)
    req = request({})
    trace = t.start(req, "inbound")
    (message,) = parse_body(BODY).messages
    trace.mcp(BODY, [(message, None, outcome)])
    info = RequestInfo(reason="mcp_refused")
    trace.finish(429 if outcome == "rate_limited" else 403, info)
    t.flush()
    (span,) = memory.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == [event]
    assert span.attributes is not None
    assert span.attributes["mcp_sidecar.policy.decision"] == outcome
    assert span.attributes["error.type"] == "mcp_refused"


def test_an_allowed_call_is_not_an_error() -> None:
    memory = InMemorySpanExporter()
    t, _ = tracing(memory)
    req = request({})
    trace = t.start(req, "inbound")
    (message,) = parse_body(BODY).messages
    trace.mcp(BODY, [(message, None, "allow")])
    trace.finish(200, RequestInfo())
    t.flush()
    (span,) = memory.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET and not span.events
