"""``mcp-sidecar run`` as a real process: refuses bad config, serves, drains on SIGTERM, and
reports every start-up failure as one line on stderr with exit code 1 (never a traceback)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from tests.polling import until_ready
from tests.processes import run_module, running_module
from tests.proxy.loopback import free_port

WAIT = 20.0


async def test_run_refuses_invalid_config_listing_every_problem(short_dir: Path) -> None:
    bad = short_dir / "bad.yaml"
    bad.write_text(
        "trust_domain: example.org\n"
        "inbound:\n"
        "  listen: nowhere\n"
        "  allow_spiffe_ids: ['spiffe://example.org/a*b']\n"
        "  colour: blue\n"
    )
    code, _, text = await run_module("sidecar.cli", "run", "-c", str(bad), timeout=WAIT)
    assert code == 1
    assert "inbound.listen:" in text
    assert "inbound.allow_spiffe_ids[0]:" in text
    assert "inbound.upstream: required" in text
    assert "inbound.colour:" in text


async def test_run_serves_until_sigterm(short_dir: Path) -> None:
    sock = f"unix://{short_dir}/agent.sock"
    ca = DevCA.load_or_create(short_dir / "state", "example.org")
    admin_port = free_port()
    config = short_dir / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trust_domain": "example.org",
                "workload_api": sock,
                "admin": {"listen": f"127.0.0.1:{admin_port}"},
                "outbound": {
                    "listen": f"127.0.0.1:{free_port()}",
                    "routes": [
                        {
                            "name": "math",
                            "path_prefix": "/math",
                            "upstream": "https://127.0.0.1:9",
                            "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/math",
                        }
                    ],
                },
            }
        )
    )
    async with (
        DevWorkloadApi(ca, {sock: "spiffe://example.org/ns/agents/sa/agent"}),
        running_module("sidecar.cli", "run", "-c", str(config), "--log-level", "debug") as proc,
    ):
        async with aiohttp.ClientSession() as session:
            await until_ready(session, admin_port, WAIT)
            # --log-level overrode the config's (default) info: the admin endpoint says so.
            async with session.post(
                f"http://127.0.0.1:{admin_port}/logging", params={"level": "warning"}
            ) as resp:
                assert await resp.json() == {"level": "warning", "previous": "debug"}
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), WAIT)
        assert proc.returncode == 0


# -- start-up errors ----------------------------------------------------------------------

AGENT = "spiffe://example.org/ns/agents/sa/agent"
SERVER = "spiffe://example.org/ns/mcp/sa/math"


def outbound_config(workload_api: str | None, admin: str = "127.0.0.1:0") -> dict[str, Any]:
    config: dict[str, Any] = {
        "trust_domain": "example.org",
        "admin": {"listen": admin},
        "outbound": {
            "listen": "127.0.0.1:0",
            "routes": [
                {"name": "math", "upstream": "https://127.0.0.1:9", "server_spiffe_id": SERVER}
            ],
        },
    }
    if workload_api is not None:
        config["workload_api"] = workload_api
    return config


async def refused_start(
    config: dict[str, Any] | Path, directory: Path, env: dict[str, str] | None = None
) -> str:
    """Run ``mcp-sidecar run`` on ``config`` (bounded); it must exit 1 without a traceback.
    Returns its last line on stderr."""
    if isinstance(config, Path):
        path = config
    else:
        path = directory / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
    code, _, text = await run_module("sidecar.cli", "run", "-c", str(path), env=env, timeout=WAIT)
    assert code == 1, text
    assert "Traceback" not in text, text
    return text.strip().splitlines()[-1]


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


async def test_admin_port_in_use_is_one_line(short_dir: Path, occupied_port: int) -> None:
    sock = f"unix://{short_dir}/agent.sock"
    line = await refused_start(outbound_config(sock, f"127.0.0.1:{occupied_port}"), short_dir)
    assert line == (
        f"mcp-sidecar: admin.listen: cannot listen on 127.0.0.1:{occupied_port}: "
        "the port is already in use"
    )


async def test_inbound_port_in_use_is_one_line(short_dir: Path, occupied_port: int) -> None:
    # The data-path listener binds only once an SVID arrived: a real Workload API serves one.
    sock = f"unix://{short_dir}/server.sock"
    ca = DevCA.load_or_create(short_dir / "state", "example.org")
    config = {
        "trust_domain": "example.org",
        "workload_api": sock,
        "admin": {"listen": "127.0.0.1:0"},
        "inbound": {
            "listen": f"127.0.0.1:{occupied_port}",
            "upstream": "http://127.0.0.1:8000",
            "allow_spiffe_ids": [AGENT],
        },
    }
    async with DevWorkloadApi(ca, {sock: SERVER}):
        line = await refused_start(config, short_dir)
    assert line == (
        f"mcp-sidecar: inbound.listen: cannot listen on 127.0.0.1:{occupied_port}: "
        "the port is already in use"
    )


async def test_unreadable_config_is_one_line(short_dir: Path) -> None:
    line = await refused_start(short_dir, short_dir)  # a directory: unreadable, even for root
    assert line == f"{short_dir}: cannot read the file: Is a directory"


async def test_unreadable_policy_file_is_one_line(short_dir: Path) -> None:
    config = {
        "trust_domain": "example.org",
        "workload_api": f"unix://{short_dir}/agent.sock",
        "inbound": {
            "listen": "127.0.0.1:0",
            "upstream": "http://127.0.0.1:8000",
            "allow_spiffe_ids": [AGENT],
            "mcp_policy": {"file": str(short_dir / "missing-policy.yaml")},
        },
    }
    line = await refused_start(config, short_dir)
    assert line.startswith("inbound.mcp_policy.file: ")
    assert "missing-policy.yaml" in line


@pytest.mark.parametrize(
    ("workload_api", "env_value", "expected"),
    [
        pytest.param(
            "unix://{dir}/missing/agent.sock",
            None,
            "mcp-sidecar: workload_api: the Workload API socket's directory {dir}/missing "
            "does not exist",
            id="no-such-directory",
        ),
        pytest.param(
            "unix://{dir}/sidecar.yaml",
            None,
            "mcp-sidecar: workload_api: {dir}/sidecar.yaml is not a unix socket",
            id="not-a-socket",
        ),
        pytest.param(
            None,
            None,
            "mcp-sidecar: workload_api: not configured and $SPIFFE_ENDPOINT_SOCKET is not set",
            id="not-configured",
        ),
        pytest.param(
            None,
            "/run/agent.sock",
            "mcp-sidecar: $SPIFFE_ENDPOINT_SOCKET: '/run/agent.sock': scheme must be unix:// "
            "or tcp://",
            id="bad-environment",
        ),
    ],
)
async def test_bad_workload_api_socket_is_one_line(
    short_dir: Path, workload_api: str | None, env_value: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SPIFFE_ENDPOINT_SOCKET"}
    if env_value is not None:
        env["SPIFFE_ENDPOINT_SOCKET"] = env_value
    api = workload_api.format(dir=short_dir) if workload_api else None
    line = await refused_start(outbound_config(api), short_dir, env)
    assert line == expected.format(dir=short_dir)
