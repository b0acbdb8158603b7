"""``mcp-sidecar run`` as a real process: refuses bad config, serves, drains on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from tests.proxy.loopback import free_port

WAIT = 20.0


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="run-", dir="/tmp") as d:
        yield Path(d)


async def run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_run_refuses_invalid_config_listing_every_problem(short_dir: Path) -> None:
    bad = short_dir / "bad.yaml"
    bad.write_text(
        "trust_domain: example.org\n"
        "inbound:\n"
        "  listen: nowhere\n"
        "  allow_spiffe_ids: ['spiffe://example.org/a*b']\n"
        "  colour: blue\n"
    )
    proc = await run_cli("run", "-c", str(bad))
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 1
    text = err.decode()
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
    async with DevWorkloadApi(ca, {sock: "spiffe://example.org/ns/agents/sa/agent"}):
        proc = await run_cli("run", "-c", str(config), "--log-level", "debug")
        try:
            async with aiohttp.ClientSession() as session:
                await asyncio.wait_for(until_ready(session, admin_port), WAIT)
                # --log-level overrode the config's (default) info: the admin endpoint says so.
                async with session.post(
                    f"http://127.0.0.1:{admin_port}/logging", params={"level": "warning"}
                ) as resp:
                    assert await resp.json() == {"level": "warning", "previous": "debug"}
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), WAIT)
            assert proc.returncode == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def until_ready(session: aiohttp.ClientSession, port: int) -> None:
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
