"""``process.scheduler``: the policy reaches every thread of a real sidecar process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from sidecar.config import load_config_text
from sidecar.errors import ConfigErrors
from sidecar.process import apply_scheduler

linux_only = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux-only")


OUTBOUND = {
    "listen": "127.0.0.1:0",
    "routes": [
        {
            "name": "math",
            "path_prefix": "/math",
            "upstream": "https://127.0.0.1:9",
            "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/math",
        }
    ],
}


def thread_policies(pid: int) -> dict[int, int]:
    """Scheduling policy of every thread of ``pid`` (field 41 of /proc/PID/task/TID/stat)."""
    policies = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # fields from the third on
        policies[int(task.name)] = int(fields[41 - 3])
    return policies


def test_scheduler_key_is_validated() -> None:
    base = yaml.safe_dump({"trust_domain": "example.org", "outbound": OUTBOUND})
    assert load_config_text(base).process.scheduler == "normal"
    assert load_config_text(base + "process: {scheduler: batch}\n").process.scheduler == "batch"
    with pytest.raises(ConfigErrors) as caught:
        load_config_text(base + "process: {scheduler: idle}\n")
    assert "process.scheduler" in str(caught.value)


def test_normal_changes_nothing() -> None:
    before = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    assert apply_scheduler("normal") is False
    if before is not None:
        assert os.sched_getscheduler(0) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@linux_only
@pytest.mark.parametrize("scheduler", ["batch", "normal"])
def test_a_running_sidecar_has_every_thread_on_the_policy(tmp_path: Path, scheduler: str) -> None:
    """The sidecar waits for a Workload API that is not there, with its admin listener, the
    gRPC client's threads and the event loop running: every one of its threads must carry the
    configured policy (threads inherit it only if it is set before they start)."""
    admin = _free_port()
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trust_domain": "example.org",
                "workload_api": f"unix://{tmp_path}/absent.sock",
                "admin": {"listen": f"127.0.0.1:{admin}"},
                "outbound": OUTBOUND,
                "process": {"scheduler": scheduler},
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar.cli", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
                assert time.monotonic() < deadline, "the sidecar's admin listener never answered"
                time.sleep(0.1)
        policies = thread_policies(proc.pid)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    expected = os.SCHED_BATCH if scheduler == "batch" else os.SCHED_OTHER
    assert len(policies) > 1  # the event loop and the gRPC client's threads at least
    assert set(policies.values()) == {expected}, policies
