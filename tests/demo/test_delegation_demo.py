"""``mcp-sidecar demo --scenario delegation`` runs green and shows user and agent together."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.cli import main


def test_delegation_scenario(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["demo", "--scenario", "delegation", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out and "FAIL" not in out
    assert "actor_mismatch" in out  # the copied token was refused
    agent = "actor=spiffe://example.org/ns/agents/sa/agent"
    assert f"allow add       sub=bob    {agent} rule=bob-via-agent" in out
    assert f"deny  add       sub=carol  {agent}" in out
