"""Request ids and W3C trace ids for log correlation (pure)."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from sidecar.tracing.correlation import (
    REQUEST_ID_HEADER,
    begin_request,
    current,
    current_request_id,
    current_trace_id,
    trace_id_of,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f"00-{TRACE}-00f067aa0ba902b7-00", TRACE),  # not sampled: still the trace
        (f"01-{TRACE}-00f067aa0ba902b7-01-future", TRACE),  # a later version may add fields
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),  # version 00 may not
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-00f067aa0ba902b7", None),
        ("", None),
        (None, None),
    ],
)
def test_trace_id_of(header: str | None, trace_id: str | None) -> None:
    assert trace_id_of(header) == trace_id


async def test_a_valid_request_id_is_kept_anything_else_replaced() -> None:
    async def settle(*values: str) -> tuple[str, list[str]]:
        headers: CIMultiDict[str] = CIMultiDict((REQUEST_ID_HEADER, v) for v in values)
        correlation = begin_request(headers)
        return correlation.request_id, headers.getall(REQUEST_ID_HEADER)

    assert await asyncio.create_task(settle("abc-123")) == ("abc-123", ["abc-123"])
    for bad in [(), ("a", "b"), ("x" * 129,), ("has space",), ("",), ("caf\u00e9",)]:
        request_id, forwarded = await asyncio.create_task(settle(*bad))
        assert forwarded == [request_id] and len(request_id) == 32
        assert request_id not in bad
    first, _ = await asyncio.create_task(settle())
    second, _ = await asyncio.create_task(settle())
    assert first != second


async def test_each_request_task_sees_its_own_ids() -> None:
    async def serve(request_id: str, traceparent: str | None) -> tuple[str | None, str | None]:
        headers = CIMultiDict({REQUEST_ID_HEADER: request_id})
        if traceparent:
            headers["traceparent"] = traceparent
        begin_request(headers)
        await asyncio.sleep(0)  # the other request runs in between
        return current_request_id(), current_trace_id()

    results = await asyncio.gather(
        serve("one", f"00-{TRACE}-00f067aa0ba902b7-01"), serve("two", None)
    )
    assert list(results) == [("one", TRACE), ("two", None)]
    assert current() is None  # outside a request


def test_our_span_replaces_the_clients_trace() -> None:
    async def run() -> tuple[str | None, str | None]:
        correlation = begin_request(CIMultiDict(traceparent=f"00-{TRACE}-00f067aa0ba902b7-01"))
        correlation.set_span("a" * 32, "b" * 16)
        return correlation.trace_id, correlation.span_id

    assert asyncio.run(run()) == ("a" * 32, "b" * 16)
