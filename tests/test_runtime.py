"""The sidecar process wiring: an SVID outside the configured trust domain is never used."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sidecar.config import Config, parse_config
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar


def outbound_only(workload_api: str, trust_domain: str) -> Config:
    """An outbound sidecar whose one route leads to a closed port."""
    return parse_config(
        {
            "trust_domain": trust_domain,
            "workload_api": workload_api,
            "admin": {"listen": "127.0.0.1:0"},
            "outbound": {
                "listen": "127.0.0.1:0",
                "routes": [
                    {
                        "name": "math",
                        "upstream": "https://127.0.0.1:9",
                        "server_spiffe_id": f"spiffe://{trust_domain}/ns/mcp/sa/math",
                    }
                ],
            },
        }
    )


async def test_svid_of_another_trust_domain_is_not_adopted() -> None:
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as tmp:
        sock = f"unix://{tmp}/agent.sock"
        ca = DevCA.load_or_create(Path(tmp) / "state", "example.org")
        config = outbound_only(sock, "other.org")
        async with DevWorkloadApi(ca, {sock: "spiffe://example.org/ns/agents/sa/agent"}):
            sidecar = Sidecar(config)
            try:
                with pytest.raises(TimeoutError):
                    await sidecar.start(svid_timeout=2)
                assert sidecar.ready() == (False, "svid_outside_trust_domain")
                assert sidecar.listeners == {}
            finally:
                await sidecar.stop()


async def test_stop_flushes_access_log_lines_still_waiting_for_their_interval() -> None:
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as tmp:
        sock = f"unix://{tmp}/agent.sock"
        ca = DevCA.load_or_create(Path(tmp) / "state", "example.org")
        config = outbound_only(sock, "example.org")  # its upstream refuses: a quick 502
        raw = io.BytesIO()
        buffered = io.TextIOWrapper(raw, encoding="utf-8")  # holds lines until flushed
        async with DevWorkloadApi(ca, {sock: "spiffe://example.org/ns/agents/sa/agent"}):
            sidecar = Sidecar(config, access_stream=buffered)
            sidecar.access_log.flush_interval = 3600.0
            try:
                await sidecar.start(svid_timeout=15)
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", sidecar.port("outbound")
                )
                writer.write(b"GET /math/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                answer = await asyncio.wait_for(reader.read(), 15)
                writer.close()
                assert answer.startswith(b"HTTP/1.1 502 ")
                assert raw.getvalue() == b""  # logged, still in the stream's buffer
            finally:
                await sidecar.stop()
            line = json.loads(raw.getvalue().decode())
            assert (line["direction"], line["status"]) == ("outbound", 502)


def test_startup_objects_are_frozen_out_of_the_collectors_sight() -> None:
    # In a fresh interpreter (freezing this test process would hide its garbage from the
    # collector): after the call, a full collection no longer scans the start-up heap.
    code = (
        "import gc, sidecar.runtime as r\n"
        "n = r.freeze_startup_objects()\n"
        "assert n == gc.get_freeze_count() > 10000, n\n"
        "assert len(gc.get_objects()) < 1000, len(gc.get_objects())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
