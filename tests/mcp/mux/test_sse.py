"""Splitting target SSE streams into events, whatever the chunking and line ends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.mcp.mux.sse import SseError, SseReader, sse_event

STREAM = (
    b"\xef\xbb\xbf: comment\r\n"
    b'event: message\r\nid: 7\r\ndata: {"a":1}\r\n\r\n'
    b"retry: 10\n\n"
    b"data: line1\rdata:line2\r\r"
    b'data: {"b":2}\n\n'
    b"data: incomplete"
)


def read_all(chunks: list[bytes]) -> list[bytes]:
    reader = SseReader()
    events: list[bytes] = []
    for chunk in chunks:
        events += reader.feed(chunk)
    return events


def test_events_are_split_and_fields_dropped() -> None:
    assert read_all([STREAM]) == [b'{"a":1}', b"line1\nline2", b'{"b":2}']


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_chunking_does_not_change_the_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert read_all(chunks) == [b'{"a":1}', b"line1\nline2", b'{"b":2}']


def test_a_bom_later_in_the_stream_is_data() -> None:
    assert read_all([b"\n", b"\xef\xbb\xbfdata: x\n\n"]) == []  # not a data field any more
    assert read_all([b"\xef", b"\xbb\xbfdata: x\n\n"]) == [b"x"]


def test_oversized_events_are_refused() -> None:
    reader = SseReader(max_event=10)
    with pytest.raises(SseError):
        reader.feed(b"data: " + b"x" * 20 + b"\n")
    with pytest.raises(SseError):
        SseReader(max_event=10).feed(b"data: " + b"x" * 20)  # no line end yet


def test_written_events_read_back() -> None:
    assert SseReader().feed(sse_event(b'{"x":1}')) == [b'{"x":1}']
