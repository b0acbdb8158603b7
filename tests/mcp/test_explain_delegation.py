"""``mcp-sidecar explain`` with delegated tokens and API keys: shows user and actor, applies the
actor binding before the policy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sidecar.cli import main
from sidecar.tokens.apikeys import hash_key, new_key

AGENT = "spiffe://example.org/ns/agents/sa/agent"
STS = "https://sts.example.com"


def config_file(tmp_path: Path, **inbound: object) -> str:
    data = {
        "trust_domain": "example.org",
        "inbound": {
            "listen": "127.0.0.1:8443",
            "upstream": "http://127.0.0.1:8000",
            "allow_spiffe_ids": ["spiffe://example.org/ns/agents/**"],
            "mcp_policy": {
                "default": "deny",
                "rules": [
                    {
                        "name": "bob-via-agent",
                        "when": {"sub": ["bob"], "actor": [AGENT]},
                        "tools": ["add"],
                    },
                    {"name": "deployers", "when": {"roles": ["deployer"]}, "tools": ["echo"]},
                ],
            },
            **inbound,
        },
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["explain", *args, "--method", "tools/call"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_explain_shows_user_and_actor(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = config_file(tmp_path, oauth={"issuer": STS, "audience": "https://m.example.com/mcp"})
    code, out = explain(
        capsys, "-c", cfg, "--spiffe-id", AGENT, "--sub", "bob", "--actor", AGENT, "--tool", "add"
    )
    assert code == 0 and "ALLOW" in out and "rule:   bob-via-agent" in out
    assert f"caller: spiffe_id={AGENT} sub=bob actor={AGENT}" in out
    # the actor must be the mTLS peer (bind_actor_to_peer), checked before the policy
    other = "spiffe://example.org/ns/agents/sa/other"
    code, out = explain(
        capsys, "-c", cfg, "--spiffe-id", other, "--sub", "bob", "--actor", AGENT, "--tool", "add"
    )
    assert code == 3 and "stage:  inbound.oauth.bind_actor_to_peer" in out
    code, out = explain(capsys, "-c", cfg, "--spiffe-id", AGENT, "--sub", "bob", "--tool", "add")
    assert code == 3 and "no rule allows" in out  # bob himself, without the agent
    code, out = explain(
        capsys,
        "-c",
        cfg,
        "--spiffe-id",
        AGENT,
        "--sub",
        "bob",
        "--actor",
        "x",
        "--claims",
        '{"act": {"sub": "y"}}',
        "--tool",
        "add",
    )
    assert code == 1 and "either with --actor" in out


def test_explain_with_api_keys(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    key_id, key = new_key()
    keys = tmp_path / "keys.yaml"
    entry = {"id": key_id, "name": "ci-bot", "hash": str(hash_key(key, ln=10))}
    keys.write_text(yaml.safe_dump({"keys": [entry]}))
    cfg = config_file(tmp_path, api_keys={"file": str(keys)})
    args = ["-c", cfg, "--spiffe-id", AGENT, "--sub", "ci-bot", "--tool", "echo"]
    code, out = explain(capsys, *args, "--claims", '{"roles": ["deployer"]}')
    assert code == 0 and "rule:   deployers" in out
    code, out = explain(capsys, *args)
    assert code == 3
