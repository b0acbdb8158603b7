"""MCP policy on delegated tokens (RFC 8693): user and actor together, actors outside the
trust domain, delegated or not; list filtering follows the same rules."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sidecar.mcp.policy import Policy, decide, parse_policy, visible
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.claims import Principal, VerifiedToken
from tests.mcp.policykit import call, problems_of

AGENT = "spiffe://example.org/ns/agents/sa/agent"
PLANNER = "spiffe://example.org/ns/agents/sa/planner"
FOREIGN = "spiffe://partner.example/ns/agents/sa/agent"

POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "bob-via-agent",
            "when": {"sub": ["bob"], "actor": [AGENT]},
            "tools": ["create_issue"],
        },
        {"name": "bob-himself", "when": {"sub": ["bob"], "delegated": False}, "tools": ["echo"]},
        {"name": "users-read", "when": {"sub": ["bob", "carol"]}, "tools": ["read_issue"]},
        {
            "name": "no-foreign-actors",
            "effect": "deny",
            "when": {"actors_outside": ["spiffe://example.org"]},
        },
        {"name": "client-app", "when": {"actor": ["console-app"]}, "tools": ["get_time"]},
    ],
}


def delegated(sub: str, *actors: str) -> Principal:
    token = VerifiedToken(
        layer="oauth",
        subject=sub,
        issuer="https://sts.example.com",
        audience=("https://mcp.example.com/mcp",),
        expires_at=dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
        actors=actors,
    )
    peer = actors[0] if actors and actors[0].startswith("spiffe://") else PLANNER
    return Principal(spiffe_id=SpiffeId.parse(peer), token=token)


@pytest.fixture
def policy() -> Policy:
    return parse_policy(POLICY)


def allowed(policy: Policy, who: Principal, tool: str) -> bool:
    return decide(policy, who, call(tool)).allowed


def test_user_and_actor_decide_together(policy: Policy) -> None:
    assert allowed(policy, delegated("bob", AGENT), "create_issue")
    assert not allowed(policy, delegated("carol", AGENT), "create_issue")  # another user
    assert not allowed(policy, delegated("bob", PLANNER), "create_issue")  # another agent
    assert not allowed(policy, delegated("bob"), "create_issue")  # bob, not via the agent
    # The current actor counts, not a prior one: the planner acting through the agent's token
    # is the planner.
    assert not allowed(policy, delegated("bob", PLANNER, AGENT), "create_issue")
    assert allowed(policy, delegated("bob", AGENT, PLANNER), "create_issue")


def test_delegated_false_keeps_agents_out_of_a_users_own_rights(policy: Policy) -> None:
    assert allowed(policy, delegated("bob"), "echo")
    assert not allowed(policy, delegated("bob", AGENT), "echo")
    # without 'delegated', a rule on sub alone also admits whoever acts for that user
    assert allowed(policy, delegated("bob", AGENT), "read_issue")


def test_no_actor_outside_the_trust_domain_anywhere_in_the_chain(policy: Policy) -> None:
    denied = decide(policy, delegated("bob", FOREIGN), call("read_issue"))
    assert not denied.allowed and denied.rule == "no-foreign-actors"
    prior = decide(policy, delegated("bob", AGENT, FOREIGN), call("create_issue"))
    assert not prior.allowed and prior.rule == "no-foreign-actors"
    # a non-SPIFFE actor is outside every SPIFFE pattern
    assert not allowed(policy, delegated("bob", "console-app"), "read_issue")
    # undelegated tokens are not concerned by actor rules
    assert allowed(policy, delegated("carol"), "read_issue")


def test_exact_actor_names(policy: Policy) -> None:
    relaxed = parse_policy({**POLICY, "rules": POLICY["rules"][-1:]})
    assert allowed(relaxed, delegated("bob", "console-app"), "get_time")
    assert not allowed(relaxed, delegated("bob", "console-app-2"), "get_time")
    assert not allowed(relaxed, delegated("bob"), "get_time")


def test_list_filtering_sees_the_delegation(policy: Policy) -> None:
    assert visible(policy, delegated("bob", AGENT), "tool", "create_issue")
    assert not visible(policy, delegated("bob", PLANNER), "tool", "create_issue")
    assert not visible(policy, delegated("bob", FOREIGN), "tool", "read_issue")


def test_delegation_keys_are_validated() -> None:
    found = problems_of(
        {
            "default": "deny",
            "rules": [
                {"name": "a", "when": {"actor": ["spiffe://example.org/ns/*x"]}},
                {"name": "b", "when": {"delegated": "yes"}},
                {"name": "c", "when": {"actors_outside": []}},
                {"name": "d", "when": {"actor": [""]}},
                {"name": "e", "when": {"actor": ["SPIFFE:/example.org"]}},
                {"name": "f", "when": {"actr": [AGENT]}},
            ],
        }
    )
    p = "mcp_policy.rules"
    assert "whole segment" in found[f"{p}[0].when.actor[0]"]
    assert "expected true or false" in found[f"{p}[1].when.delegated"]
    assert "must not be empty" in found[f"{p}[2].when.actors_outside"]
    assert "expected a SPIFFE ID pattern" in found[f"{p}[3].when.actor[0]"]
    assert "not a SPIFFE ID pattern" in found[f"{p}[4].when.actor[0]"]
    assert "did you mean 'actor'" in found[f"{p}[5].when.actr"]
