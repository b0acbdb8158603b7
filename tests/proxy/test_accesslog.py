"""Access log: one JSON object per line, injection-proof, never raises."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import io
import json
import logging
import sys
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from sidecar.proxy import accesslog
from sidecar.proxy.accesslog import AccessLogger, AccessRecord, mcp_session_id, rfc3339
from sidecar.spiffe.ids import SpiffeId


def record(**overrides: Any) -> AccessRecord:
    typical = AccessRecord(
        direction="inbound",
        peer="spiffe://example.org/ns/agents/sa/agent",
        method="POST",
        path="/mcp",
        status=200,
        bytes_in=120,
        bytes_out=345,
        duration_ms=1.23456,
        mcp_session_id="sess-1",
    )
    return dataclasses.replace(typical, **overrides)


def test_rfc3339_utc_milliseconds() -> None:
    moment = dt.datetime(2025, 6, 18, 12, 34, 56, 789999, tzinfo=dt.UTC)
    assert rfc3339(moment) == "2025-06-18T12:34:56.789Z"
    plus2 = dt.timezone(dt.timedelta(hours=2))
    assert rfc3339(dt.datetime(2025, 1, 1, 2, 0, tzinfo=plus2)) == "2025-01-01T00:00:00.000Z"
    assert rfc3339(dt.datetime(2025, 1, 1)) == "2025-01-01T00:00:00.000Z"  # naive = UTC
    now = dt.datetime.fromisoformat(rfc3339())
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)


def test_one_json_object_per_line() -> None:
    out = io.StringIO()
    logger = AccessLogger(out)
    logger.log(record())
    logger.log(record(direction="outbound", route="math", upstream="https://math:8443", peer=None))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert out.getvalue().endswith("\n")
    first, second = (json.loads(line) for line in lines)
    assert list(first) == [
        "time",
        "kind",
        "direction",
        "peer",
        "method",
        "path",
        "status",
        "bytes_in",
        "bytes_out",
        "duration_ms",
        "mcp_session_id",
        "route",
        "reason",
        "upstream",
        "principal",
        "x_request_id",
        "trace_id",
        "span_id",
    ]
    assert first["kind"] == "access"
    assert first["x_request_id"] is None  # logged outside a request
    assert first["peer"] == "spiffe://example.org/ns/agents/sa/agent"
    assert first["duration_ms"] == 1.235
    assert first["mcp_session_id"] == "sess-1"
    assert first["route"] is None and first["reason"] is None
    assert first["time"].endswith("Z")
    assert second["route"] == "math" and second["upstream"] == "https://math:8443"
    assert second["peer"] is None and second["principal"] is None
    assert " " not in lines[0].replace("POST", "")  # compact separators
    assert logger.written == 2 and logger.errors == 0


@pytest.mark.parametrize(
    "path",
    [
        '/mcp\n{"status":200,"forged":true}',
        "/mcp\r\nX-Injected: 1",
        "/a\x1b[31mred\x00",
        "/line\u2028separator\u2029x\x85",
        "/lone\udcffsurrogate",
    ],
)
def test_injection_stays_on_one_line(path: str) -> None:
    out = io.StringIO()
    AccessLogger(out).log(record(path=path, mcp_session_id=path, reason=path))
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.isascii()
    assert all(ch >= " " for ch in text[:-1])
    assert text.splitlines() == [text[:-1]]
    decoded = json.loads(text)
    assert decoded["path"] == path and decoded["mcp_session_id"] == path


class BrokenStream(io.StringIO):
    def write(self, s: str) -> int:
        raise OSError("broken pipe")


def test_broken_or_closed_stream_never_raises() -> None:
    broken = AccessLogger(BrokenStream())
    broken.log(record())
    assert broken.errors == 1 and broken.written == 0

    closed = io.StringIO()
    closed.close()
    logger = AccessLogger(closed)
    logger.log(record())
    logger.log(record())
    assert logger.errors == 2

    class NotFlushable(io.StringIO):
        def flush(self) -> None:
            raise ValueError("nope")

    flaky = AccessLogger(NotFlushable())
    flaky.log(record())
    assert flaky.errors == 1


def test_ascii_only_stream_and_odd_values() -> None:
    raw = io.BytesIO()
    ascii_stream = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    logger = AccessLogger(ascii_stream)
    logger.log(record(path="/ünïcödé", duration_ms=float("nan")))
    assert logger.errors == 0
    ascii_stream.flush()
    line = json.loads(raw.getvalue().decode("ascii"))
    assert line["path"] == "/ünïcödé"
    assert line["duration_ms"] is None
    ascii_stream.detach()


def test_disabled_logger_writes_nothing() -> None:
    out = io.StringIO()
    logger = AccessLogger(out, enabled=False)
    logger.log(record())
    assert out.getvalue() == ""
    logger.enabled = True
    logger.log(record())
    assert out.getvalue().count("\n") == 1


def test_default_stream_is_stdout_at_write_time(capsys: pytest.CaptureFixture[str]) -> None:
    AccessLogger().log(record(path="/stdout"))
    captured = capsys.readouterr().out
    assert json.loads(captured)["path"] == "/stdout"


def test_mcp_session_id_lookup() -> None:
    assert mcp_session_id(CIMultiDict({"mcp-session-id": "abc"})) == "abc"
    assert mcp_session_id({"Mcp-Session-Id": "x"}) == "x"
    assert mcp_session_id({"mcp-session-id": "y"}) == "y"
    assert mcp_session_id({"Mcp-Session-Id": ""}) is None
    assert mcp_session_id({}) is None


def test_record_is_frozen() -> None:
    rec = record()
    with pytest.raises(AttributeError):
        rec.status = 500  # type: ignore[misc]


# Values a log line can hold: scalars, nested lists and string-keyed dicts, and objects that
# only ``default=str`` can render.
_log_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.builds(SpiffeId.parse, st.just("spiffe://example.org/ns/a/sa/b")),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


@given(st.dictionaries(st.text(), _log_values, max_size=6))
def test_encoder_writes_what_json_dumps_writes(data: dict[str, object]) -> None:
    expected = json.dumps(
        data, separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str
    )
    assert accesslog._to_json(data) == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [float("-inf")]])
def test_encoder_refuses_non_finite_numbers(bad: object) -> None:
    with pytest.raises(ValueError):
        accesslog._to_json({"x": bad})


def test_now_is_formatted_once_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1750250096.789999, 1750250096.001, 1750250097.5, 1750250097.9999996, 1750250098.25]
    monkeypatch.setattr(time, "time", lambda: clock.pop(0))  # the module accesslog reads
    expected = [dt.datetime.fromtimestamp(t, dt.UTC) for t in clock]
    assert [rfc3339() for _ in range(5)] == [rfc3339(moment) for moment in expected]
    assert expected[3].second == 58  # rounded up into the next second, as datetime does


async def loop_turns(count: int = 3) -> None:
    """Let the loop run a few times round (a zero-delay timer fires on the turn after next)."""
    for _ in range(count):
        await asyncio.sleep(0)


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


async def test_lines_within_the_flush_interval_are_written_together() -> None:
    out = CountingStream()
    logger = AccessLogger(out, flush_interval=0.0)
    for index in range(3):
        logger.log(record(path=f"/{index}"))
    assert (out.writes, out.flushes) == (0, 0)  # held, not a write per line...
    await loop_turns()
    assert (out.writes, out.flushes) == (1, 1)  # ...but one write when the interval is over
    assert [json.loads(line)["path"] for line in out.getvalue().splitlines()] == ["/0", "/1", "/2"]
    logger.log(record())
    await loop_turns()
    assert out.writes == 2 and logger.written == 4 and logger.errors == 0


async def test_held_lines_are_written_early_when_there_are_many() -> None:
    out = CountingStream()
    logger = AccessLogger(out, flush_interval=3600.0)
    for _ in range(accesslog.MAX_PENDING - 1):
        logger.log(record())
    assert out.writes == 0
    logger.log(record())
    assert out.writes == 1 and logger.written == accesslog.MAX_PENDING
    assert len(out.getvalue().splitlines()) == accesslog.MAX_PENDING


async def test_flush_pending_writes_before_the_interval_is_over() -> None:
    out = CountingStream()
    logger = AccessLogger(out, flush_interval=3600.0)
    logger.log(record(path="/held"))
    await loop_turns()
    assert out.getvalue() == ""  # held for the interval
    logger.flush_pending()
    assert json.loads(out.getvalue())["path"] == "/held" and out.flushes == 1
    assert AccessLogger().flush_interval == accesslog.FLUSH_INTERVAL


def test_outside_a_loop_every_line_is_flushed() -> None:
    out = CountingStream()
    logger = AccessLogger(out)
    logger.log(record())
    logger.log(record())
    assert out.flushes == 2


async def test_a_failing_deferred_write_counts_every_line_lost() -> None:
    class Unflushable(io.StringIO):
        def flush(self) -> None:
            raise OSError("disk full")

    logger = AccessLogger(Unflushable(), flush_interval=0.0)
    logger.log(record())
    logger.log(record())
    await loop_turns()
    assert (logger.written, logger.errors) == (0, 2)


def test_a_flush_left_pending_by_a_stopped_loop_does_not_stall_the_next_loop() -> None:
    out = CountingStream()
    logger = AccessLogger(out, flush_interval=0.0)

    async def log_then_stop() -> None:
        logger.log(record())
        asyncio.get_running_loop().stop()  # the loop ends with this turn, before the flush

    loop = asyncio.new_event_loop()
    loop.run_until_complete(log_then_stop())
    loop.close()
    flushes = out.flushes

    async def log_and_turn() -> None:
        logger.log(record())
        await loop_turns()

    asyncio.run(log_and_turn())
    assert out.flushes > flushes


def test_process_log_records_as_json_lines() -> None:
    formatter = accesslog.JsonLogFormatter()
    record = logging.LogRecord(
        "sidecar.runtime", logging.WARNING, __file__, 1, "x=%s", ("\n",), None
    )
    line = formatter.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["kind"] == "log" and data["level"] == "warning"
    assert data["logger"] == "sidecar.runtime" and data["message"] == "x=\n"
    assert data["time"].endswith("Z") and data["x_request_id"] is None
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(formatter.format(failed))["exception"]


async def test_process_log_lines_of_a_request_carry_its_ids() -> None:
    from sidecar.tracing.correlation import begin_request

    async def in_request() -> dict[str, object]:
        begin_request(CIMultiDict({"X-Request-Id": "req-1"}))
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
        line: dict[str, object] = json.loads(accesslog.JsonLogFormatter().format(record))
        return line

    data = await asyncio.create_task(in_request())
    assert data["x_request_id"] == "req-1" and data["trace_id"] is None
