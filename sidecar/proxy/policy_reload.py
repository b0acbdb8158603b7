"""Hot reload of the MCP policy from a file (a mounted Kubernetes ConfigMap).

The file is polled (``stat``: inode, size, mtime — a ConfigMap update swaps a symlink, so the
inode changes) every ``interval`` seconds. A new policy replaces the old one with a single
assignment, so requests in flight finish under the policy they started with and no connection
is touched. A file that fails to parse or validate is refused: the old policy stays, the error is
logged and ``mcp_sidecar_policy_reload_errors_total`` increments. The same holder serves other
hot-reloaded files (``what`` names them in the log); ``on_missing`` decides what a file that
disappeared means (by default: keep the last one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from sidecar.errors import SidecarError
from sidecar.metrics import Metrics

log = logging.getLogger(__name__)

P = TypeVar("P")
Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class PolicyHolder(Generic[P]):
    """Holds the policy in force; ``current`` is read per request."""

    def __init__(
        self,
        current: P,
        *,
        path: Path | None = None,
        loader: Callable[[Path], P] | None = None,
        interval: float = 2.0,
        metrics: Metrics | None = None,
        what: str = "policy",
        on_missing: Callable[[], P] | None = None,
    ) -> None:
        self.current = current
        self._what = what
        self._on_missing = on_missing
        self._path = path
        self._loader = loader
        self._interval = interval
        self._metrics = metrics
        self._stamp = _stamp(path) if path is not None else None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.errors = 0

    def start(self) -> None:
        if self._path is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch(), name=f"policy-reload {self._path}"
            )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check_now()

    def check_now(self) -> bool:
        """Reload if the file changed; True when a new policy was adopted."""
        assert self._path is not None and self._loader is not None
        stamp = _stamp(self._path)
        if stamp == self._stamp:
            return False
        if stamp is None:
            if self._on_missing is None:
                return False
            self._stamp = None
            self.current = self._on_missing()
            log.error("%s file %s disappeared", self._what, self._path)
            return True
        self._stamp = stamp
        try:
            policy = self._loader(self._path)
        except (SidecarError, OSError, ValueError) as exc:
            self.errors += 1
            if self._metrics is not None:
                self._metrics.policy_reload_errors.inc()
            log.error(
                "%s file %s refused, keeping the previous %s: %s",
                self._what,
                self._path,
                self._what,
                exc,
            )
            return False
        self.current = policy
        self.reloads += 1
        if self._metrics is not None:
            self._metrics.policy_reloads.inc()
        log.info("%s reloaded from %s", self._what, self._path)
        return True
