"""What we ship matches what runs: ``pip install mcp-sidecar`` (no extras) brings exactly what
``mcp-sidecar run`` imports, the demo extra stays out of it, and the image's locks
(requirements/*.lock) pin exactly pyproject's dependencies.

The import boundary is checked in this venv (which has the dev and demo extras too): a
``mcp-sidecar run`` process whose imports of any distribution outside the runtime dependency
closure fail (a meta path hook), serving a real request through mTLS, a JWT-SVID and a policy
with a regex, from the dev Workload API.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata as md
import json
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from sidecar.cli import DEMO_EXTRA_MISSING, DEMO_PACKAGES
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from tests.polling import until_ready
from tests.proxy.loopback import free_port
from tests.proxy.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
WAIT = 30.0
ME = "spiffe://example.org/ns/mcp/sa/math"

#: Runtime dependencies that a running sidecar may not have imported yet, and which module
#: imports them when needed.
LAZY = {"aiohttp": "sidecar.webhook"}  # also sidecar.proxy.fetch, on the first JWKS fetch

#: Optional imports that a runtime dependency itself tries and does without (as it must in an
#: installation without the dev extra, which is what blocking them reproduces).
OPTIONAL_PROBES = {"grpc_tools"}  # grpc/__init__.py: `try: import grpc_tools`

#: Runs ``sidecar.cli.main`` with every import of a blocked module failing; writes what was
#: attempted and what got imported to $IMPORT_REPORT at exit.
GUARDED_CLI = """
import atexit, importlib.abc, json, os, sys
blocked = set(json.loads(os.environ["BLOCKED_MODULES"]))
prefixes = tuple(json.loads(os.environ["BLOCKED_PREFIXES"]))
attempts = []
class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked or name.startswith(prefixes):
            attempts.append(name)
            raise ModuleNotFoundError(f"blocked by the test: {name}", name=name)
        return None
sys.meta_path.insert(0, Guard())
def report():
    with open(os.environ["IMPORT_REPORT"], "w") as out:
        json.dump({"attempts": attempts, "modules": sorted(sys.modules)}, out)
