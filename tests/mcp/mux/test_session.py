"""The session table: bounded, idle expiry, bound to its owner; per-session id tables."""

from __future__ import annotations

from sidecar.mcp.mux.session import (
    MuxSession,
    OwnerTable,
    ServerRequests,
    SessionTable,
    TargetSession,
    new_session_id,
)


def session(sid: str, owner: str | None = None, now: float = 0.0) -> MuxSession:
    return MuxSession(sid, owner, {}, {"math": TargetSession()}, last_used=now)


def test_session_ids_are_unguessable_and_visible_ascii() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) >= 43 and i.isascii() and i.isprintable() for i in ids)


def test_least_recently_used_session_is_pushed_out() -> None:
    table = SessionTable(max_sessions=2, idle=60)
    assert table.add(session("a")) == []
    assert table.add(session("b")) == []
    assert table.get("a", None, now=1.0) is not None  # a is now the most recent
    evicted = table.add(session("c"))
    assert [s.id for s in evicted] == ["b"]
    assert table.get("b", None, now=1.0) is None
    assert len(table) == 2


def test_idle_sessions_expire() -> None:
    table = SessionTable(max_sessions=10, idle=60)
    table.add(session("a", now=0.0))
    table.add(session("b", now=50.0))
    assert table.get("a", None, now=61.0) is None  # expired, even before the sweep
    assert [s.id for s in table.expire(now=61.0)] == ["a"]
    assert table.get("b", None, now=61.0) is not None


def test_a_session_is_only_its_owners() -> None:
    table = SessionTable(max_sessions=10, idle=60)
    table.add(session("a", owner="sub:alice"))
    assert table.get("a", "sub:mallory", now=1.0) is None
    assert table.get("a", None, now=1.0) is None
    assert table.get("a", "sub:alice", now=1.0) is not None


def test_server_request_ids_never_collide_and_map_back() -> None:
    requests = ServerRequests(limit=3)
    first = requests.add("math", 0, progress_token="tok")
    second = requests.add("clock", 0)
    assert first != second
    assert requests.gateway_id("clock", 0) == second
    assert requests.gateway_id("clock", "0") is None  # ids compare by type too
    assert requests.target_of_progress("tok") == "math"
    taken = requests.take(first)
    assert taken is not None and (taken.target, taken.original_id) == ("math", 0)
    assert requests.take(first) is None  # answered once
    assert requests.take(True) is None
    for n in range(5):
        requests.add("math", n)
    assert len(requests) == 3  # bounded: the oldest were forgotten
    assert requests.take(second) is None


def test_target_retry_backs_off() -> None:
    target = TargetSession()
    target.failed("down", now=10.0)
    assert not target.may_try(10.1) and target.may_try(10.5)
    target.failed("down", now=10.5)
    assert not target.may_try(11.0) and target.may_try(11.5)
    target.initialized("sid", "2025-11-25", {})
    assert target.ready and target.may_try(0.0) and target.reason is None


def test_owner_table_marks_names_two_targets_serve() -> None:
    table = OwnerTable()
    assert table.learn("tool", "math", ["add", "echo"]) == set()
    assert table.learn("tool", "clock", ["echo", "now"]) == {"echo"}
    assert table.owner("tool", "add") == "math"
    assert table.owner("tool", "echo") is None and table.is_ambiguous("tool", "echo")
    assert table.learn("tool", "math", ["echo"]) == {"echo"}
    assert table.owner("prompt", "add") is None
    table.forget("tool")
    assert table.owner("tool", "add") is None and not table.is_ambiguous("tool", "echo")


def test_in_flight_requests_are_bounded() -> None:
    s = session("a")
    for n in range(2000):
        s.started(n, ("math",))
    assert len(s.in_flight) == 1024 and 1999 in s.in_flight and 0 not in s.in_flight
    s.finished(1999)
    assert 1999 not in s.in_flight


def test_a_slow_target_keeps_its_session_and_recovers() -> None:
    target = TargetSession()
    target.initialized("sid", "2025-11-25", {})
    target.failed("no answer within 1s", now=5.0, keep_session=True)
    # one tuple: asserting "not target.available" alone would narrow the property for mypy
    assert (target.ready, target.session_id, target.available) == (True, "sid", False)
    assert not target.may_try(5.2)
    assert target.recovered() and target.available and target.may_try(5.2)
    assert not target.recovered()  # nothing to recover from
    target.failed("connection refused", now=6.0)
    assert not target.ready and target.session_id is None
