"""The sidecar process wiring: an SVID outside the configured trust domain is never used."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sidecar.config import parse_config
from sidecar.identity.devca import DevCA
from sidecar.identity.devserver import DevWorkloadApi
from sidecar.runtime import Sidecar


async def test_svid_of_another_trust_domain_is_not_adopted() -> None:
    with tempfile.TemporaryDirectory(prefix="rt-", dir="/tmp") as tmp:
        sock = f"unix://{tmp}/agent.sock"
        ca = DevCA.load_or_create(Path(tmp) / "state", "example.org")
        config = parse_config(
            {
                "trust_domain": "other.org",
                "workload_api": sock,
                "admin": {"listen": "127.0.0.1:0"},
                "outbound": {
                    "listen": "127.0.0.1:0",
                    "routes": [
                        {
                            "name": "math",
                            "upstream": "https://127.0.0.1:9",
                            "server_spiffe_id": "spiffe://other.org/ns/mcp/sa/math",
                        }
                    ],
                },
            }
        )
        async with DevWorkloadApi(ca, {sock: "spiffe://example.org/ns/agents/sa/agent"}):
            sidecar = Sidecar(config)
            try:
                with pytest.raises(TimeoutError):
                    await sidecar.start(svid_timeout=2)
                assert sidecar.ready() == (False, "svid_outside_trust_domain")
                assert sidecar.listeners == {}
            finally:
                await sidecar.stop()


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
