"""``mcp-sidecar explain``: exit codes, output naming the rule, flags named in errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main

CONFIG = textwrap.dedent(
    """\
    trust_domain: example.org
    inbound:
      listen: 0.0.0.0:8443
      upstream: http://127.0.0.1:8000
      mtls: required
      allow_spiffe_ids:
        - spiffe://example.org/ns/agents/sa/*
        - spiffe://example.org/ns/ops/sa/*
      oauth:
        issuer: https://auth.example.com
        audience: https://mcp.example.com/mcp
        jwks_uri: https://auth.example.com/jwks.json
        required_scopes: [mcp]
      mcp_policy:
        default: deny
        rules:
          - name: admins-echo
            when: {roles: [admin]}
            tools: [echo]
          - name: users-time
            when: {roles: [user]}
            tools: [get_time]
          - name: agents-add
            when: {spiffe_ids: ["spiffe://example.org/ns/agents/**"]}
            tools: [add]
            arguments: {a: {min: -1000, max: 1000}}
          - name: no-huge
            effect: deny
            tools: ["*"]
            arguments: {b: {min: 1000000}}
    """
)
AGENT = "spiffe://example.org/ns/agents/sa/planner"
CONSOLE = "spiffe://example.org/ns/ops/sa/console"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "sidecar.yaml"
    path.write_text(CONFIG)
    return path


def explain(config: Path, *args: str) -> list[str]:
    return ["explain", "-c", str(config), *args]


def test_allow_names_the_rule(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = explain(
        config, "--spiffe-id", AGENT, "--claims", '{"sub": "a", "scope": "mcp"}',
        "--method", "tools/call", "--tool", "add", "--args", '{"a": 1, "b": 2}',
    )  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "ALLOW"
    assert "  rule:   agents-add" in lines
    assert "  reason: rule:agents-add" in lines
    assert err == ""


def test_deny_by_default_and_by_rule(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = explain(config, "--spiffe-id", AGENT, "--claims", '{"sub": "a", "scope": "mcp"}')
    assert main([*base, "--method", "tools/call", "--tool", "multiply"]) == 3
    out = capsys.readouterr().out
    assert out.startswith("DENY\n") and "reason: no rule allows" in out
    huge = '{"a": 1, "b": 5000000}'
    assert main([*base, "--method", "tools/call", "--tool", "add", "--args", huge]) == 3
    out = capsys.readouterr().out
    assert "rule:   no-huge" in out and "reason: rule:no-huge" in out
    assert main([*base, "--method", "tools/call", "--tool", "add", "--args", '{"a": 5000}']) == 3
    assert "no rule allows" in capsys.readouterr().out


def test_roles_come_from_token_claims(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin = '{"sub": "alice", "roles": ["admin"], "scope": "mcp"}'
    user = '{"sub": "bob", "roles": "user", "scope": "mcp"}'
    base = explain(config, "--spiffe-id", CONSOLE, "--method", "tools/call")
    assert main([*base, "--claims", admin, "--tool", "echo"]) == 0
    assert "rule:   admins-echo" in capsys.readouterr().out
    assert main([*base, "--claims", admin, "--tool", "get_time"]) == 3
    assert main([*base, "--claims", user, "--tool", "get_time"]) == 0
    assert main([*base, "--claims", user, "--tool", "echo"]) == 3


def test_always_allowed_and_list_methods(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = explain(config, "--spiffe-id", AGENT, "--sub", "a", "--claims", '{"scope": "mcp"}')
    assert main([*base, "--method", "ping"]) == 0
    assert "reason: always_allowed" in capsys.readouterr().out
    assert main([*base, "--method", "tools/list"]) == 0
    assert "reason: list_filtered" in capsys.readouterr().out
    assert main([*base, "--method", "Tools/Call", "--args", "{}"]) == 1  # --args needs tools/call
    assert main([*base, "--method", "Tools/Call"]) == 3
    assert "reason: ambiguous_method" in capsys.readouterr().out


def test_admission_checks_come_first(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    call = ["--method", "tools/call", "--tool", "add"]
    stranger = "spiffe://example.org/ns/other/sa/x"
    assert main([*explain(config, "--spiffe-id", stranger, "--sub", "a"), *call]) == 3
    out = capsys.readouterr().out
    assert "stage:  inbound.allow_spiffe_ids" in out
    assert main([*explain(config, "--spiffe-id", AGENT, "--sub", "a"), *call]) == 3
    assert "insufficient_scope" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--args", "{not json", "--tool", "add"], "--args"),
        (["--args", "[1, 2]", "--tool", "add"], "--args"),
        (["--args", '{"a": 1, "a": 2}', "--tool", "add"], "--args"),
        (["--claims", "nope", "--tool", "add"], "--claims"),
        (["--claims", '{"scope": 5}', "--tool", "add"], "--claims"),
        ([], "--tool"),
        (["--prompt", "p"], "--prompt"),
    ],
)
def test_bad_input_exits_1_naming_the_flag(
    config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], flag: str
) -> None:
    argv = explain(config, "--spiffe-id", AGENT, "--sub", "a", "--method", "tools/call", *extra)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert flag in err


def test_missing_identity_and_bad_spiffe_id(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call = ["--method", "tools/call", "--tool", "add", "--sub", "a"]
    assert main([*explain(config), *call]) == 1
    assert "--spiffe-id is required" in capsys.readouterr().err
    assert main([*explain(config, "--spiffe-id", "spiffe://Example.org/x"), *call]) == 1
    assert "--spiffe-id:" in capsys.readouterr().err
    assert main([*explain(config, "--spiffe-id", AGENT), "--method", "ping"]) == 1
    assert "--sub or --claims is required" in capsys.readouterr().err


def test_bad_configuration_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("tools: [echo]", "tool: [echo]").replace("listen:", "listne:"))
    argv = ["explain", "-c", str(bad), "--spiffe-id", AGENT, "--method", "ping"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "inbound.listne" in err
    no_policy = tmp_path / "none.yaml"
    no_policy.write_text(CONFIG.split("  mcp_policy:")[0])
    assert main(["explain", "-c", str(no_policy), "--spiffe-id", AGENT, "--method", "ping"]) == 1
    assert "no inbound.mcp_policy" in capsys.readouterr().err
    policy_problem = tmp_path / "policy.yaml"
    policy_problem.write_text(CONFIG.replace("tools: [echo]", "tool: [echo]"))
    argv = ["explain", "-c", str(policy_problem), "--spiffe-id", AGENT, "--method", "ping"]
    assert main(argv) == 1
    assert "inbound.mcp_policy.rules[0].tool: unknown key 'tool'" in capsys.readouterr().err
    missing = ["explain", "-c", str(tmp_path / "nope.yaml"), "--spiffe-id", AGENT, "--method", "x"]
    assert main(missing) == 1
