"""``mcp-sidecar check-config FILE``: every problem on stderr (exit 1) or a summary (exit 0)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_valid_inbound_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLES / "inbound.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{EXAMPLES / 'inbound.yaml'}: OK\n")
    assert "inbound: 0.0.0.0:8443 -> http://127.0.0.1:8000" in out
    assert "2 allowed SPIFFE ID patterns" in out
    assert "admin: 127.0.0.1:15000" in out


def test_valid_outbound_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLES / "outbound.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "outbound: 127.0.0.1:15001; 3 routes" in out
    assert (
        "route math: /math -> https://math.mcp.svc:8443 (server spiffe://example.org/ns/mcp/sa/math)"
        in out
    )
    assert "workload API: $SPIFFE_ENDPOINT_SOCKET" in out


@pytest.mark.parametrize("name", ["inbound.yaml", "policy.yaml"])
def test_examples_with_a_policy_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLES / name)]) == 0
    out, err = capsys.readouterr()
    assert (err, out.splitlines()[0]) == ("", f"{EXAMPLES / name}: OK")


def _explain(*args: str) -> list[str]:
    return ["explain", "-c", str(EXAMPLES / "policy.yaml"), *args]


AGENT = "spiffe://example.org/ns/agents/sa/planner"
CONSOLE = "spiffe://example.org/ns/ops/sa/console"
ISSUER = "https://auth.example.com/realms/mcp"


def _person(sub: str, role: str, issuer: str | None = ISSUER) -> str:
    """Claims of the OAuth access token the console relays (``iss`` picks the OAuth layer)."""
    claims: dict[str, object] = {"sub": sub, "roles": [role]}
    if issuer is not None:
        claims["iss"] = issuer
    return json.dumps(claims)


AS_AGENT = ("--spiffe-id", AGENT, "--sub", AGENT)  # a JWT-SVID bound to the mTLS peer
ADMIN = ("--spiffe-id", CONSOLE, "--claims", _person("alice", "admin"))
USER = ("--spiffe-id", CONSOLE, "--claims", _person("bob", "user"))


@pytest.mark.parametrize(
    ("caller", "tool", "status", "rule"),
    [
        (AS_AGENT, "add", 0, "agents-add"),
        (AS_AGENT, "multiply", 3, "agents-no-multiply"),
        (AS_AGENT, "echo", 3, "-"),
        (ADMIN, "echo", 0, "admins-echo"),
        (ADMIN, "get_time", 3, "-"),
        (ADMIN, "multiply", 3, "-"),
        (USER, "get_time", 0, "users-time"),
        (USER, "echo", 3, "-"),
        # roles come from OAuth access tokens only (not JWT-SVIDs), and only via the console
        (("--spiffe-id", CONSOLE, "--claims", _person("x", "admin", None)), "echo", 3, "-"),
        (("--spiffe-id", AGENT, "--claims", _person(AGENT, "admin")), "echo", 3, "-"),
    ],
)
def test_policy_example_implements_the_reference_scenario(
    capsys: pytest.CaptureFixture[str], caller: tuple[str, ...], tool: str, status: int, rule: str
) -> None:
    assert main(_explain(*caller, "--method", "tools/call", "--tool", tool)) == status
    out = capsys.readouterr().out
    assert out.startswith("ALLOW\n" if status == 0 else "DENY\n")
    assert f"  rule:   {rule}\n" in out


def policy_file_config(tmp_path: Path, policy: Path, reload_interval: str) -> Path:
    """A configuration whose MCP policy is the file ``policy`` (``file:`` on line 7)."""
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            trust_domain: example.org
            inbound:
              listen: 0.0.0.0:8443
              upstream: http://127.0.0.1:8000
              allow_spiffe_ids: [spiffe://example.org/ns/agents/sa/*]
              mcp_policy:
                file: {policy}
                reload_interval: {reload_interval}
            """
        )
    )
    return config


