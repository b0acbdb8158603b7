"""The README's main command, ``mcp-sidecar demo``, runs end to end and exits 0."""

from __future__ import annotations

import asyncio
import sys


async def test_demo_command_exits_zero_with_a_report() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    report = out.decode()
    assert proc.returncode == 0, report + err.decode()
    assert "result: OK" in report
    assert "[ok ] rogue     tools/list" in report and "not_allowlisted" in report
    assert "FAIL" not in report
