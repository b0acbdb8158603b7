"""Cursors of merged lists are opaque and tamper-evident."""

from __future__ import annotations

import base64

import pytest

from sidecar.mcp.mux.cursor import CursorCodec, CursorError


def test_round_trip() -> None:
    codec = CursorCodec()
    cursor = codec.encode("s1", "tools/list", {"math": "p2", "clock": "abc"})
    assert codec.decode("s1", "tools/list", cursor) == {"math": "p2", "clock": "abc"}


def test_another_session_method_or_key_is_refused() -> None:
    codec = CursorCodec()
    cursor = codec.encode("s1", "tools/list", {"math": "p2"})
    for session, method in (("s2", "tools/list"), ("s1", "prompts/list")):
        with pytest.raises(CursorError):
            codec.decode(session, method, cursor)
    with pytest.raises(CursorError):
        CursorCodec().decode("s1", "tools/list", cursor)


def test_edited_or_forged_cursors_are_refused() -> None:
    codec = CursorCodec()
    cursor = codec.encode("s1", "tools/list", {"math": "p2"})
    payload, mac = cursor.split(".")
    forged = base64.urlsafe_b64encode(b'{"math":"p9"}').rstrip(b"=").decode()
    for bad in (
        f"{forged}.{mac}",
        payload,
        f"{payload}.",
        f"{payload}.AAAA",
        "not a cursor",
        "é.é",
        5,
        None,
        "x" * 20000,
    ):
        with pytest.raises(CursorError):
            codec.decode("s1", "tools/list", bad)
