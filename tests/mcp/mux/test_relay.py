"""Routing client messages to targets and rewriting target messages for the client."""

from __future__ import annotations

from typing import Any

from sidecar.mcp.mux.names import Naming
from sidecar.mcp.mux.relay import (
    Routed,
    Unknown,
    Unroutable,
    answer_to_target,
    from_target,
    notification_targets,
    route,
)
from sidecar.mcp.mux.session import MuxSession, TargetSession

TWO = Naming(("math", "clock"), "multiple")


def session() -> MuxSession:
    return MuxSession("s", None, {}, {"math": TargetSession(), "clock": TargetSession()}, 0.0)


def test_calls_go_to_the_named_target_with_its_own_name() -> None:
    s = session()
    routed = route(TWO, s, "tools/call", {"name": "clock__now", "arguments": {"tz": "UTC"}})
    assert routed == Routed("clock", {"name": "now", "arguments": {"tz": "UTC"}})
    assert route(TWO, s, "prompts/get", {"name": "math__greet"}) == Routed(
        "math", {"name": "greet"}
    )
    assert route(TWO, s, "resources/read", {"uri": "math+file:///a"}) == Routed(
        "math", {"uri": "file:///a"}
    )
    completion = route(
        TWO,
        s,
        "completion/complete",
        {"ref": {"type": "ref/resource", "uri": "clock+time://zone/{tz}"}, "argument": {}},
    )
    assert completion == Routed(
        "clock", {"ref": {"type": "ref/resource", "uri": "time://zone/{tz}"}, "argument": {}}
    )


def test_unroutable_names_are_errors_never_a_guess() -> None:
    s = session()
    for method, params in (
        ("tools/call", {"name": "add"}),
        ("tools/call", {"name": "paint__add"}),
        ("tools/call", {"name": ""}),
        ("resources/read", {"uri": "file:///a"}),
        ("completion/complete", {"ref": {"type": "ref/other"}}),
        ("completion/complete", {}),
    ):
        assert isinstance(route(TWO, s, method, params), Unroutable), (method, params)


def test_never_mode_routes_by_the_owner_table() -> None:
    naming = Naming(("math", "clock"), "never")
    s = session()
    assert route(naming, s, "tools/call", {"name": "add"}) == Unknown("tool", "add")
    s.names.learn("tool", "math", ["add", "echo"])
    s.names.learn("tool", "clock", ["echo"])
    assert route(naming, s, "tools/call", {"name": "add"}) == Routed("math", {"name": "add"})
    ambiguous = route(naming, s, "tools/call", {"name": "echo"})
    assert isinstance(ambiguous, Unroutable) and ambiguous.reason == "ambiguous_name"


def test_server_requests_get_ids_that_never_collide() -> None:
    s = session()
    ask: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "elicitation/create",
        "params": {"message": "?", "_meta": {"progressToken": 9}},
    }
    a = from_target(ask, "math", s, TWO)
    b = from_target(ask, "clock", s, TWO)
    assert a["id"] != b["id"] and {a["method"], b["method"]} == {"elicitation/create"}
    # the client's answer goes back to its target with the target's own id
    answer = {"jsonrpc": "2.0", "id": b["id"], "result": {"action": "accept"}}
    assert answer_to_target(s, answer) == ("clock", {**answer, "id": 0})
    assert answer_to_target(s, answer) is None  # answered already
    assert answer_to_target(s, {"jsonrpc": "2.0", "id": 12345, "result": {}}) is None
    assert notification_targets(s, "notifications/progress", {"progressToken": 9}) == ("math",)


def test_a_targets_cancellation_names_the_clients_id() -> None:
    s = session()
    asked = from_target({"jsonrpc": "2.0", "id": "e1", "method": "roots/list"}, "clock", s, TWO)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "e1"}}
    assert from_target(cancel, "math", s, TWO) is None  # math never asked e1
    relayed = from_target(cancel, "clock", s, TWO)
    assert relayed["params"]["requestId"] == asked["id"]
    assert answer_to_target(s, {"jsonrpc": "2.0", "id": asked["id"], "result": {}}) is None


def test_client_cancellation_goes_to_the_target_of_the_request() -> None:
    s = session()
    s.started(7, ("clock",))
    s.started("list-1", ("math", "clock"))
    assert notification_targets(s, "notifications/cancelled", {"requestId": 7}) == ("clock",)
    assert notification_targets(s, "notifications/cancelled", {"requestId": "list-1"}) == (
        "math",
        "clock",
    )
    assert notification_targets(s, "notifications/cancelled", {"requestId": 8}) == ()
    assert notification_targets(s, "notifications/cancelled", {"requestId": True}) == ()
    assert notification_targets(s, "notifications/roots/list_changed", {}) == ("math", "clock")


def test_uris_in_answers_and_updates_are_mapped() -> None:
    s = session()
    read = {"jsonrpc": "2.0", "id": 1, "result": {"contents": [{"uri": "file:///a", "text": "x"}]}}
    assert (
        from_target(read, "math", s, TWO, "resources/read")["result"]["contents"][0]["uri"]
        == "math+file:///a"
    )
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "result": {
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "resource_link", "uri": "file:///b", "name": "b"},
                {"type": "resource", "resource": {"uri": "file:///c", "text": "c"}},
            ]
        },
    }
    content = from_target(call, "clock", s, TWO, "tools/call")["result"]["content"]
    assert [c.get("uri") or c.get("resource", {}).get("uri") for c in content] == [
        None,
        "clock+file:///b",
        "clock+file:///c",
    ]
    updated = {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"uri": "file:///a"},
    }
    assert from_target(updated, "math", s, TWO)["params"]["uri"] == "math+file:///a"


def test_list_changed_makes_the_owner_table_learn_again() -> None:
    s = session()
    s.names.learn("tool", "math", ["add"])
    note = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
    assert from_target(note, "math", s, TWO) == note
    assert s.names.owner("tool", "add") is None


def test_batches_and_junk() -> None:
    s = session()
    batch = [{"jsonrpc": "2.0", "method": "ping", "id": 1}, "junk"]
    out = from_target(batch, "math", s, TWO)
    assert len(out) == 1 and out[0]["method"] == "ping"
    assert from_target("junk", "math", s, TWO) is None
