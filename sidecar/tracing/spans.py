"""The spans of one proxied request (imported only when tracing is on).

One SERVER span per request, the child of the client's ``traceparent`` (a new trace without
one), whose context replaces ``traceparent``/``tracestate`` in the forwarded request, so the
next hop's span is its child. Sampling follows the configured sampler (the ``parentbased_*``
ones honour the client's decision); a span that is not sampled still propagates its context,
with the sampled flag off.

No CLIENT span for the upstream exchange (as Envoy by default): the Python SDK costs about
70 µs per span on this machine and its OTLP encoder about 130 µs more, so a second span per
request and sidecar would double the cost of tracing for timing the sidecar already records
(the request's span covers the exchange; upstream failures are its events).

Attribute names follow the OpenTelemetry semantic conventions (HTTP server/client; MCP and GenAI
for ``mcp.method.name``, ``gen_ai.tool.name``, ``jsonrpc.request.id``...); what they do not
name is under ``mcp_sidecar.*``. docs/observability.md lists every attribute and event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict
from opentelemetry.context import Context
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.errors import SidecarError
from sidecar.mcp.jsonrpc import JsonRpcError, Kind, Message, parse_body
from sidecar.proxy.accesslog import MCP_SESSION_HEADER
from sidecar.proxy.errors import ProxyError
from sidecar.tokens.errors import TokenError
from sidecar.tracing.correlation import current

if TYPE_CHECKING:
    from sidecar.mcp.policy import Decision
    from sidecar.proxy.handler import RequestInfo
    from sidecar.proxy.messages import Request

Audit = tuple[Message, "Decision | None", str]

PROTOCOL_VERSION_HEADER = "MCP-Protocol-Version"
TRACE_HEADERS = ("traceparent", "tracestate")
# the target of an MCP method, by the attribute the conventions give it
_TARGET_ATTRIBUTE = {
    "tools/call": "gen_ai.tool.name",
    "prompts/get": "gen_ai.prompt.name",
    "resources/read": "mcp.resource.uri",
    "resources/subscribe": "mcp.resource.uri",
    "resources/unsubscribe": "mcp.resource.uri",
}
_NAMED_TARGETS = frozenset({"tools/call", "prompts/get"})  # low-cardinality: in the span name
# refusals: the event added to the span, by what refused
EVENT_POLICY = "mcp_sidecar.policy_denied"
EVENT_RATE_LIMIT = "mcp_sidecar.rate_limited"
EVENT_INVALID = "mcp_sidecar.invalid_request"
EVENT_TOKEN = "mcp_sidecar.token_rejected"  # noqa: S105 - an event name
EVENT_PEER = "mcp_sidecar.peer_rejected"
EVENT_UPSTREAM = "mcp_sidecar.upstream_error"
EVENT_REFUSED = "mcp_sidecar.refused"
_DECISION_EVENTS = {
    "deny": EVENT_POLICY,
    "rate_limited": EVENT_RATE_LIMIT,
    "invalid": EVENT_INVALID,
}


def _getter_carrier(headers: CIMultiDict[str]) -> dict[str, str]:
    """The W3C headers of a request, as the propagator reads them (one value each)."""
    found: dict[str, str] = {}
    for name in TRACE_HEADERS:
        value = headers.get(name)
        if value is not None:
            found[name] = value
    return found


class SpanFactory:
    """Starts the span of each request."""

    def __init__(self, tracer: Tracer, propagator: TraceContextTextMapPropagator) -> None:
        self.tracer = tracer
        self.propagator = propagator

    def start(self, request: Request, direction: str) -> RequestTrace:
        headers = request.headers
        parent = self.propagator.extract(_getter_carrier(headers))
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.path": request.path,
            "url.scheme": request.scheme,
            "network.protocol.name": "http",
            "network.protocol.version": "1.1" if request.version == 1 else "1.0",
            "mcp_sidecar.direction": direction,
        }
        correlation = current()
        if correlation is not None:
            attributes["mcp_sidecar.request_id"] = correlation.request_id
        for header, key in (
            ("User-Agent", "user_agent.original"),
            (MCP_SESSION_HEADER, "mcp.session.id"),
            (PROTOCOL_VERSION_HEADER, "mcp.protocol.version"),
        ):
            value = headers.get(header)
            if value:
                attributes[key] = value
        span = self.tracer.start_span(
            request.method, context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        context = span.get_span_context()
        if correlation is not None:  # a span that is not recorded is not named in the logs
            span_id = format(context.span_id, "016x") if context.trace_flags.sampled else None
            correlation.set_span(format(context.trace_id, "032x"), span_id)
        trace = RequestTrace(self, span, request)
        request.trace = trace
        return trace


class RequestTrace:
    """The span of one request; the proxy reports to it as the request goes."""

    __slots__ = (
        "_decision",
        "_factory",
        "_name",
        "_refusal",
        "_request",
        "mcp_done",
        "span",
    )

    def __init__(self, factory: SpanFactory, span: Span, request: Request) -> None:
        self._factory = factory
        self.span = span
        self._request = request
        self._name = request.method
        self.mcp_done = False
        self._refusal: tuple[str, SidecarError] | None = None
        self._decision: tuple[str, str | None] | None = None  # (outcome, rule) of a refusal

    # -- as the request goes ------------------------------------------------------------------

    def mcp(self, body: bytes, audits: Sequence[Audit] = ()) -> None:
        """The MCP view of the request: method, target and JSON-RPC id of a single message (or
        the size of a batch) and, from the guard's ``audits``, the policy decision and rule."""
        if self.mcp_done:
            return
        self.mcp_done = True
        span = self.span
        if not span.is_recording():
            return
        if audits:
            messages = [audit[0] for audit in audits]
        else:
            try:
                messages = list(parse_body(body).messages)
            except JsonRpcError:
                return
        if len(messages) > 1:
            span.set_attribute("mcp_sidecar.jsonrpc.batch_size", len(messages))
        else:
            self._describe(messages[0])
        if audits:
            self._decide(audits)

    def _describe(self, message: Message) -> None:
        if message.kind is Kind.RESPONSE or message.method is None:
            return
        method = message.method
        attributes: dict[str, Any] = {"mcp.method.name": method}
        if message.id is not None:
            attributes["jsonrpc.request.id"] = str(message.id)
        target_attribute = _TARGET_ATTRIBUTE.get(method)
        if target_attribute is not None and message.target is not None:
            attributes[target_attribute] = message.target
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
        self.span.set_attributes(attributes)  # one call: the SDK checks each call's values
        if method in _NAMED_TARGETS and message.target is not None:
            self._name = f"{method} {message.target}"
        else:
            self._name = method
        self.span.update_name(self._name)

    def _decide(self, audits: Sequence[Audit]) -> None:
        """The decision of the body: the first refused message's, else ``allow``."""
        outcome, rule = "allow", None
        for message, decision, verdict in audits:
            if message.kind is Kind.RESPONSE:
                continue
            if verdict != "allow":
                outcome, rule = verdict, decision.rule if decision is not None else None
                break
            if rule is None and decision is not None:
                rule = decision.rule
        attributes = {"mcp_sidecar.policy.decision": outcome}
        if rule is not None:
            attributes["mcp_sidecar.policy.rule"] = rule
        self.span.set_attributes(attributes)
        if outcome != "allow":
            self._decision = (outcome, rule)

    def refused(self, exc: SidecarError) -> None:
        """The sidecar answered ``exc`` itself (token, peer, upstream failure...)."""
        if isinstance(exc, TokenError):
            event = EVENT_TOKEN
        elif isinstance(exc, ProxyError) and exc.status in (502, 504):
            event = EVENT_UPSTREAM
        elif self._request.conn.rejection is not None or exc.reason == "no_peer":
            event = EVENT_PEER
        else:
            event = EVENT_REFUSED
        self._refusal = (event, exc)

    def upstream(self, headers: CIMultiDict[str], body: bytes) -> None:
        """The request is being forwarded with ``headers``: our span's context replaces the
        client's ``traceparent``/``tracestate`` in them."""
        if not self.mcp_done and self._request.method == "POST":
            self.mcp(body)
        for name in TRACE_HEADERS:
            headers.popall(name, None)
        self._factory.propagator.inject(headers, context=set_span_in_context(self.span, Context()))

    def finish(self, status: int, info: RequestInfo) -> None:
        """The answer is complete (or broke off): attributes, status, events; end the span."""
        span = self.span
        error_event, description = self._error(status, info)
        if span.is_recording():
            attributes: dict[str, Any] = {
                "http.response.status_code": status,
                "http.request.body.size": info.bytes_in,
                "http.response.body.size": info.bytes_out,
            }
            if info.peer is not None:
                attributes["mcp_sidecar.peer.spiffe_id"] = info.peer
            principal = info.principal
            if principal is not None:
                if principal.sub is not None:
                    attributes["mcp_sidecar.principal.sub"] = principal.sub
                if principal.token is not None:
                    attributes["mcp_sidecar.principal.token_layer"] = principal.token.layer
            if info.route is not None:
                attributes["mcp_sidecar.route"] = info.route
            if info.upstream is not None:
                attributes["mcp_sidecar.upstream"] = info.upstream
            if info.reason is not None:
                attributes["mcp_sidecar.reason"] = info.reason
            span.set_attributes(attributes)
            if error_event is not None:
                reason = info.reason or str(status)
                span.set_attribute("error.type", reason)
                span.add_event(error_event, {"mcp_sidecar.reason": reason, "message": description})
                span.set_status(Status(StatusCode.ERROR, description))
        span.end()

    def _error(self, status: int, info: RequestInfo) -> tuple[str | None, str]:
        """The event naming why the request failed (``None``: it did not), and a description."""
        if self._decision is not None:
            outcome, rule = self._decision
            what = f"{outcome} by rule {rule}" if rule else outcome
            return _DECISION_EVENTS.get(outcome, EVENT_REFUSED), what
        if self._refusal is not None:
            event, exc = self._refusal
            return event, exc.message
        if info.reason is not None and info.reason != "client_closed":
            return EVENT_UPSTREAM if info.reason.startswith("upstream") else EVENT_REFUSED, (
                info.reason
            )
        if status >= 500:
            return EVENT_UPSTREAM, f"HTTP {status}"
        return None, ""
