"""MCP policy test helpers: the reference policy (admins may echo, users get the time, agents in
the trust domain add; nothing else), parsed tool calls, and the problems a bad policy gets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.config import ConfigErrors
from sidecar.mcp.jsonrpc import Message, parse_body
from sidecar.mcp.policy import parse_policy

REFERENCE: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {"name": "admins-echo", "when": {"roles": ["admin"]}, "tools": ["echo"]},
        {"name": "users-time", "when": {"roles": ["user"]}, "tools": ["get_time"]},
        {
            "name": "agents-add",
            "when": {"spiffe_ids": ["spiffe://example.org/ns/agents/**"]},
            "tools": ["add"],
        },
    ],
}


def call(tool: str, arguments: dict[str, Any] | None = None, *, id: int = 1) -> Message:
    """A parsed ``tools/call`` of ``tool``."""
    params: dict[str, Any] = {"name": tool}
    if arguments is not None:
        params["arguments"] = arguments
    body = {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params}
    return parse_body(json.dumps(body).encode()).messages[0]


def problems_of(data: object, path: str = "mcp_policy") -> dict[str, str]:
    """The problems ``parse_policy`` finds in ``data`` (it must refuse it), by key path."""
    with pytest.raises(ConfigErrors) as err:
        parse_policy(data, path=path)
    return {p.path: p.message for p in err.value.problems}