def test_policy_file_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: deny\nrules:\n  - {name: agents-add, tools: [add]}\n")
    config = policy_file_config(tmp_path, policy, "5s")
    assert main(["check-config", str(config)]) == 0
    assert capsys.readouterr().err == ""
    policy.write_text("default: deny\nrules:\n  - {name: agents-add, tools: [add], tols: [x]}\n")
    assert main(["check-config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"inbound.mcp_policy.file: {policy}: {policy}.rules[0].tols: unknown key 'tols'; "
        "did you mean 'tools'? (line 3)"
    ]
    policy.unlink()
    assert main(["check-config", str(config)]) == 1
    assert capsys.readouterr().err == (
        f"inbound.mcp_policy.file: {policy}: {policy}: cannot read the file: "
        "No such file or directory (line 7)\n"
    )


def test_a_policy_file_is_read_even_when_other_keys_are_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every problem at once: the file's own problems are located in the file (a duplicate key
    names both of its lines there, not the line of ``file:`` in the configuration)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("default: deny\nrules: []\ndefault: allow\n")
    config = policy_file_config(tmp_path, policy, "soon")
    assert main(["check-config", str(config)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "inbound.mcp_policy.reload_interval: not a duration: 'soon'; expected a duration like "
        "250ms, 10s, 5m, 1h or a number of seconds (units: ms, s, m, h) (line 8)",
        f"inbound.mcp_policy.file: {policy}: {policy}.default: duplicate key (first at line 1, "
        "again at line 3); a security config must not be ambiguous",
    ]


def test_every_problem_is_printed_as_path_colon_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            trust_domain: example.org
            inbound:
              listne: 0.0.0.0:8443
              upstream: http://127.0.0.1:8000
              allow_spiffe_ids: [spiffe://example.org/a, "spiffe://example.org/b*"]
              mcp_policy: {default: deny, rules: [{name: a, tools: [add], when: {rols: [x]}}]}
              rate_limits: [{per: principal, rate: 10/x}]
            outbound:
              listen: 0.0.0.0:15001
              routes:
                - {name: math, upstream: "http://math:80", server_spiffe_id: "spiffe://example.org/m"}
            """
        )
    )
    assert main(["check-config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        "inbound.listne: unknown key 'listne'; did you mean 'listen'? (line 3)",
        "inbound.listen: required (the mTLS listen address, e.g. 0.0.0.0:8443)",
        "inbound.allow_spiffe_ids[1]: not a SPIFFE ID pattern: SPIFFE ID pattern "
        "'spiffe://example.org/b*': a wildcard must be a whole segment ('*' or a final '**'), "
        "not 'b*' (line 5)",
        "inbound.mcp_policy.rules[0].when.rols: unknown key 'rols'; did you mean 'roles'? (line 6)",
        "inbound.rate_limits[0].rate: not a rate: '10/x'; expected a rate like 10/s, 600/m, "
        "1000/h or a number per second (line 7)",
        "outbound.routes[0].upstream: must be an https:// URL (routes always originate mTLS to "
        "the server's sidecar), got http:// (line 11)",
        "outbound.listen: 0.0.0.0:15001 is not a loopback address: the outbound side is plain "
        "HTTP and lends this workload's SPIFFE identity to whoever connects; listen on "
        "127.0.0.1, [::1] or localhost, or set allow_non_loopback: true if the network in front "
        "is trusted (line 9)",
    ]


def test_duplicate_keys_and_syntax_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text(
        "trust_domain: example.org\n"
        "outbound:\n"
        "  listen: 127.0.0.1:15001\n"
        "  routes: [{name: a, upstream: 'https://a:1', server_spiffe_id: 'spiffe://example.org/a'}]\n"
        "  listen: 0.0.0.0:15001\n"
    )
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "outbound.listen: duplicate key (first at line 3, again at line 5); "
        "a security config must not be ambiguous"
    )
    config.write_text("trust_domain: example.org\ninbound: {listen: [\n")
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{config}: invalid YAML at line 3")
    assert len(err.splitlines()) == 1


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["check-config", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{missing}: cannot read the file: No such file or directory\n")


def test_file_argument_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err
