"""MCP policy: the reference scenario, deny-wins, argument constraints, always-allowed methods,
validation naming every problem's path, and property tests against encoding tricks."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.config import ConfigErrors
from sidecar.mcp.jsonrpc import TARGET_PARAM, JsonRpcError, Kind, Message, parse_body
from sidecar.mcp.policy import (
    FORBIDDEN_CODE,
    TARGET_KINDS,
    Decision,
    Policy,
    decide,
    decide_all,
    decide_each,
    denial_body,
    denial_response,
    load_policy_file,
    parse_policy,
    visibility,
    visible,
)
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.claims import Principal, VerifiedToken, freeze
from tests.mcp.policykit import REFERENCE, call, problems_of

TOOLS = ("add", "multiply", "echo", "get_time", "count_slowly")
AGENT_ID = "spiffe://example.org/ns/agents/sa/planner"
CONSOLE_ID = "spiffe://example.org/ns/ops/sa/console"


def principal(
    spiffe_id: str | None = None,
    *,
    sub: str | None = None,
    roles: tuple[str, ...] = (),
    groups: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
    claims: dict[str, Any] | None = None,
) -> Principal:
    token = None
    if sub is not None or roles or groups or scopes or claims:
        token = VerifiedToken(
            layer="oauth",
            subject=sub or "someone",
            issuer="https://auth.example.com",
            audience=("https://mcp.example.com/mcp",),
            expires_at=dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
            scopes=frozenset(scopes),
            roles=roles,
            groups=groups,
            claims=freeze(claims or {}),
        )
    sid = SpiffeId.parse(spiffe_id) if spiffe_id is not None else None
    return Principal(spiffe_id=sid, token=token)


ADMIN = principal(CONSOLE_ID, sub="alice", roles=("admin",))
USER = principal(CONSOLE_ID, sub="bob", roles=("user",))
AGENT = principal(AGENT_ID)


def request(method: str, params: dict[str, Any] | None = None, **extra: Any) -> Message:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if params is not None:
        body["params"] = params
    return parse_body(json.dumps(body).encode()).messages[0]


def allowed(policy: Policy, who: Principal, message: Message) -> bool:
    return decide(policy, who, message).allowed


# ----------------------------------------------------------------------- reference scenario


def test_reference_scenario_decisions() -> None:
    policy = parse_policy(REFERENCE)
    expected = {
        ADMIN: {"echo"},
        USER: {"get_time"},
        AGENT: {"add"},
    }
    for who, tools in expected.items():
        for tool in TOOLS:
            decision = decide(policy, who, call(tool))
            assert decision.allowed is (tool in tools), (who, tool)
    assert decide(policy, AGENT, call("add")) == Decision(True, "agents-add", "rule:agents-add")
    assert decide(policy, AGENT, call("multiply")) == Decision(False, None, "no rule allows")
    assert decide(policy, ADMIN, call("echo")).rule == "admins-echo"
    assert decide(policy, USER, call("get_time")).rule == "users-time"


def test_reference_scenario_visible_lists() -> None:
    policy = parse_policy(REFERENCE)
    for who, expected in ((ADMIN, ["echo"]), (USER, ["get_time"]), (AGENT, ["add"])):
        assert [t for t in TOOLS if visible(policy, who, "tool", t)] == expected
        allow = visibility(policy, who)
        assert [t for t in TOOLS if allow("tool", t)] == expected
    # an agent with an admin token gets both
    both = principal(AGENT_ID, sub="x", roles=("admin",))
    assert [t for t in TOOLS if visible(policy, both, "tool", t)] == ["add", "echo"]
    # roles come from the token: no token, no roles
    assert not any(visible(policy, principal(CONSOLE_ID), "tool", t) for t in TOOLS)


# --------------------------------------------------------------------------------- deny wins


def test_deny_wins_whatever_the_order() -> None:
    allow_all = {"name": "allow-all", "tools": ["*"]}
    deny_rm = {"name": "deny-rm", "effect": "deny", "tools": ["rm"]}
    allow_rm = {"name": "allow-rm", "tools": ["rm"]}
    for rules in itertools.permutations([allow_all, deny_rm, allow_rm]):
        policy = parse_policy({"default": "deny", "rules": list(rules)})
        assert decide(policy, AGENT, call("rm")) == Decision(False, "deny-rm", "rule:deny-rm")
        assert decide(policy, AGENT, call("add")) == Decision(True, "allow-all", "rule:allow-all")


def test_first_matching_allow_and_first_matching_deny_are_named() -> None:
    policy = parse_policy(
        {
            "default": "deny",
            "rules": [
                {"name": "b", "tools": ["a*"]},
                {"name": "a", "tools": ["add"]},
                {"name": "d2", "effect": "deny", "tools": ["rm*"]},
                {"name": "d1", "effect": "deny", "tools": ["rm"]},
            ],
        }
    )
    assert decide(policy, AGENT, call("add")).rule == "b"
    assert decide(policy, AGENT, call("rm")).rule == "d2"


def test_default_allow_with_deny_rule() -> None:
    policy = parse_policy(
        {
            "default": "allow",
            "rules": [
                {
                    "name": "no-rm-for-agents",
                    "effect": "deny",
                    "when": {"spiffe_ids": ["spiffe://example.org/ns/agents/*/*"]},
                    "tools": ["rm", "drop_*"],
                }
            ],
        }
    )
    assert decide(policy, AGENT, call("add")) == Decision(True, None, "default")
    assert decide(policy, AGENT, call("drop_table")).rule == "no-rm-for-agents"
    assert allowed(policy, ADMIN, call("rm"))  # the rule is only for agents
    assert not visible(policy, AGENT, "tool", "rm")
    assert visible(policy, AGENT, "tool", "add")
    assert visible(policy, ADMIN, "tool", "rm")


def test_deny_rules_also_match_normalised_names() -> None:
    policy = parse_policy(
        {"default": "allow", "rules": [{"name": "no-rm", "effect": "deny", "tools": ["rm"]}]}
    )
    for variant in ("rm", "RM", "Rm", "r\u200bm", "rm ", "r%6D", "r%256d", "\uff52\uff4d", "r\tm"):
        assert decide(policy, AGENT, call(variant)).rule == "no-rm", variant
        assert not visible(policy, AGENT, "tool", variant)
    assert allowed(policy, AGENT, call("rmdir"))


def test_allow_rules_match_names_exactly() -> None:
    policy = parse_policy({"default": "deny", "rules": [{"name": "a", "tools": ["get_*"]}]})
    assert allowed(policy, AGENT, call("get_time"))
    for variant in ("GET_time", "Get_time", "get", "xget_time", "get\u200b_time"):
        assert not allowed(policy, AGENT, call(variant)), variant


# ----------------------------------------------------------------------- argument constraints

ARGS_POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "add-small",
            "tools": ["add"],
            "arguments": {"a": {"min": -10, "max": 10}, "b": {"min": 0, "optional": True}},
        },
        {"name": "echo-text", "tools": ["echo"], "arguments": {"text": {"regex": "[a-z ]+"}}},
        {"name": "echo-short", "tools": ["shout"], "arguments": {"text": {"max_length": 5}}},
        {
            "name": "mode",
            "tools": ["run"],
            "arguments": {"mode": {"one_of": ["fast", "safe"]}, "unit": {"equals": 1}},
        },
        {"name": "flag", "tools": ["toggle"], "arguments": {"on": {"equals": True}}},
    ],
}


@pytest.mark.parametrize(
    ("tool", "arguments", "expected"),
    [
        ("add", {"a": 3, "b": 4}, True),
        ("add", {"a": 3}, True),  # b optional
        ("add", {"a": 10.0, "b": 0}, True),  # bounds inclusive, floats are numbers
        ("add", {"a": 11, "b": 1}, False),  # out of range
        ("add", {"a": -11}, False),
        ("add", {"b": 1}, False),  # a missing
        ("add", None, False),  # no arguments at all
        ("add", {"a": True}, False),  # a boolean is not a number
        ("add", {"a": "3"}, False),  # nor is a string
        ("add", {"a": 3, "b": -1}, False),
        ("echo", {"text": "hello world"}, True),
        ("echo", {"text": "hello world!"}, False),  # fullmatch, not search
        ("echo", {"text": "Hello"}, False),
        ("echo", {"text": ["hello"]}, False),  # wrong type
        ("echo", {"text": "a" * 5000}, False),  # beyond the regex input cap
        ("shout", {"text": "abcde"}, True),
        ("shout", {"text": "abcdef"}, False),
        ("run", {"mode": "fast", "unit": 1}, True),
        ("run", {"mode": "fast", "unit": 1.0}, True),  # 1.0 == 1 in JSON
        ("run", {"mode": "slow", "unit": 1}, False),
        ("run", {"mode": "fast", "unit": True}, False),  # true is not 1
        ("run", {"mode": "fast", "unit": "1"}, False),  # "1" is not 1
        ("toggle", {"on": True}, True),
        ("toggle", {"on": 1}, False),
    ],
)
def test_argument_constraints_on_allow_rules(
    tool: str, arguments: dict[str, Any] | None, expected: bool
) -> None:
    policy = parse_policy(ARGS_POLICY)
    assert allowed(policy, AGENT, call(tool, arguments)) is expected


@pytest.mark.parametrize(
    "pattern",
    [r"(a)\1", "(?=a)a", "(?<!a)b", "(?>a+)b", "a++", r"a\Z", "a{1000}{1000}"],
    ids=["backreference", "lookahead", "lookbehind", "atomic", "possessive", "Z", "too-large"],
)
def test_regexes_re2_cannot_compile_are_config_errors(pattern: str) -> None:
    rule = {"name": "r", "tools": ["t"], "arguments": {"x": {"regex": pattern}}}
    found = problems_of({"rules": [rule]})
    message = found["mcp_policy.rules[0].arguments.x.regex"]
    assert "invalid regular expression" in message
    assert "RE2 syntax" in message


def test_nested_quantifiers_match_in_linear_time() -> None:
    """``(a+)+$`` backtracks exponentially in a backtracking engine (Python's ``re`` would not
    finish on this input within the test timeout); RE2 answers at once, correctly."""
    rule = {"name": "r", "tools": ["t"], "arguments": {"x": {"regex": "(a+)+", "max_length": 99}}}
    policy = parse_policy({"default": "deny", "rules": [rule]})
    assert allowed(policy, AGENT, call("t", {"x": "a" * 64})) is True
    assert allowed(policy, AGENT, call("t", {"x": "a" * 64 + "!"})) is False


def test_regexes_match_unicode_text() -> None:
    rule = {"name": "r", "tools": ["t"], "arguments": {"x": {"regex": "[a-zé ]+"}}}
    policy = parse_policy({"default": "deny", "rules": [rule]})
    assert allowed(policy, AGENT, call("t", {"x": "café olé"})) is True
    assert allowed(policy, AGENT, call("t", {"x": "CAFÉ"})) is False


@pytest.mark.parametrize(
    ("arguments", "denied"),
    [
        ({"path": "/etc/passwd"}, True),
        ({"path": "/home/x"}, False),
        ({}, False),  # missing: the deny rule's constraint fails, so it does not fire
        ({"path": ["/etc/passwd"]}, True),  # wrong type: in doubt, deny
        ({"path": 42}, True),
        ({"path": "/etc/" + "x" * 5000}, True),  # too long to evaluate: deny
    ],
)
def test_argument_constraints_on_deny_rules(arguments: dict[str, Any], denied: bool) -> None:
    policy = parse_policy(
        {
            "default": "allow",
            "rules": [
                {
                    "name": "no-etc",
                    "effect": "deny",
                    "tools": ["write"],
                    "arguments": {"path": {"regex": "/etc/.*"}},
                }
            ],
        }
    )
    decision = decide(policy, AGENT, call("write", arguments))
    assert (not decision.allowed) is denied
    assert decision.rule == ("no-etc" if denied else None)
    # a deny rule with argument constraints does not hide the tool from lists
    assert visible(policy, AGENT, "tool", "write")


def test_optional_missing_argument_fires_a_deny_rule() -> None:
    policy = parse_policy(
        {
            "default": "allow",
            "rules": [
                {
                    "name": "need-limit",
                    "effect": "deny",
                    "tools": ["search"],
                    "arguments": {"limit": {"min": 101, "optional": True}},
                }
            ],
        }
    )
    assert not allowed(policy, AGENT, call("search", {}))
    assert not allowed(policy, AGENT, call("search", {"limit": 500}))
    assert allowed(policy, AGENT, call("search", {"limit": 10}))


def test_visible_ignores_allow_argument_constraints() -> None:
    policy = parse_policy(ARGS_POLICY)
    assert visible(policy, AGENT, "tool", "add")
    assert not visible(policy, AGENT, "tool", "multiply")


# ---------------------------------------------------------------------- principal matching


def test_principal_conditions() -> None:
    policy = parse_policy(
        {
            "default": "deny",
            "rules": [
                {"name": "by-sub", "when": {"sub": ["alice"]}, "tools": ["t1"]},
                {"name": "by-scopes", "when": {"scopes": ["mcp:a", "mcp:b"]}, "tools": ["t2"]},
                {"name": "by-group", "when": {"groups": ["ops", "sre"]}, "tools": ["t3"]},
                {
                    "name": "by-claims",
                    "when": {"claims": {"tenant": "acme", "level": [2, 3], "mfa": True}},
                    "tools": ["t4"],
                },
                {
                    "name": "and",
                    "when": {"spiffe_ids": [CONSOLE_ID], "roles": ["admin"]},
                    "tools": ["t5"],
                },
            ],
        }
    )
    assert allowed(policy, principal(sub="alice"), call("t1"))
    assert not allowed(policy, principal(sub="mallory"), call("t1"))
    assert not allowed(policy, principal(AGENT_ID), call("t1"))  # no token, no sub
    assert allowed(policy, principal(sub="x", scopes=("mcp:a", "mcp:b", "c")), call("t2"))
    assert not allowed(policy, principal(sub="x", scopes=("mcp:a",)), call("t2"))
    assert allowed(policy, principal(sub="x", groups=("sre",)), call("t3"))
    assert not allowed(policy, principal(sub="x", groups=("dev",)), call("t3"))
    good = {"tenant": "acme", "level": 3, "mfa": True}
    assert allowed(policy, principal(sub="x", claims=good), call("t4"))
    for bad in (
        {**good, "tenant": "evil"},
        {**good, "level": 1},
        {**good, "level": "3"},
        {**good, "mfa": 1},
        {"tenant": "acme", "level": 2},
        {**good, "tenant": ["acme"]},
    ):
        assert not allowed(policy, principal(sub="x", claims=bad), call("t4")), bad
    assert allowed(policy, principal(CONSOLE_ID, sub="x", roles=("admin",)), call("t5"))
    assert not allowed(policy, principal(AGENT_ID, sub="x", roles=("admin",)), call("t5"))
    assert not allowed(policy, principal(CONSOLE_ID, sub="x", roles=("user",)), call("t5"))


def test_resources_prompts_and_method_rules() -> None:
    policy = parse_policy(
        {
            "default": "deny",
            "rules": [
                {"name": "docs", "resources": ["file:///docs/*"]},
                {"name": "summary", "prompts": ["summar*"]},
                {"name": "complete", "methods": ["completion/complete", "logging/setLevel"]},
                {"name": "read-only", "methods": ["resources/read"], "resources": ["db://*"]},
            ],
        }
    )
    assert allowed(policy, AGENT, request("resources/read", {"uri": "file:///docs/a"}, id=1))
    assert allowed(policy, AGENT, request("resources/subscribe", {"uri": "file:///docs/a"}, id=1))
    assert not allowed(policy, AGENT, request("resources/read", {"uri": "file:///etc/x"}, id=1))
    assert allowed(policy, AGENT, request("resources/read", {"uri": "db://t"}, id=1))
    assert not allowed(policy, AGENT, request("resources/subscribe", {"uri": "db://t"}, id=1))
    assert allowed(policy, AGENT, request("prompts/get", {"name": "summarise"}, id=1))
    assert not allowed(policy, AGENT, request("prompts/get", {"name": "other"}, id=1))
    assert allowed(policy, AGENT, request("completion/complete", {}, id=1))
    assert not allowed(policy, AGENT, request("tasks/list", {}, id=1))
    assert not allowed(policy, AGENT, request("custom/thing", id=1))
    assert visible(policy, AGENT, "resource", "file:///docs/{name}")  # a template
    assert not visible(policy, AGENT, "resource", "file:///etc/{name}")
    assert visible(policy, AGENT, "prompt", "summarise")
    assert not visible(policy, AGENT, "tool", "add")


def test_a_rule_without_actions_covers_every_method() -> None:
    policy = parse_policy(
        {
            "default": "deny",
            "rules": [
                {"name": "admins", "when": {"roles": ["admin"]}},
                {"name": "no-agents", "effect": "deny", "when": {"spiffe_ids": [AGENT_ID]}},
            ],
        }
    )
    assert allowed(policy, ADMIN, call("anything"))
    assert allowed(policy, ADMIN, request("custom/thing", id=1))
    assert visible(policy, ADMIN, "resource", "file:///x")
    agent_admin = principal(AGENT_ID, sub="x", roles=("admin",))
    assert decide(policy, agent_admin, call("add")).rule == "no-agents"
    # ...but the always-allowed methods stay allowed
    assert allowed(policy, agent_admin, request("ping", id=1))


# -------------------------------------------------------------------- always-allowed methods


def test_always_allowed_methods_and_lists() -> None:
    deny_all = parse_policy(
        {"default": "deny", "rules": [{"name": "nothing", "effect": "deny", "tools": ["*"]}]}
    )
    always = [
        request("initialize", {"protocolVersion": "2025-06-18"}, id=1),
        request("ping", id=2),
        request("ping"),
        request("notifications/initialized"),
        request("notifications/cancelled", {"requestId": 1}),
        parse_body(b'{"jsonrpc":"2.0","id":7,"result":{}}').messages[0],
        parse_body(b'{"jsonrpc":"2.0","id":8,"error":{"code":1,"message":"x"}}').messages[0],
    ]
    for message in always:
        assert decide(deny_all, AGENT, message) == Decision(True, None, "always_allowed")
    for method in ("tools/list", "resources/list", "resources/templates/list", "prompts/list"):
        assert decide(deny_all, AGENT, request(method, id=1)) == Decision(
            True, None, "list_filtered"
        )
    # a notifications/* *request* (with an id) is not a notification: the rules decide
    assert not allowed(deny_all, AGENT, request("notifications/initialized", id=3))
    # a tools/call without id is still a tool call
    assert not allowed(deny_all, AGENT, request("tools/call", {"name": "add"}))


@pytest.mark.parametrize(
    "method",
    [
        "Tools/Call",
        "TOOLS/CALL",
        "tools/Call",
        "tools/call ",
        " tools/call",
        "tools/\u200bcall",
        "\uff54ools/call",
        "Initialize",
        "PING",
        "Tools/List",
        "Notifications/initialized",
        "Resources/Read",
    ],
)
def test_case_and_invisible_variants_of_mcp_methods_are_denied(method: str) -> None:
    allow_all = parse_policy({"default": "allow", "rules": [{"name": "everything"}]})
    message = request(method, {"name": "add", "uri": "file:///x"}, id=1)
    assert decide(allow_all, AGENT, message) == Decision(False, None, "ambiguous_method")


# ------------------------------------------------------------------------- batches, answers


def test_batches_are_denied_if_any_element_is() -> None:
    policy = parse_policy(REFERENCE)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}},
        {"jsonrpc": "2.0", "method": "notifications/progress", "params": {}},
        {"jsonrpc": "2.0", "id": "two", "method": "tools/call", "params": {"name": "multiply"}},
        {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "multiply"}},
        {"jsonrpc": "2.0", "id": 9, "result": {}},
    ]
    parsed = parse_body(json.dumps(batch).encode())
    decisions = decide_each(policy, AGENT, parsed)
    assert [d.allowed for d in decisions] == [True, True, False, False, True]
    assert decide_all(policy, AGENT, parsed) == Decision(False, None, "no rule allows")
    body = denial_body(parsed, decisions)
    assert isinstance(body, list)
    assert [e["id"] for e in body] == [1, "two"]  # requests only
    assert all(e["error"]["code"] == FORBIDDEN_CODE for e in body)
    assert body[0]["error"]["data"] == {"rule": None, "reason": "batch_denied"}
    assert "element 2" in body[0]["error"]["message"]
    assert body[1]["error"]["data"] == {"rule": None, "reason": "no rule allows"}

    fine = parse_body(json.dumps([batch[0], batch[1]]).encode())
    assert decide_all(policy, AGENT, fine) == Decision(True, "agents-add", "rule:agents-add")
    assert denial_body(fine, decide_each(policy, AGENT, fine)) is None


def test_denial_response_shape() -> None:
    by_rule = denial_response(5, Decision(False, "no-rm", "rule:no-rm"))
    assert by_rule == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {
            "code": -32001,
            "message": "Forbidden by policy: rule 'no-rm'",
            "data": {"rule": "no-rm", "reason": "rule:no-rm"},
        },
    }
    by_default = denial_response("a", Decision(False, None, "no rule allows"))
    assert by_default["error"]["message"] == "Forbidden by policy: no rule allows this call"
    policy = parse_policy(REFERENCE)
    note = parse_body(b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"x"}}')
    assert denial_body(note, decide_each(policy, AGENT, note)) is None
    single = parse_body(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x"}}')
    answer = denial_body(single, decide_each(policy, AGENT, single))
    assert isinstance(answer, dict) and answer["id"] == 3


def test_target_methods_agree_with_the_parser() -> None:
    assert set(TARGET_KINDS) == set(TARGET_PARAM)


# ---------------------------------------------------------------------------------- validation


def test_every_problem_is_reported_with_its_path() -> None:
    found = problems_of(
        {
            "default": "deny",
            "rules": [
                {"name": "a", "tool": ["add"]},
                {"name": "b", "when": {"spiffe_ids": ["spiffe://example.org/a", "spiffe://x/b*"]}},
                {"name": "a", "tools": ["x"]},
                {"tools": ["y"]},
                {"name": "bad name!", "effect": "permit"},
                {"name": "args", "tools": ["t"], "arguments": {"x": {"min": 5, "max": 1}}},
                {"name": "re", "tools": ["t"], "arguments": {"x": {"regex": "("}}},
                {"name": "backref", "tools": ["t"], "arguments": {"x": {"regex": r"(a)\1"}}},
                {"name": "nocheck", "tools": ["t"], "arguments": {"x": {"optional": True}}},
                {"name": "noargs", "arguments": {"x": {"equals": 1}}},
                {"name": "res-args", "resources": ["*"], "arguments": {"x": {"equals": 1}}},
                {"name": "case", "methods": ["Tools/Call"]},
                {"name": "list", "methods": ["tools/list", "ping"]},
                {"name": "mixed", "methods": ["resources/read"], "tools": ["*"]},
                {"name": "empty", "when": {"roles": []}},
                {"name": "claims", "when": {"claims": {"tenant": None}}},
                {"name": "boolnum", "tools": ["t"], "arguments": {"x": {"max": True}}},
            ],
        },
        path="inbound.mcp_policy",
    )
    p = "inbound.mcp_policy.rules"
    assert "did you mean 'tools'?" in found[f"{p}[0].tool"]
    assert "wildcard must be a whole segment" in found[f"{p}[1].when.spiffe_ids[1]"]
    assert "duplicate rule name 'a'" in found[f"{p}[2].name"]
    assert "required" in found[f"{p}[3].name"]
    assert "got string 'bad name!'" in found[f"{p}[4].name"]
    assert "did you mean 'deny'" not in found[f"{p}[4].effect"]
    assert "expected 'allow' or 'deny'" in found[f"{p}[4].effect"]
    assert "greater than max" in found[f"{p}[5].arguments.x.min"]
    assert "invalid regular expression" in found[f"{p}[6].arguments.x.regex"]
    assert "RE2 syntax: no backreferences" in found[f"{p}[7].arguments.x.regex"]
    assert "no check given" in found[f"{p}[8].arguments.x"]
    assert "tools/call and/or prompts/get" in found[f"{p}[9].arguments"]
    assert "tools/call and/or prompts/get" in found[f"{p}[10].arguments"]
    assert "did you mean 'tools/call'" in found[f"{p}[11].methods[0]"]
    assert "always allowed" in found[f"{p}[12].methods[0]"]
    assert "always allowed" in found[f"{p}[12].methods[1]"]
    assert "add resources: ['*']" in found[f"{p}[13].methods[0]"]
    assert "must not be empty" in found[f"{p}[14].when.roles"]
    assert "expected a string, number or boolean" in found[f"{p}[15].when.claims.tenant"]
    assert "expected a number, got boolean true" in found[f"{p}[16].arguments.x.max"]
    assert len(found) == 19


def test_top_level_problems() -> None:
    assert "required" in problems_of({})["mcp_policy.default"]
    assert "did you mean 'deny'?" in problems_of({"default": "dny"})["mcp_policy.default"]
    assert "expected a mapping" in problems_of(None)["mcp_policy"]
    assert (
        "expected a list of rules"
        in problems_of({"default": "deny", "rules": {}})["mcp_policy.rules"]
    )
    found = problems_of({"default": "deny", "rulez": []})
    assert "did you mean 'rules'?" in found["mcp_policy.rulez"]


def test_minimal_policies() -> None:
    assert parse_policy({"default": "deny"}) == Policy("deny", ())
    assert parse_policy({"default": "allow", "rules": None}) == Policy("allow", ())


def test_load_policy_file(tmp_path: Path) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text(
        "default: deny\nrules:\n  - name: a\n    tools: [add]\n    effect: allow\n"
        "    arguments: {a: {optional: true, max: 3}}\n"
    )
    policy = load_policy_file(good)
    assert policy.rules[0].name == "a" and allowed(policy, AGENT, call("add", {"a": 1}))
    dup = tmp_path / "dup.yaml"
    dup.write_text("default: deny\ndefault: allow\n")
    with pytest.raises(ConfigErrors) as err:
        load_policy_file(dup)
    assert "duplicate key 'default'" in str(err.value)
    yes = tmp_path / "yes.yaml"
    yes.write_text(
        "default: deny\nrules:\n"
        "  - {name: a, tools: [t], arguments: {x: {optional: yes, equals: 1}}}\n"
    )
    with pytest.raises(ConfigErrors) as err:
        load_policy_file(yes)
    assert err.value.problems[0].path.endswith("rules[0].arguments.x.optional")
    with pytest.raises(ConfigErrors):
        load_policy_file(tmp_path / "missing.yaml")


# ------------------------------------------------------------------ property: encoding tricks

DENY_DEFAULT = parse_policy(REFERENCE)  # the agent may call add, never multiply
ALLOW_DEFAULT = parse_policy(
    {"default": "allow", "rules": [{"name": "no-rm", "effect": "deny", "tools": ["rm"]}]}
)


def _escape(text: str, mask: list[bool], upper: bool) -> str:
    out = []
    for ch, escape in zip(text, itertools.chain(mask, itertools.repeat(False)), strict=False):
        if escape:
            code = f"{ord(ch):04x}"
            out.append("\\u" + (code.upper() if upper else code))
        else:
            out.append(json.dumps(ch)[1:-1])
    return "".join(out)


@st.composite
def tricky_denied_body(draw: st.DrawFn) -> tuple[Policy, Principal, bytes]:
    scenario = draw(st.sampled_from(["deny-default", "allow-default"]))
    policy, who, denied, harmless = (
        (DENY_DEFAULT, AGENT, "multiply", "add")
        if scenario == "deny-default"
        else (ALLOW_DEFAULT, AGENT, "rm", "add")
    )
    name = denied
    if scenario == "allow-default":
        # variants a normalising server might read as "rm"
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        name = "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
        insert = draw(st.sampled_from(["", "\u200b", "\u00ad", " ", "\t", "%00"]))
        name = name[0] + insert + name[1:]
        if draw(st.booleans()):
            name = "".join(f"%{ord(c):02X}" if c.isalpha() else c for c in name)
        if draw(st.booleans()):
            name = "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalpha() else c for c in name)
    else:
        flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
        name = "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))
    method = "tools/call"
    if draw(st.booleans()):
        flips = draw(st.lists(st.booleans(), min_size=len(method), max_size=len(method)))
        method = "".join(c.upper() if f else c for c, f in zip(method, flips, strict=True))
        method += draw(st.sampled_from(["", " ", "\u200b", "\n"]))
    ws = draw(st.sampled_from(["", " ", "\n", "\t", " \r\n "]))

    def esc(text: str) -> str:
        mask = draw(st.lists(st.booleans(), max_size=len(text)))
        return '"' + _escape(text, mask, draw(st.booleans())) + '"'

    id_text = draw(
        st.sampled_from(
            ["1", "0", "-1", '"1"', '"x"', str(2**63 - 1), str(2**63), "1.0", "1e2", "null", "true"]
        )
    )
    name_pairs = [f"{esc('name')}:{ws}{esc(name)}"]
    duplicate = draw(st.sampled_from(["none", "before", "after"]))
    if duplicate == "before":
        name_pairs.insert(0, f"{esc('name')}:{esc(harmless)}")
    elif duplicate == "after":
        name_pairs.append(f"{esc('name')}:{esc(harmless)}")
    params = "{" + f",{ws}".join(name_pairs) + "}"
    pairs = [
        f"{esc('jsonrpc')}:{ws}{esc('2.0')}",
        f"{esc('id')}:{ws}{id_text}",
        f"{esc('method')}:{ws}{esc(method)}",
        f"{esc('params')}:{ws}{params}",
    ]
    order = draw(st.permutations(pairs))
    message = "{" + ws + f",{ws}".join(order) + ws + "}"
    if draw(st.booleans()):
        allowed_call = json.dumps(
            {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {"name": harmless}}
        )
        before = draw(st.integers(0, 2))
        after = draw(st.integers(0, 2))
        message = "[" + ",".join([allowed_call] * before + [message] + [allowed_call] * after) + "]"
    return policy, who, message.encode()


@settings(max_examples=600, deadline=None)
@given(tricky_denied_body())
def test_no_encoding_trick_lets_a_denied_tool_through(
    case: tuple[Policy, Principal, bytes],
) -> None:
    policy, who, body = case
    try:
        parsed = parse_body(body)
    except JsonRpcError:
        return
    assert not decide_all(policy, who, parsed).allowed, body


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_parser_and_policy_raise_only_typed_errors(body: bytes) -> None:
    try:
        parsed = parse_body(body)
    except JsonRpcError:
        return
    for policy in (DENY_DEFAULT, ALLOW_DEFAULT):
        decide_all(policy, AGENT, parsed)


names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
)


@settings(max_examples=300, deadline=None)
@given(names)
def test_visible_agrees_with_decide_for_unconditional_rules(name: str) -> None:
    for policy in (DENY_DEFAULT, ALLOW_DEFAULT):
        for who in (ADMIN, USER, AGENT):
            message = Message(Kind.REQUEST, "tools/call", 1, name, None, None)
            assert visible(policy, who, "tool", name) is decide(policy, who, message).allowed


def test_dry_run_is_read_strictly() -> None:
    assert parse_policy({"default": "deny"}).dry_run is False
    assert parse_policy({"default": "deny", "dry_run": True}).dry_run is True
    assert parse_policy({"default": "allow", "dry_run": False}).dry_run is False
    assert problems_of({"default": "deny", "dry_run": "yes"}) == {
        "mcp_policy.dry_run": "mcp_policy.dry_run: expected true or false, got string 'yes'"
    }
    assert problems_of({"default": "deny", "dryrun": True}) == {
        "mcp_policy.dryrun": "mcp_policy.dryrun: unknown key 'dryrun'; did you mean 'dry_run'?"
    }