atexit.register(report)
from sidecar.cli import main
sys.exit(main(sys.argv[1:]))
"""


# ------------------------------------------------------------------ the runtime dependency set


def runtime_requirements() -> list[Requirement]:
    return [Requirement(text) for text in PYPROJECT["project"]["dependencies"]]


def runtime_closure() -> set[str]:
    """Canonical names of the distributions ``pip install mcp-sidecar`` installs here."""
    seen: set[str] = {"mcp-sidecar"}
    todo = [(req, frozenset(req.extras)) for req in runtime_requirements()]
    # (a TypedDict unpacks as dict[str, object]: its values are strings, said so here)
    env = {name: str(value) for name, value in default_environment().items()}
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(
            req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})
        ):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        for text in md.requires(name) or []:
            child = Requirement(text)
            if child.marker is None or any(
                child.marker.evaluate({**env, "extra": e}) for e in (req.extras or {""})
            ):
                todo.append((child, frozenset(child.extras)))
    return seen


@functools.cache
def module_owners() -> dict[str, set[str]]:
    """Top-level module name -> canonical names of the installed distributions providing it."""
    return {
        module: {canonicalize_name(d) for d in dists}
        for module, dists in md.packages_distributions().items()
    }


def blocked_modules(allowed: set[str]) -> list[str]:
    """Top-level modules that only distributions outside ``allowed`` provide."""
    return sorted(m for m, owners in module_owners().items() if not owners & allowed)


def guard_env(report: Path, blocked: list[str], prefixes: list[str]) -> dict[str, str]:
    return {
        **os.environ,
        "BLOCKED_MODULES": json.dumps(blocked),
        "BLOCKED_PREFIXES": json.dumps(prefixes),
        "IMPORT_REPORT": str(report),
    }


def test_the_runtime_closure_has_no_demo_or_test_package() -> None:
    closure = runtime_closure()
    assert {"grpcio", "cryptography", "pyjwt", "google-re2", "uvloop"} <= closure
    assert not closure & {"mcp", "starlette", "uvicorn", "pydantic", "httpx2", "anyio", "spiffe"}
    owners = module_owners()
    assert all(owners[m].isdisjoint(closure) for m in DEMO_PACKAGES if m in owners)


# ------------------------------------------------------------------------- the import boundary


def sidecar_config(sock: str, upstream_port: int) -> tuple[dict[str, Any], int, int]:
    """One sidecar that calls itself: outbound route -> its own inbound (mTLS, JWT-SVID,
    a policy with a regex) -> the upstream. Returns (config, admin port, outbound port)."""
    admin, inbound, outbound = free_port(), free_port(), free_port()
    config = {
        "trust_domain": "example.org",
        "workload_api": sock,
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "inbound": {
            "listen": f"127.0.0.1:{inbound}",
            "upstream": f"http://127.0.0.1:{upstream_port}",
            "allow_spiffe_ids": [ME],
            "jwt_svid": {"audiences": [ME]},
            "mcp_policy": {
                "default": "deny",
                "rules": [
                    {"name": "echo", "tools": ["echo"], "arguments": {"text": {"regex": "[a-z]+"}}}
                ],
            },
        },
        "outbound": {
            "listen": f"127.0.0.1:{outbound}",
            "routes": [
                {
                    "name": "self",
                    "path_prefix": "/self",
                    "upstream": f"https://127.0.0.1:{inbound}",
                    "server_spiffe_id": ME,
                    "jwt_svid_audience": ME,
                }
            ],
        },
    }
    return config, admin, outbound


async def test_run_imports_exactly_the_runtime_dependencies(short_dir: Path) -> None:
    closure = runtime_closure()
    sock = f"unix://{short_dir}/agent.sock"
    ca = DevCA.load_or_create(short_dir / "state", "example.org")
    upstream = await RecordingUpstream().start()
    config, admin, outbound = sidecar_config(sock, upstream.port)
    path = short_dir / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    report = short_dir / "imports.json"
    env = guard_env(report, blocked_modules(closure), ["sidecar.dev", "sidecar.demo."])
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello"}},
    }
    try:
        async with DevWorkloadApi(ca, {sock: ME}):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", GUARDED_CLI, "run", "-c", str(path), env=env, cwd=ROOT
            )
            try:
                async with aiohttp.ClientSession() as session:
                    await until_ready(session, admin, WAIT)
                    async with session.post(
                        f"http://127.0.0.1:{outbound}/self/mcp", json=call
                    ) as resp:
                        status = resp.status
                proc.send_signal(signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), WAIT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        await upstream.close()
    assert status == 200 and len(upstream.requests) == 1  # through mTLS, token, policy
    assert proc.returncode == 0
    found = json.loads(report.read_text())
    assert set(found["attempts"]) <= OPTIONAL_PROBES  # we tried nothing outside the runtime set
    owners = module_owners()
    imported = {d for m in found["modules"] for d in owners.get(m.partition(".")[0], ())}
    direct = {canonicalize_name(r.name) for r in runtime_requirements()}
    assert direct - imported == set(LAZY)  # every runtime dependency is used ...
    for dist, module in LAZY.items():  # ... the lazy ones by the module that needs them
        probe = f"import {module}, sys; print({dist!r} in sys.modules)"
        result = await asyncio.create_subprocess_exec(
            sys.executable, "-c", probe, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(result.communicate(), WAIT)
        assert out.strip() == b"True"


async def test_demo_without_the_demo_extra_says_which_extra_in_one_line(short_dir: Path) -> None:
    report = short_dir / "imports.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        GUARDED_CLI,
        "demo",
        env=guard_env(report, sorted(DEMO_PACKAGES), []),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), WAIT)
    assert proc.returncode == 1
    assert err.decode() == DEMO_EXTRA_MISSING + "\n"
    assert "mcp-sidecar[demo]" in DEMO_EXTRA_MISSING
    assert json.loads(report.read_text())["attempts"]  # the SDK was asked for, and refused


# --------------------------------------------------------------------------------- the locks


def read_lock(name: str) -> dict[str, dict[str, Any]]:
    """``requirements/<name>.lock`` as {canonical name: {version, marker, hashes, via}}."""
    entries: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    in_via = False
    for line in (ROOT / "requirements" / f"{name}.lock").read_text().splitlines():
        stripped = line.strip()
        if line and not line[0].isspace() and not line.startswith("#"):
            req = Requirement(line.rstrip(" \\"))
            (spec,) = req.specifier
            assert spec.operator == "==", line
            current = {"version": Version(spec.version), "marker": req.marker, "hashes": []}
            current["via"] = []
            entries[canonicalize_name(req.name)] = current
            in_via = False
        elif current is not None and stripped.startswith("--hash=sha256:"):
            current["hashes"].append(stripped.split(":", 1)[1].rstrip(" \\"))
        elif current is not None and stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current["via"].append(rest)
        elif current is not None and in_via and stripped.startswith("#   "):
            current["via"].append(stripped.removeprefix("#").strip())
    return entries


def direct_entries(lock: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: e for n, e in lock.items() if "mcp-sidecar (pyproject.toml)" in e["via"]}


def assert_pins(requirements: list[Requirement], lock: dict[str, dict[str, Any]]) -> None:
    direct = direct_entries(lock)
    assert set(direct) == {canonicalize_name(r.name) for r in requirements}
    for req in requirements:
        entry = direct[canonicalize_name(req.name)]
        assert req.specifier.contains(entry["version"], prereleases=True), (req, entry)
        assert str(entry["marker"] or "") == str(req.marker or ""), req


def test_runtime_lock_pins_exactly_the_runtime_dependencies() -> None:
    lock = read_lock("runtime")
    assert_pins(runtime_requirements(), lock)
    assert all(entry["hashes"] for entry in lock.values())
    assert all(len(h) == 64 for entry in lock.values() for h in entry["hashes"])


@pytest.mark.parametrize("extra_name", ["demo", "tracing"])
def test_an_extras_lock_adds_the_extra_and_keeps_the_runtime_versions(extra_name: str) -> None:
    runtime, locked = read_lock("runtime"), read_lock(extra_name)
    extras = PYPROJECT["project"]["optional-dependencies"][extra_name]
    assert_pins(runtime_requirements() + [Requirement(text) for text in extras], locked)
    assert all(entry["hashes"] for entry in locked.values())
    assert {n: e["version"] for n, e in runtime.items()} == {
        n: locked[n]["version"] for n in runtime
    }


def test_build_lock_pins_a_backend_pyproject_accepts() -> None:
    (backend,) = [Requirement(text) for text in PYPROJECT["build-system"]["requires"]]
    lock = read_lock("build")
    assert set(lock) == {canonicalize_name(backend.name)}
    assert backend.specifier.contains(lock["setuptools"]["version"])
    assert lock["setuptools"]["hashes"]


def test_lock_reader_sees_a_mismatch(tmp_path: Path) -> None:
    """The checks above can fail: a dependency missing from the lock, or pinned outside its
    specifier, is caught."""
    lock = read_lock("runtime")
    missing = dict(lock)
    del missing["grpcio"]
    with pytest.raises(AssertionError):
        assert_pins(runtime_requirements(), missing)
    stale = {n: dict(e) for n, e in lock.items()}
    stale["protobuf"]["version"] = Version("6.31.1")
    with pytest.raises(AssertionError):
        assert_pins(runtime_requirements(), stale)
    extra = [*runtime_requirements(), Requirement("requests>=2")]
    with pytest.raises(AssertionError):
        assert_pins(extra, lock)
