"""deploy/kind/*.sh pass shellcheck, the Dockerfile passes hadolint and the checklist of
docs/kubernetes.md ("Dockerfile checklist"), and webhook-cert.sh makes a certificate the
webhook can serve to the API server."""

from __future__ import annotations

import io
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from sidecar import inject
from sidecar.inject import InjectOptions
from sidecar.webhook import start_webhook

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "deploy" / "kind").glob("*.sh"))
DOCKERFILE = ROOT / "Dockerfile"
INJECTOR_HOST = "mcp-sidecar-injector.mcp-sidecar-system.svc"


def tool(name: str) -> str | None:
    """A binary installed by the dev extras into this venv, else from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def test_the_scripts_exist() -> None:
    assert [p.name for p in SCRIPTS] == ["down.sh", "up.sh", "webhook-cert.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_shape(script: Path) -> None:
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    result = subprocess.run(
        ["bash", "-n", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck missing: install the dev extras (pip install -e '.[dev]')")
    result = subprocess.run(
        [shellcheck, "--severity=style", "--external-sources", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_is_not_vacuous(tmp_path: Path) -> None:
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck missing: install the dev extras (pip install -e '.[dev]')")
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/*\n")
    result = subprocess.run([shellcheck, str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "SC2086" in result.stdout


def test_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("no hadolint wheel for this platform: see the checklist test below")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(item.split(" ", 1)[0].upper(), item.split(" ", 1)[1]) for item in logical]


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage name (``FROM x AS name``), ``""`` before the first."""
    by_stage: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for name, args in dockerfile_instructions():
        if name == "FROM":
            current = args.split(" AS ")[1]
            by_stage[current] = []
        by_stage[current].append((name, args))
    return by_stage


def test_dockerfile_checklist() -> None:
    """docs/kubernetes.md "Dockerfile checklist", automated."""
    instructions = dockerfile_instructions()
    by_stage = stages()
    assert list(by_stage) == ["", "build", "build-demo", "base", "demo", "runtime"]
    assert list(by_stage)[-1] == "runtime"  # the default target
    arg = next(args for name, args in instructions if name == "ARG")
    image, _, digest = arg.partition("@")
    assert image == "PYTHON_IMAGE=python:3.11-slim-bookworm"  # slim, pinned minor version
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest)  # and pinned by digest
    assert by_stage["build"][0][1] == "${PYTHON_IMAGE} AS build"
    assert by_stage["base"][0][1] == "${PYTHON_IMAGE} AS base"  # the clean base of both images
    assert "HEALTHCHECK" not in [name for name, _ in instructions]
    assert not any(name == "VOLUME" for name, _ in instructions)  # nothing written at run time
    # The shipped images: their filesystem is base + one venv copied from a build stage.
    base_runs = " ".join(args for name, args in by_stage["base"] if name == "RUN")
    assert "pip uninstall --yes --quiet pip setuptools wheel" in base_runs  # no pip, setuptools
    for image, builder in (("runtime", "build"), ("demo", "build-demo")):
        steps = by_stage[image]
        names = [name for name, _ in steps]
        assert steps[0][1] == f"base AS {image}"
        assert names.count("RUN") == 0  # nothing installed in the shipped stage itself
        assert [args for name, args in steps if name == "COPY"] == [
            f"--from={builder} /opt/mcp-sidecar /opt/mcp-sidecar"
        ]
        assert next(args for name, args in steps if name == "USER") == (
            f"{inject.SIDECAR_UID}:{inject.SIDECAR_UID}"  # numeric: runAsNonRoot works
        )
        assert names.index("USER") > names.index("COPY")
        assert next(args for name, args in steps if name == "ENTRYPOINT") == '["mcp-sidecar"]'
    env = " ".join(args for name, args in by_stage["base"] if name == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    # Every third-party package from a lock, by hash, and without resolving anything more.
    pip_installs = [
        part
        for name, args in instructions
        if name == "RUN"
        for part in args.split("&&")
        if "pip install" in part or "pip --python" in part
    ]
    assert pip_installs and all("--no-cache-dir" in part for part in pip_installs)
    for part in pip_installs:
        assert "--no-deps" in part, part
        if " -r " in part:
            assert "--require-hashes" in part and "requirements/" in part, part
        else:
            assert "/wheels/mcp_sidecar-" in part, part  # our own wheel, built from this tree
    locks = {m for part in pip_installs for m in re.findall(r"requirements/[a-z]+\.lock", part)}
    assert locks == {
        "requirements/build.lock",
        "requirements/tracing.lock",
        "requirements/demo.lock",
    }
    copies = [args for name, args in instructions if name == "COPY" and "--from" not in args]
    assert copies == [
        "requirements ./requirements",
        "pyproject.toml README.md LICENSE ./",
        "sidecar ./sidecar",
    ]


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "**"
    assert {line[1:].rstrip("/") for line in lines if line.startswith("!")} == {
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "requirements",
        "sidecar",
    }


def test_deployments_run_as_the_image_user() -> None:
    text = (ROOT / "deploy" / "injector" / "deployment.yaml").read_text()
    assert f"runAsUser: {inject.SIDECAR_UID}" in text
    assert inject.sidecar_container("x", InjectOptions())["securityContext"]["runAsUser"] == 10001


# --------------------------------------------------------------------------- webhook-cert.sh


@pytest.fixture(scope="module")
def cert_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path_factory.mktemp("certs")
    result = subprocess.run(
        ["bash", str(ROOT / "deploy" / "kind" / "webhook-cert.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    yield out


def test_webhook_cert_files(cert_dir: Path) -> None:
    assert sorted(p.name for p in cert_dir.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    for key in ("ca.key", "tls.key"):
        assert (cert_dir / key).stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    ca = x509.load_pem_x509_certificate((cert_dir / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((cert_dir / "tls.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert INJECTOR_HOST in names.get_values_for_type(x509.DNSName)
    leaf.verify_directly_issued_by(ca)


async def test_webhook_serves_the_scripts_certificate(cert_dir: Path) -> None:
    """What the API server does: verify the webhook by the caBundle and the Service DNS name."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a"}]},
    }
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "mcp-demo",
            "operation": "CREATE",
            "object": pod,
        },
    }
    webhook = await start_webhook(
        InjectOptions(),
        cert_file=str(cert_dir / "tls.crt"),
        key_file=str(cert_dir / "tls.key"),
        reload_interval=0,
        log_stream=io.StringIO(),
    )
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    try:
        async with aiohttp.ClientSession() as client:
            # Connect to this machine, but check the certificate for the Service's DNS name.
            async with client.post(
                f"https://127.0.0.1:{webhook.port}/inject",
                json=review,
                ssl=context,
                server_hostname=INJECTOR_HOST,
            ) as response:
                assert response.status == 200
                body = await response.json()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with client.get(
                    f"https://127.0.0.1:{webhook.port}/healthz",
                    ssl=context,
                    server_hostname="someone-else.mcp-sidecar-system.svc",
                ):
                    pass
    finally:
        await webhook.close()
    response = body["response"]
    assert response["uid"] == "u-1" and response["allowed"] is True and "patch" in response
