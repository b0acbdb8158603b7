"""``mcp-sidecar demo --scenario delegation``: an agent acting for people (RFC 8693).

The agent's MCP client sends the user's access token (from the demo identity provider) to its
outbound sidecar, which exchanges it at a local security token service (``sidecar.demo.sts``,
HTTPS) for a token addressed to the math server, naming the agent's SPIFFE ID in ``act``. The
server's sidecar validates that token (issuer: the STS), binds its actor to the mTLS peer, and its
MCP policy decides on user and agent together: bob, through this agent, may use ``add`` and
``echo``; carol may not; a workload that copies bob's exchanged token is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.demo import mcp_client
from sidecar.demo.mcp_server import MCP_PATH, serve_mcp
from sidecar.demo.mesh import (
    IDENTITIES,
    LOG_FORMAT,
    STEP_TIMEOUT,
    TRUST_DOMAIN,
    Report,
    _reason,
    _sidecar,
    inbound_config,
    outbound_config,
)
from sidecar.demo.sts import DemoIdp, Sts
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi

RESOURCE = "https://math.example.org/mcp"
OTHER = f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/copycat"
AGENT = IDENTITIES["agent"]
POLICY: dict[str, Any] = {
    "default": "deny",
    "rules": [
        {
            "name": "bob-via-agent",
            "when": {"sub": ["bob"], "actor": [AGENT]},
            "tools": ["add", "echo"],
        },
        {
            "name": "no-foreign-actors",
            "effect": "deny",
            "when": {"actors_outside": [f"spiffe://{TRUST_DOMAIN}"]},
        },
    ],
}


def run_from_args(args: argparse.Namespace) -> int:
    """``mcp-sidecar demo --scenario delegation``."""
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    return asyncio.run(run_delegation(state_dir=args.state_dir))


async def run_delegation(*, state_dir: Path | None = None) -> int:
    with contextlib.ExitStack() as stack:
        state = state_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mcp-")))
        report, audits = await _exercise(state.resolve())
    print("mcp-sidecar demo --scenario delegation: an agent acting for users (RFC 8693)\n")
    print(f"  agent   {AGENT}\n  server  {IDENTITIES['math']}")
    print("  policy  bob via this agent may use add and echo; no actor outside example.org\n")
    print("what happened (user token -> agent's sidecar -> STS -> delegated token -> server):")
    print("\n".join(report.lines))
    print("\nthe server sidecar's audit lines (user = sub, agent = actor):")
    for audit in audits:
        who = audit["principal"]
        print(
            f"  {audit['decision']:<5} {audit['tool']:<9} sub={who['sub']:<6} "
            f"actor={who['actor']} rule={audit['rule'] or '-'}"
        )
    print(f"\nresult: {'OK' if report.ok else 'FAILED'}")
    return 0 if report.ok else 1


async def _exercise(state: Path) -> tuple[Report, list[dict[str, Any]]]:
    state.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    names = {"agent": AGENT, "math": IDENTITIES["math"], "copycat": OTHER}
    sockets = {name: f"unix://{state}/{name}.sock" for name in names}
    ca = DevCA.load_or_create(state / "dev-ca", TRUST_DOMAIN)
    api = DevWorkloadApi(ca, {sockets[n]: sid for n, sid in names.items()})
    idp = DemoIdp()
    sts = Sts(idp, state, spiffe_jwks=lambda: json.loads(ca.jwt_bundle_json()))
    report = Report()
    logs: list[Any] = []
    sidecars = []
    await api.start()
    await sts.start()
    server = await serve_mcp("127.0.0.1", 0)
    try:
        oauth = {"issuer": sts.url, "audience": RESOURCE, "jwks": {"keys": [sts.jwk]}}
        inbound = await _sidecar(
            "math-inbound",
            inbound_config(
                sockets["math"],
                server.port,
                [f"spiffe://{TRUST_DOMAIN}/ns/agents/**"],
                oauth=oauth,
                mcp_policy=POLICY,
            ),
            state,
            logs,
        )
        sidecars.append(inbound)
        exchange = {"issuer": sts.url, "ca_file": str(sts.ca_file), "resource": RESOURCE}
        agent = await _sidecar(
            "agent-outbound",
            outbound_config(
                sockets["agent"],
                inbound.port("inbound"),
                IDENTITIES["math"],
                {"token_exchange": {**exchange, "scopes": ["mcp:tools"]}},
            ),
            state,
            logs,
        )
        sidecars.append(agent)
        copycat = await _sidecar(
            "copycat-outbound",
            outbound_config(sockets["copycat"], inbound.port("inbound"), IDENTITIES["math"]),
            state,
            logs,
        )
        sidecars.append(copycat)
        url = f"http://127.0.0.1:{agent.port('outbound')}/math{MCP_PATH}"
        bob = {"Authorization": f"Bearer {idp.token('bob', scope='mcp:tools')}"}
        carol = {"Authorization": f"Bearer {idp.token('carol', scope='mcp:tools')}"}
        tools = await mcp_client.list_tool_names(url, bob, timeout=STEP_TIMEOUT)
        report.step(sorted(tools) == ["add", "echo"], "bob", "tools/list", ", ".join(tools))
        added = await mcp_client.call_tool(url, "add", {"a": 2, "b": 3}, bob, timeout=STEP_TIMEOUT)
        report.step(added.structured == {"result": 5}, "bob", "tools/call add(2, 3)", added.text)
        for who, headers, tool in (("bob", bob, "multiply"), ("carol", carol, "add")):
            call = {"name": tool, "arguments": {"a": 2, "b": 3}}
            refused = await mcp_client.post_raw(
                url,
                {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": call},
                headers=headers,
                timeout=STEP_TIMEOUT,
            )
            report.step(
                refused.status == 403, who, f"tools/call {tool}", f"-> HTTP {refused.status}"
            )
        stolen = sts.issued[0]
        copy_url = f"http://127.0.0.1:{copycat.port('outbound')}/math{MCP_PATH}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                copy_url,
                json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"Authorization": f"Bearer {stolen}"},
            ) as resp,
        ):
            body = await resp.text()
        report.step(
            resp.status == 401 and "actor_mismatch" in body,
            "copycat",
            "replays bob's exchanged token",
            f"-> refused: HTTP {resp.status} {_reason(body)}",
        )
        user_tokens = [h["Authorization"][7:] for h in (bob, carol)]
        leaked = any(
            token in value
            for r in server.requests
            for _, value in r.headers
            for token in user_tokens
        )
        report.step(not leaked, "server", "saw a user's own token?", "no" if not leaked else "YES")
        inbound.access_log.flush_pending()
        audits = [
            json.loads(line)
            for line in (state / "math-inbound-access.log").read_text().splitlines()
            if '"mcp_audit"' in line and '"tools/call"' in line
        ]
    finally:
        for sidecar in reversed(sidecars):
            await sidecar.stop()
        await server.close()
        await sts.close()
        await api.stop()
        for log_file in logs:
            log_file.close()
    return report, audits
