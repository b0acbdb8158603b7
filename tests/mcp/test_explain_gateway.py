"""``mcp-sidecar explain`` at an edge gateway: rules match the multiplexed names, and the output
says which target (and which name there) a call reaches."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main

GATEWAY = textwrap.dedent(
    """\
    trust_domain: example.org
    inbound:
      listen: 0.0.0.0:8443
      mtls: "off"
      oauth:
        issuer: https://auth.example.com
        audience: https://gateway.example.com/mcp
        jwks_uri: https://auth.example.com/jwks.json
      targets:
        - {name: math, upstream: "https://math.mcp.svc:8443",
           server_spiffe_id: "spiffe://example.org/ns/mcp/sa/math"}
        - {name: clock, upstream: "https://clock.mcp.svc:8443",
           server_spiffe_id: "spiffe://example.org/ns/mcp/sa/clock"}
      mcp_policy:
        default: deny
        rules:
          - {name: admins-echo, when: {roles: [admin]}, tools: ["*__echo"]}
          - {name: users-time, when: {roles: [user, admin]}, tools: [clock__get_time]}
    """
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY)
    return path


def run(config: Path, role: str, tool: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(
        [
            "explain",
            "-c",
            str(config),
            "--sub",
            "alice",
            "--claims",
            f'{{"roles": ["{role}"]}}',
            "--method",
            "tools/call",
            "--tool",
            tool,
        ]
    )
    return code, capsys.readouterr().out


def test_rules_name_target_and_tool(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(config, "admin", "math__echo", capsys)
    assert code == 0 and "rule:   admins-echo" in out
    assert "'math__echo' is 'echo' of target math (https://math.mcp.svc:8443)" in out
    code, out = run(config, "user", "math__echo", capsys)
    assert code == 3 and "no rule allows" in out
    code, out = run(config, "user", "clock__get_time", capsys)
    assert code == 0 and "rule:   users-time" in out


def test_a_name_of_no_target_is_pointed_out(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(config, "admin", "paint__echo", capsys)
    assert code == 0  # the glob *__echo allows it, but:
    assert "names no target of this gateway (math, clock)" in out
