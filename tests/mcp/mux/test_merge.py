"""Merging initialize results and list pages of several targets."""

from __future__ import annotations

from typing import Any

from sidecar.mcp.mux.merge import (
    AMBIGUOUS_META,
    LISTS,
    UNAVAILABLE_META,
    merge_initialize,
    merge_page,
)
from sidecar.mcp.mux.names import Naming
from sidecar.mcp.mux.session import OwnerTable

TWO = Naming(("math", "clock"), "multiple")


def ok(result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def test_initialize_merges_capabilities_versions_and_instructions() -> None:
    result = merge_initialize(
        TWO,
        {
            "math": {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {"listChanged": False}, "logging": {}},
                "instructions": "Adds numbers.",
                "serverInfo": {"name": "math-server"},
            },
            "clock": {
                "protocolVersion": "2025-06-18",
                "capabilities": {"resources": {"subscribe": True}, "completions": {}},
            },
        },
        {"paint": "connection refused"},
        client_version="2025-11-25",
        gateway_version="1.0",
    )
    assert result["protocolVersion"] == "2025-06-18"
    caps = result["capabilities"]
    assert caps["tools"] == {"listChanged": True}
    assert caps["resources"] == {"subscribe": True, "listChanged": True}
    assert caps["prompts"] == {"listChanged": True}  # a target may come back with prompts
    assert "logging" in caps and "completions" in caps
    assert result["serverInfo"]["name"] == "mcp-sidecar"
    assert "clock, math, paint" in result["serverInfo"]["title"]
    assert "[math]\nAdds numbers." in result["instructions"]
    assert "math__tool" in result["instructions"]
    assert result["_meta"][UNAVAILABLE_META] == [
        {"target": "paint", "reason": "connection refused"}
    ]


def test_initialize_never_answers_above_the_clients_version() -> None:
    answers = {"math": {"protocolVersion": "2099-01-01"}}
    result = merge_initialize(TWO, answers, {}, client_version="2025-06-18", gateway_version="1")
    assert result["protocolVersion"] == "2025-06-18"


def test_a_page_prefixes_names_maps_uris_and_keeps_cursors() -> None:
    tools = merge_page(
        "tools/list",
        TWO,
        {
            "math": ok({"tools": [{"name": "add", "inputSchema": {}}], "nextCursor": "m2"}),
            "clock": ok({"tools": [{"name": "now"}, {"name": 5}, "junk"]}),
        },
        {},
        OwnerTable(),
    )
    assert [t["name"] for t in tools.items] == ["math__add", "clock__now"]
    assert tools.items[0]["inputSchema"] == {}
    assert tools.positions == {"math": "m2"}
    assert tools.result(LISTS["tools/list"], "c")["nextCursor"] == "c"
    templates = merge_page(
        "resources/templates/list",
        TWO,
        {"clock": ok({"resourceTemplates": [{"uriTemplate": "time://zone/{tz}", "name": "t"}]})},
        {},
        OwnerTable(),
    )
    assert templates.items == [{"uriTemplate": "clock+time://zone/{tz}", "name": "t"}]


def test_failures_and_missing_methods() -> None:
    page = merge_page(
        "prompts/list",
        TWO,
        {
            "math": {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "nope"}},
            "clock": {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "boom"}},
        },
        {"paint": "timed out"},
        OwnerTable(),
    )
    assert page.items == []
    assert page.unavailable == {
        "clock": "answered prompts/list with an error: -32603 boom",
        "paint": "timed out",
    }
    shape = LISTS["prompts/list"]
    meta = page.result(shape, None)["_meta"][UNAVAILABLE_META]
    assert [m["target"] for m in meta] == ["clock", "paint"]
    bad = merge_page("tools/list", TWO, {"math": ok({"tools": {"add": 1}})}, {}, OwnerTable())
    assert bad.unavailable == {"math": "answered tools/list with a result of the wrong shape"}


def test_never_mode_leaves_out_names_two_targets_serve() -> None:
    naming = Naming(("math", "clock"), "never")
    owners = OwnerTable()
    page = merge_page(
        "tools/list",
        naming,
        {
            "math": ok({"tools": [{"name": "add"}, {"name": "echo"}]}),
            "clock": ok({"tools": [{"name": "echo"}, {"name": "now"}]}),
        },
        {},
        owners,
    )
    assert [t["name"] for t in page.items] == ["add", "now"]
    assert page.ambiguous == {"echo"}
    shape = LISTS["tools/list"]
    assert page.result(shape, None)["_meta"][AMBIGUOUS_META] == ["echo"]
    assert owners.owner("tool", "now") == "clock"
