"""``mcp-sidecar explain`` agrees with the live sidecar: the same bodies - notifications, batches,
numbers no double holds, odd ids - go through a real mesh (agent outbound -> inbound with the
policy) and through ``explain`` on the same configuration, and get the same verdict, element by
element (explain's decisions against the sidecar's audit lines)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.cli import main
from sidecar.mcp import explain
from tests.proxy.mesh import AGENT, inbound_config, local_mesh

POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "agents-add",
            "when": {"spiffe_ids": ["spiffe://example.org/ns/agents/**"]},
            "tools": ["add"],
            "arguments": {"a": {"min": -1000, "max": 1000}},
        },
        {"name": "no-multiply", "effect": "deny", "tools": ["multiply"]},
    ],
}


def call(tool: str, arguments: str | None = None, id: str = "1") -> str:
    args = f',"arguments":{arguments}' if arguments is not None else ""
    return f'{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}"{args}}}}}'


NOTIFICATION = '{"jsonrpc":"2.0","method":"notifications/initialized"}'
ADD_1 = call("add", '{"a":1}')
ADD_2 = call("add", '{"a":2}', id="2")
BODIES = [
    NOTIFICATION,
    '{"jsonrpc":"2.0","id":1,"method":"notifications/initialized"}',  # a request: policy
    '{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    '{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"add"}}',
    call("add", '{"a":5}'),
    call("add", '{"a":1.0}'),
    call("add", '{"a":1E3}'),
    call("add", '{"a":-1e400}'),
    call("add", '{"a":1e400}'),
    call("add", '{"a":1e-400}'),
    call("add", '{"a":true}'),
    call("add", '{"a":5000}'),
    call("add", '{"a":5}', id='"x"'),
    call("add", '{"a":5}', id="9223372036854775807"),
    call("multiply", '{"a":5}'),
    f"[{ADD_1},{call('multiply', id='2')},{NOTIFICATION}]",
    f"[{ADD_1},{ADD_2},{NOTIFICATION}]",
    f"[{NOTIFICATION}]",
    # Refused as invalid by both (400 / exit 1):
    call("add", '{"a":NaN}'),
    call("add", '{"a":1,"a":2}'),
    call("add", '{"a":5}', id="1.5"),
    call("add", '{"a":5}', id="9223372036854775808"),
    "[]",
    "{",
]
FLAGS = [  # (flags, exit status: 0 allow, 3 deny)
    (["--method", "notifications/initialized"], 0),
    (["--method", "notifications/initialized", "--id", "1"], 3),
    (["--method", "tools/call", "--tool", "add", "--args", '{"a":-1e400}'], 3),
    (["--method", "tools/call", "--tool", "add", "--args", '{"a": 7}', "--id", '"seven"'], 0),
    (["--method", "tools/call", "--tool", "add", "--notification", "--args", '{"a": 7}'], 0),
]


async def test_explain_agrees_with_the_live_sidecar(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with local_mesh(inbound={"mcp_policy": POLICY}) as mesh:
        config_file = tmp_path / "inbound.yaml"
        config_file.write_text(
            yaml.safe_dump(
                inbound_config(mesh.sockets["server"], mesh.upstream.port, mcp_policy=POLICY)
            )
        )
        config, policy = explain.load(config_file)

        async def live(body: bytes) -> tuple[int, list[dict[str, Any]]]:
            before = len(mesh.server_lines())
            async with client.post(
                f"{mesh.outbound_url}/math/mcp",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                await resp.read()
            lines = mesh.server_lines()[before:]
            return resp.status, [json.loads(x) for x in lines if '"mcp_audit"' in x]

        bodies = [b.encode() for b in BODIES]
        for flags, status in FLAGS:
            argv = ["explain", "-c", str(config_file), "--spiffe-id", AGENT, *flags]
            body, _ = explain._body_from_args(_parse(argv))
            bodies.append(body)  # and the sidecar must agree on it, below
            assert main(argv) == status, flags

        for body in bodies:
            status, audits = await live(body)
            try:
                result = explain.explain(config, policy, body, spiffe_id=AGENT)
            except explain.ExplainError:
                assert status == 400, body
                continue
            assert status == (200 if result.decision.allowed else 403), body
            argv = [
                "explain",
                "-c",
                str(config_file),
                "--spiffe-id",
                AGENT,
                "--body",
                body.decode(),
            ]
            assert main(argv) == (0 if result.decision.allowed else 3), body
            # Element by element: explain's own decisions are what the audit lines record.
            expected = [
                ("allow" if d.allowed else "deny", d.rule, m.method) for m, d in result.elements
            ]
            assert [(a["decision"], a["rule"], a["method"]) for a in audits] == expected, body
            batch = ("allow" if result.decision.allowed else "deny") if result.batch else None
            assert {a["batch"] for a in audits} <= {batch}, body


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    explain.configure_parser(parser)
    return parser.parse_args(argv[1:])


@pytest.mark.parametrize("body", [NOTIFICATION.encode(), call("add", '{"a":-1e400}').encode()])
def test_explain_reads_the_body_the_sidecar_reads(body: bytes, tmp_path: Path) -> None:
    """The two inputs of issue 12: a notification (no id) and a number no double holds."""
    flags = (
        ["--method", "notifications/initialized"]
        if b"notifications" in body
        else ["--method", "tools/call", "--tool", "add", "--args", '{"a":-1e400}']
    )
    built, _ = explain._body_from_args(_parse(["explain", "-c", "x", *flags]))
    assert json.loads(built) == json.loads(body)
