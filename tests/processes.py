"""Our own modules as real processes in tests (``python -m module`` with this interpreter).

``running_module`` kills and reaps a process the test left running, so a failed assertion never
leaves one behind; ``run_module`` runs one to its end, bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL


async def python_module(
    module: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stderr: int = PIPE,
) -> asyncio.subprocess.Process:
    """``python -m module args``, its stdout (and unless told otherwise its stderr) piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args, stdout=PIPE, stderr=stderr, env=env, cwd=cwd
    )


@contextlib.asynccontextmanager
async def running_module(
    module: str,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stderr: int = PIPE,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python_module``, killed and reaped on the way out if it is still running."""
    proc = await python_module(module, *args, env=env, cwd=cwd, stderr=stderr)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def run_module(
    module: str,
    *args: str,
    timeout: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[int, str, str]:
    """``python -m module args`` to its end within ``timeout`` seconds: (exit code, stdout,
    stderr)."""
    async with running_module(module, *args, env=env, cwd=cwd) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
