"""``mcp-sidecar explain``: exit codes, output naming the rule, flags named in errors."""

from __future__ import annotations

import contextlib
import json
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


def test_notifications_and_ids_as_the_sidecar_reads_them(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = explain(config, "--spiffe-id", AGENT, "--claims", '{"sub": "a", "scope": "mcp"}')
    assert main([*base, "--method", "notifications/initialized"]) == 0
    out = capsys.readouterr().out
    assert "call:   notifications/initialized (notification)" in out
    assert "reason: always_allowed" in out
    # With an id it is a request, which the rules judge (and none allows it).
    assert main([*base, "--method", "notifications/initialized", "--id", "1"]) == 3
    capsys.readouterr()
    add = [*base, "--method", "tools/call", "--tool", "add"]
    assert main([*add, "--args", '{"a": -1e400, "b": 1}']) == 3  # -inf < min
    assert "no rule allows" in capsys.readouterr().out
    assert main([*add, "--args", '{"a": 1e-400, "b": 1}', "--id", '"x"']) == 0  # 0.0
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "flag", "text"),
    [
        (["--id", "1.5"], "--id", "string or an integer"),
        (["--id", "true"], "--id", "string or an integer"),
        (["--id", "1 2"], "--id", "text after the JSON value"),
        (["--args", '{"a": 1} {"b": 2}'], "--args", "text after the JSON value"),
        (["--args", '{"a": NaN}'], "--args", "HTTP 400"),
        (["--id", "1", "--notification"], "--notification", "not allowed with"),
    ],
)
def test_ids_and_args_the_sidecar_refuses(
    config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], flag: str, text: str
) -> None:
    argv = explain(config, "--spiffe-id", AGENT, "--sub", "a", "--method", "tools/call")
    with contextlib.suppress(SystemExit):  # argparse refuses exclusive flags itself
        assert main([*argv, "--tool", "add", *extra]) == 1
    err = capsys.readouterr().err
    assert flag in err and text in err


def test_a_whole_body_batch_is_judged_element_by_element(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "add", "arguments": {"a": 1}},
        },
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "multiply"}},
    ]
    base = explain(config, "--spiffe-id", AGENT, "--claims", '{"sub": "a", "scope": "mcp"}')
    assert main([*base, "--body", json.dumps(batch)]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "DENY"
    assert lines[1] == "  batch:  2 messages, forwarded only if every one is allowed"
    assert lines[2] == "  [0]    ALLOW tools/call 'add': rule agents-add, reason rule:agents-add"
    assert lines[3] == "  [1]    DENY  tools/call 'multiply': rule -, reason no rule allows"
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps(batch[:1]))
    assert main([*base, "--body", f"@{body_file}"]) == 0
    capsys.readouterr()
    assert main([*base, "--body", "[]"]) == 1
    assert "--body: the sidecar refuses this request with HTTP 400" in capsys.readouterr().err
    assert main([*base, "--body", "{}", "--method", "ping"]) == 1
    assert "--body excludes --method" in capsys.readouterr().err
    assert main([*base, "--body", f"@{tmp_path / 'missing'}"]) == 1
    assert "--body:" in capsys.readouterr().err
    assert main(base) == 1
    assert "--method (or --body) is required" in capsys.readouterr().err


def test_a_policy_in_dry_run_says_what_the_sidecar_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "dry.yaml"
    text = CONFIG.replace("  mcp_policy:\n", "  mcp_policy:\n    dry_run: true\n")
    assert "dry_run: true" in text
    path.write_text(text)
    base = explain(path, "--spiffe-id", AGENT, "--claims", '{"sub": "a", "scope": "mcp"}')
    assert main([*base, "--method", "tools/call", "--tool", "multiply"]) == 3  # the verdict
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "DENY (dry run: would be allowed through)"
    assert "  mode:   dry run (denials are logged as would_deny, not enforced)" in lines
    assert "  reason: no rule allows" in lines
    assert main([*base, "--method", "tools/call", "--tool", "add", "--args", '{"a": 1}']) == 0
    assert capsys.readouterr().out.startswith("ALLOW\n  mode:   dry run")
    # an admission check is enforced whatever the policy's mode
    stranger = "spiffe://example.org/ns/other/sa/x"
    call = ["--method", "tools/call", "--tool", "add"]
    assert main([*explain(path, "--spiffe-id", stranger, "--sub", "a"), *call]) == 3
    out = capsys.readouterr().out
    assert out.startswith("DENY\n") and "stage:  inbound.allow_spiffe_ids" in out
