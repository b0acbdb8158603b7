"""The demo's trace tree, from received spans (no sockets)."""

from __future__ import annotations

from sidecar.demo.otlp_receiver import ReceivedSpan
from sidecar.demo.trace_report import trace_lines

TRACE = "ab" * 16


def span(
    span_id: str, parent: str, name: str, service: str, start: int, **attrs: object
) -> ReceivedSpan:
    return ReceivedSpan(
        service,
        TRACE,
        span_id,
        parent,
        name,
        "server",
        dict(attrs),
        [],
        False,
        "",
        start,
        start + 2_000_000,
    )


def test_the_request_and_its_children_are_a_tree() -> None:
    spans = [
        span(
            "03",
            "02",
            "tools/call add",
            "inbound",
            3,
            **{"mcp_sidecar.peer.spiffe_id": "spiffe://td/a"},
        ),
        span("01", "ff", "tools/call add", "outbound", 1),
        span("02", "01", "tools/call add", "outbound", 2),
        span("09", "ff", "initialize", "outbound", 0),
        ReceivedSpan("x", "cd" * 16, "07", "", "tools/call add", "server", {}, [], False, ""),
    ]
    lines = trace_lines(spans, TRACE, "tools/call add")
    assert [line.split()[0] for line in lines[:3]] == ["outbound", "outbound", "inbound"]
    assert "peer=spiffe://td/a" in lines[2] and "2.00 ms" in lines[0]
    assert lines[3].startswith("  (+ 1 more spans")
    assert trace_lines(spans, TRACE, "tools/call nope")[0].startswith("  (no span named")
