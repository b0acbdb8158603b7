"""Process-wide settings applied once at start-up, before any thread exists.

``process.scheduler: batch`` runs the sidecar under Linux's ``SCHED_BATCH`` policy: the kernel
treats it as CPU-bound and stops preempting it in favour of a task that has just woken up
(wake-up preemption), so a sidecar sharing a core with its application serves the requests it
has already read before yielding, instead of being switched out about once per request. Nice
values and fairness are unchanged: over time it gets the same CPU share as under ``normal``.
Threads started later (grpcio's, the access log's) inherit the policy of the thread that
starts them, which is why this runs before the event loop and the Workload API client exist.
Unprivileged: lowering one's own policy to SCHED_BATCH needs no capability.
"""

from __future__ import annotations

import logging
import os

from sidecar.config import Scheduler

log = logging.getLogger(__name__)


def apply_scheduler(policy: Scheduler) -> bool:
    """Switch the calling thread (and so every thread it starts later) to ``policy``.

    ``normal`` leaves the process as it was started. Returns whether ``batch`` was applied; where
    the platform has no SCHED_BATCH (not Linux) or refuses it, says so in the log and goes on
    under the normal policy — a scheduling hint never stops the sidecar."""
    if policy == "normal":
        return False
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:
        log.warning("process.scheduler: batch is Linux-only; running with the normal policy")
        return False
    try:
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError as exc:
        log.warning("process.scheduler: batch refused (%s); running with the normal policy", exc)
        return False
    log.info("process.scheduler: running as SCHED_BATCH")
    return True
