"""The mutating admission webhook (sidecar/webhook.py): AdmissionReview v1 over HTTPS.

Golden files in ``tests/golden/webhook/``: ``review-deployment-pod.json`` is an AdmissionReview
as the API server sends it for a pod a ReplicaSet creates (defaults and the service account
volume already applied); ``*.response.json`` is the webhook's answer and ``*.patched.json`` the
pod after applying the answer's JSON Patch with the ``jsonpatch`` library. Regenerate with
``UPDATE_GOLDEN=1``.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cli import main
from sidecar.inject import STATUS_ANNOTATION, InjectOptions, load_documents
from sidecar.webhook import ADMISSION_API_VERSION, RunningWebhook, review_response, start_webhook
from tests.certfactory import CertFactory, IssuedCert
from tests.processes import running_module
from tests.proxy.loopback import free_port

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
TIMEOUT = 30.0
UID = "705ab4f5-6393-11e8-b7cc-42010a800002"
OPTIONS = InjectOptions()


# --------------------------------------------------------------------------------- certificates


@dataclass
class Pki:
    """A CA and serving certificates for the webhook (SAN localhost and 127.0.0.1)."""

    ca: IssuedCert

    @classmethod
    def create(cls) -> Pki:
        return cls(CertFactory.root(uri=None, common_name="test webhook CA"))

    def issue(self, directory: Path, common_name: str = "localhost") -> tuple[Path, Path, int]:
        """Write a serving certificate; returns cert, key, serial."""
        leaf = self.ca.issue_leaf(
            None,
            subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
            dns_names=["localhost"],
            ip_addresses=["127.0.0.1"],
            eku=[ExtendedKeyUsageOID.SERVER_AUTH],
        )
        cert_file, key_file = directory / "tls.crt", directory / "tls.key"
        cert_file.write_text(leaf.pem())
        key_file.write_text(leaf.key_pem())
        return cert_file, key_file, leaf.cert.serial_number

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca.pem())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@dataclass
class Server:
    url: str
    webhook: RunningWebhook
    log: io.StringIO
    client: aiohttp.ClientSession
    cert_file: Path
    key_file: Path


@pytest.fixture
async def server(pki: Pki, tmp_path: Path) -> AsyncIterator[Server]:
    cert_file, key_file, _ = pki.issue(tmp_path)
    log = io.StringIO()
    webhook = await start_webhook(
        OPTIONS, cert_file=str(cert_file), key_file=str(key_file), reload_interval=0, log_stream=log
    )
    connector = aiohttp.TCPConnector(ssl=pki.client_context())
    client = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(TIMEOUT))
    try:
        yield Server(f"https://localhost:{webhook.port}", webhook, log, client, cert_file, key_file)
    finally:
        await client.close()
        await webhook.close()


# -------------------------------------------------------------------------------------- helpers


def review_for(pod: dict[str, Any], namespace: str = "mcp-demo", **request: Any) -> dict[str, Any]:
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "object": pod,
            **request,
        },
    }


def golden_pod(name: str, which: str = "in") -> dict[str, Any]:
    (pod,) = load_documents((GOLDEN / "inject" / f"{name}.{which}.yaml").read_text())
    assert isinstance(pod, dict)
    return pod


def decoded_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(ops, list)
    return ops


def canonical(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def check_golden(path: Path, value: Any) -> None:
    if UPDATE:
        path.write_text(canonical(value))
    assert canonical(value) == path.read_text()


# ------------------------------------------------------------------- the review (no sockets)


def test_golden_review_of_a_deployment_pod() -> None:
    review = json.loads((GOLDEN / "webhook" / "review-deployment-pod.json").read_text())
    status, body, decision = review_response(review, OPTIONS)
    assert status == 200
    check_golden(GOLDEN / "webhook" / "review-deployment-pod.response.json", body)
    response = body["response"]
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    pod = review["request"]["object"]
    patched = jsonpatch.JsonPatch(decoded_patch(response)).apply(copy.deepcopy(pod))
    check_golden(GOLDEN / "webhook" / "review-deployment-pod.patched.json", patched)
    # What matters, stated: one sidecar first among init containers, the pod's own volume kept.
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["mcp-sidecar"]
    assert [v["name"] for v in patched["spec"]["volumes"]] == [
        "kube-api-access-7x2kq",
        "mcp-sidecar-workload-api",
        "mcp-sidecar-config",
    ]
    assert patched["spec"]["volumes"][2]["configMap"]["name"] == "math-sidecar"
    assert decision.outcome == "injected" and decision.namespace == "mcp-demo"
    assert decision.name == "math-6d9f7c8b5-"
    # The patched pod is injected already: a second webhook call (reinvocation) changes nothing.
    again = copy.deepcopy(review)
    again["request"]["object"] = patched
    _, body_again, decision_again = review_response(again, OPTIONS)
    assert body_again["response"] == {"uid": review["request"]["uid"], "allowed": True}
    assert decision_again.outcome == "skipped"


@pytest.mark.parametrize("name", ["pod-minimal", "pod-existing"])
def test_patch_yields_the_same_pod_as_the_cli(name: str) -> None:
    pod = golden_pod(name)
    _, body, _ = review_response(review_for(pod), OPTIONS)
    patched = jsonpatch.JsonPatch(decoded_patch(body["response"])).apply(copy.deepcopy(pod))
    assert patched == golden_pod(name, "out")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p["spec"].update(hostNetwork=True), "hostNetwork"),
        (lambda p: None, "system namespace kube-system"),
    ],
)
def test_skips_that_warn(change: Any, reason: str) -> None:
    pod = golden_pod("pod-minimal")
    change(pod)
    namespace = "kube-system" if "system" in reason else "mcp-demo"
    status, body, decision = review_response(review_for(pod, namespace), OPTIONS)
    assert status == 200
    response = body["response"]
    assert response["uid"] == UID and response["allowed"] is True
    assert "patch" not in response and "patchType" not in response
    (warning,) = response["warnings"]
    assert warning.startswith("mcp-sidecar: not injected: ") and reason in warning
    assert decision.outcome == "skipped"


def test_already_injected_and_opted_out_are_allowed_unchanged_without_warning() -> None:
    injected = golden_pod("pod-minimal", "out")
    opted_out = golden_pod("pod-minimal")
    opted_out["metadata"]["labels"] = {"mcp-sidecar.io/inject": "false"}
    for pod in (injected, opted_out):
        _, body, _ = review_response(review_for(pod), OPTIONS)
        assert body["response"] == {"uid": UID, "allowed": True}


def test_namespace_comes_from_the_request() -> None:
    """Pods created by controllers carry no namespace of their own; the request's counts."""
    pod = golden_pod("pod-minimal")
    del pod["metadata"]["namespace"]
    _, body, _ = review_response(review_for(pod, "kube-system"), OPTIONS)
    assert "warnings" in body["response"] and "patch" not in body["response"]


