"""The demo's trace: one tool call followed across both sidecars, printed as a tree.

Tracing is shown only when the ``tracing`` extra is installed (the SDK, and
``opentelemetry-proto`` for the in-process collector); the demo runs the same without it.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.demo.otlp_receiver import ReceivedSpan

SHOWN_ATTRIBUTES = {  # attribute -> how the line names it
    "mcp_sidecar.direction": "direction",
    "mcp_sidecar.route": "route",
    "mcp_sidecar.peer.spiffe_id": "peer",
    "mcp_sidecar.principal.sub": "sub",
    "mcp_sidecar.policy.decision": "decision",
    "jsonrpc.request.id": "jsonrpc.id",
    "http.response.status_code": "status",
}


def tracing_available() -> bool:
    """The SDK, its OTLP exporter and the protobuf definitions can be imported."""
    return all(
        importlib.util.find_spec(name) is not None
        for name in (
            "opentelemetry.sdk",
            "opentelemetry.exporter.otlp.proto.http",
            "opentelemetry.proto",
        )
    )


def new_traceparent() -> tuple[str, str]:
    """A sampled W3C ``traceparent`` as the agent would send it, and its trace id."""
    trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
    return f"00-{trace_id}-{span_id}-01", trace_id


def trace_lines(spans: Sequence[ReceivedSpan], trace_id: str, root_name: str) -> list[str]:
    """The spans of the request named ``root_name`` in ``trace_id`` (the topmost such span and
    everything under it), one line each, children indented under their parent."""
    in_trace = [s for s in spans if s.trace_id == trace_id]
    known = {s.span_id for s in in_trace}
    roots = sorted(
        (s for s in in_trace if s.name == root_name and s.parent_span_id not in known),
        key=lambda s: s.start_ns,
    )
    if not roots:
        return [f"  (no span named {root_name!r} in trace {trace_id})"]
    children: dict[str, list[ReceivedSpan]] = {}
    for span in in_trace:
        children.setdefault(span.parent_span_id, []).append(span)
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        details = "  ".join(
            f"{name}={span.attributes[key]}"
            for key, name in SHOWN_ATTRIBUTES.items()
            if key in span.attributes
        )
        status = " ERROR" if span.error else ""
        lines.append(
            f"  {'  ' * depth}{span.service:<15} {span.kind.upper():<6} {span.name:<18} "
            f"{span.duration_ms:7.2f} ms{status}  {details}"
        )
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            walk(child, depth + 1)

    walk(roots[0], 0)
    others = len(in_trace) - len(lines)
    if others > 0:
        lines.append(
            f"  (+ {others} more spans in this trace: the session's other requests, e.g. "
            "initialize, notifications/initialized, DELETE)"
        )
    return lines