@pytest.mark.parametrize(
    "request_change",
    [
        {"operation": "UPDATE"},
        {"operation": "DELETE"},
        {"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}},
        {"resource": {"group": "", "version": "v1", "resource": "pods"}, "subResource": "status"},
    ],
)
def test_requests_this_webhook_is_not_for_are_allowed_unchanged(
    request_change: dict[str, Any],
) -> None:
    status, body, decision = review_response(
        review_for(golden_pod("pod-minimal"), **request_change), OPTIONS
    )
    assert status == 200 and body["response"] == {"uid": UID, "allowed": True}
    assert decision.outcome == "ignored"


def test_pod_that_cannot_be_injected_is_denied() -> None:
    """failurePolicy Fail reasoning: asked for a sidecar, cannot get one -> not admitted."""
    pod = golden_pod("pod-minimal")
    pod["spec"]["volumes"] = [{"name": "mcp-sidecar-config", "emptyDir": {}}]
    status, body, decision = review_response(review_for(pod), OPTIONS)
    assert status == 200
    response = body["response"]
    assert response["uid"] == UID and response["allowed"] is False
    assert response["status"]["code"] == 422
    assert "volume name already used: mcp-sidecar-config" in response["status"]["message"]
    assert "patch" not in response
    assert decision.outcome == "denied"


@pytest.mark.parametrize(
    ("payload", "uid", "message"),
    [
        ([], "", "must be a JSON object"),
        ("AdmissionReview", "", "must be a JSON object"),
        ({"kind": "AdmissionReview", "request": {"uid": "u1"}}, "u1", "unsupported apiVersion"),
        (
            {
                "apiVersion": "admission.k8s.io/v1beta1",
                "kind": "AdmissionReview",
                "request": {"uid": "u2"},
            },
            "u2",
            'unsupported apiVersion "admission.k8s.io/v1beta1"',
        ),
        (
            {"apiVersion": ADMISSION_API_VERSION, "kind": "Pod", "request": {"uid": "u3"}},
            "u3",
            "kind",
        ),
        (
            {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview"},
            "",
            "request is missing",
        ),
        (
            {
                "apiVersion": ADMISSION_API_VERSION,
                "kind": "AdmissionReview",
                "request": {"uid": ""},
            },
            "",
            "request.uid",
        ),
        (
            {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "request": {"uid": 7}},
            "",
            "request.uid",
        ),
    ],
)
def test_malformed_reviews_are_400_and_deny(payload: Any, uid: str, message: str) -> None:
    status, body, decision = review_response(payload, OPTIONS)
    assert status == 400
    assert body["apiVersion"] == ADMISSION_API_VERSION and body["kind"] == "AdmissionReview"
    response = body["response"]
    assert response["uid"] == uid
    assert response["allowed"] is False
    assert response["status"]["code"] == 400 and message in response["status"]["message"]
    assert decision.outcome == "invalid"


def test_create_without_an_object_is_400() -> None:
    review = review_for(golden_pod("pod-minimal"))
    review["request"]["object"] = None
    status, body, _ = review_response(review, OPTIONS)
    assert status == 400 and body["response"]["uid"] == UID
    assert body["response"]["allowed"] is False


# -------------------------------------------------------------------------------- over HTTPS


async def test_real_admission_review_over_https(server: Server) -> None:
    pod = golden_pod("pod-minimal")
    async with server.client.post(f"{server.url}/inject", json=review_for(pod)) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["response"]["uid"] == UID and body["response"]["allowed"] is True
    patched = jsonpatch.JsonPatch(decoded_patch(body["response"])).apply(copy.deepcopy(pod))
    assert patched == golden_pod("pod-minimal", "out")
    (line,) = server.log.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "admission" and record["outcome"] == "injected"
    assert record["uid"] == UID and record["namespace"] == "mcp-demo" and record["pod"] == "math"


async def test_golden_review_over_https(server: Server) -> None:
    raw = (GOLDEN / "webhook" / "review-deployment-pod.json").read_bytes()
    headers = {"Content-Type": "application/json"}
    async with server.client.post(f"{server.url}/inject", data=raw, headers=headers) as response:
        assert response.status == 200
        body = await response.json()
    expected = json.loads((GOLDEN / "webhook" / "review-deployment-pod.response.json").read_text())
    assert body == expected


async def test_https_errors(server: Server) -> None:
    url = f"{server.url}/inject"
    async with server.client.post(url, data=b"{not json", headers=_json_type()) as response:
        assert response.status == 400
        body = await response.json()
        assert (
            body["response"]["allowed"] is False
            and "not JSON" in body["response"]["status"]["message"]
        )
    async with server.client.post(
        url, data=b"{}", headers={"Content-Type": "text/plain"}
    ) as response:
        assert response.status == 415
        assert (await response.json())["response"]["allowed"] is False
    too_big = b'{"x": "' + b"a" * (4 * 1024 * 1024) + b'"}'
    async with server.client.post(url, data=io.BytesIO(too_big), headers=_json_type()) as response:
        assert response.status == 413
    async with server.client.get(url) as response:
        assert response.status == 405
    for path in ("/healthz", "/readyz"):
        async with server.client.get(f"{server.url}{path}") as response:
            assert response.status == 200
    outcomes = [json.loads(line)["outcome"] for line in server.log.getvalue().splitlines()]
    assert outcomes == ["invalid", "invalid", "invalid"]


async def test_metrics_count_admissions_by_outcome(server: Server, pki: Pki) -> None:
    url = f"{server.url}/inject"
    async with server.client.post(url, json=review_for(golden_pod("pod-minimal"))) as response:
        assert response.status == 200
    async with server.client.post(url, data=b"{not json", headers=_json_type()) as response:
        assert response.status == 400
    async with server.client.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    admissions = {
        s.labels["outcome"]: s.value
        for s in families["mcp_sidecar_webhook_admissions"].samples
        if s.name.endswith("_total")
    }
    assert admissions["injected"] == 1.0 and admissions["invalid"] == 1.0
    assert admissions["denied"] == 0.0
    (count,) = [
        s.value
        for s in families["mcp_sidecar_webhook_request_duration_seconds"].samples
        if s.name.endswith("_count")
    ]
    assert count == 2.0
    (expiry,) = families["mcp_sidecar_webhook_certificate_expiry_timestamp_seconds"].samples
    leaf = x509.load_pem_x509_certificate(server.cert_file.read_bytes())
    assert expiry.value == leaf.not_valid_after_utc.timestamp()
    (reloads,) = [
        s
        for s in families["mcp_sidecar_webhook_certificate_reloads"].samples
        if s.name.endswith("_total")
    ]
    assert reloads.value == 0.0


def _json_type() -> dict[str, str]:
    return {"Content-Type": "application/json"}


async def test_plain_http_is_refused(server: Server) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.post(
                f"http://127.0.0.1:{server.webhook.port}/inject",
                json=review_for(golden_pod("pod-minimal")),
                timeout=aiohttp.ClientTimeout(5),
            ) as response:
                await response.read()


async def test_untrusted_client_cannot_verify_the_server(server: Server) -> None:
    """The client checks the webhook against the caBundle: another CA's client fails."""
    other = Pki.create()
    connector = aiohttp.TCPConnector(ssl=other.client_context())
    async with aiohttp.ClientSession(connector=connector) as client:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with client.get(f"{server.url}/healthz") as response:
                await response.read()


def _peer_serial(port: int, pki: Pki) -> int:
    context = pki.client_context()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_certificate_files_are_reloaded(pki: Pki, tmp_path: Path) -> None:
    cert_file, key_file, first = pki.issue(tmp_path)
    webhook = await start_webhook(
        OPTIONS, cert_file=str(cert_file), key_file=str(key_file), reload_interval=0
    )
    try:
        assert await asyncio.to_thread(_peer_serial, webhook.port, pki) == first
        assert webhook.tls.check() is False  # nothing changed
        # cert-manager / kubelet replace both files; the next handshake gets the new one.
        staging = tmp_path / "new"
        staging.mkdir()
        new_cert, new_key, second = pki.issue(staging)
        os.replace(new_key, key_file)
        os.replace(new_cert, cert_file)
        assert webhook.tls.check() is True
        assert await asyncio.to_thread(_peer_serial, webhook.port, pki) == second
        # A broken update (half-written file) keeps the certificate in use.
        cert_file.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
        assert webhook.tls.check() is False
        assert await asyncio.to_thread(_peer_serial, webhook.port, pki) == second
        assert webhook.tls.reloads == 1
    finally:
        await webhook.close()


async def test_webhook_command_serves_and_stops_on_sigterm(pki: Pki, tmp_path: Path) -> None:
    """``mcp-sidecar webhook`` as the injector Deployment runs it."""
    cert_file, key_file, _ = pki.issue(tmp_path)
    port = free_port()
    async with running_module(
        "sidecar.cli",
        "webhook",
        f"--listen=127.0.0.1:{port}",
        f"--tls-cert={cert_file}",
        f"--tls-key={key_file}",
        "--image=mcp-sidecar:test",
        "--config-map=fallback-policy",
    ) as proc:
        try:
            connector = aiohttp.TCPConnector(ssl=pki.client_context())
            async with aiohttp.ClientSession(connector=connector) as client:
                body: dict[str, Any] = {}
                async with asyncio.timeout(TIMEOUT):
                    while not body:
                        try:
                            async with client.post(
                                f"https://localhost:{port}/inject",
                                json=review_for(golden_pod("pod-minimal")),
                            ) as response:
                                body = await response.json()
                        except aiohttp.ClientConnectorError:
                            await asyncio.sleep(0.1)
            ops = decoded_patch(body["response"])
            patched = jsonpatch.JsonPatch(ops).apply(golden_pod("pod-minimal"))
            assert patched["spec"]["initContainers"][0]["image"] == "mcp-sidecar:test"
            assert patched["spec"]["volumes"][1]["configMap"]["name"] == "fallback-policy"
            assert STATUS_ANNOTATION in patched["metadata"]["annotations"]
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[0])["outcome"] == "injected"


def test_webhook_command_rejects_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = [f"--tls-cert={tmp_path / 'missing.crt'}", f"--tls-key={tmp_path / 'missing.key'}"]
    assert main(["webhook", "--listen=nonsense", *missing]) == 1
    assert "--listen" in capsys.readouterr().err
    assert main(["webhook", "--listen=127.0.0.1:0", *missing]) == 1
    assert "cannot start the webhook" in capsys.readouterr().err
