"""The dev Workload API speaks the real protocol: py-spiffe's client and raw gRPC calls read it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from sidecar.cli import main as cli_main
from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevServerError, DevWorkloadApi, parse_endpoint
from sidecar.identity.proto import workload_pb2, workload_pb2_grpc
from sidecar.identity.snapshot import snapshot_from_x509_response, split_der_certificates
from sidecar.spiffe.ids import SpiffeId
from tests.processes import run_module, running_module

AGENT = "spiffe://example.org/ns/agents/sa/agent"
MATH = "spiffe://example.org/ns/mcp/sa/math"
HEADER = (("workload.spiffe.io", "true"),)
ROOT = Path(__file__).resolve().parents[2]
WAIT = 10.0


@pytest.fixture(scope="module")
def other_ca() -> DevCA:
    return DevCA.generate("other.org", jwt_alg="RS256")


def _target(url: str) -> str:
    return url.removeprefix("tcp://")


@contextlib.asynccontextmanager
async def raw_stub(url: str) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(_target(url)) as channel:
        yield workload_pb2_grpc.SpiffeWorkloadAPIStub(channel)  # type: ignore[no-untyped-call]  # generated gRPC code: no annotations


def _leaf_serial(message: Any) -> int:
    return split_der_certificates(message.svids[0].x509_svid)[0].serial_number


def _exists(path: str) -> bool:
    return os.path.lexists(path)


async def py_spiffe(url: str, *, jwt_audience: str | None = None) -> dict[str, Any]:
    """What py-spiffe's client reads from ``url`` (``tests/dev/py_spiffe_probe.py``, run in an
    interpreter of its own)."""
    args = ["--jwt-audience", jwt_audience] if jwt_audience else []
    code, out, err = await run_module(
        "tests.dev.py_spiffe_probe", url, "--timeout", str(WAIT), *args, cwd=ROOT, timeout=60
    )
    assert code == 0, err
    found: dict[str, Any] = json.loads(out)
    return found


def der_hex(cert: Any) -> str:
    return str(cert.public_bytes(Encoding.DER).hex())


async def _read(call: Any) -> Any:
    message = await asyncio.wait_for(call.read(), WAIT)
    assert message is not grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lacks grpc.aio.EOF
    return message


# ------------------------------------------------------------------------------------ py-spiffe


async def test_py_spiffe_reads_x509_context(short_dir: Path, ca: DevCA, other_ca: DevCA) -> None:
    sock = f"{short_dir}/agent.sock"
    async with DevWorkloadApi(ca, {sock: AGENT}, federated=[other_ca]) as api:
        url = api.endpoints[AGENT]
        assert url == f"unix://{sock}"
        context = await py_spiffe(url)
        assert context["leaf"] == der_hex(api.current_svid(AGENT).leaf)
    assert context["spiffe_id"] == AGENT
    assert context["x509_bundles"] == {
        "example.org": [der_hex(ca.ca_cert)],
        "other.org": [der_hex(other_ca.ca_cert)],
    }


async def test_py_spiffe_jwt_svid_and_bundles(short_dir: Path, ca: DevCA, other_ca: DevCA) -> None:
    async with DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT}, federated=[other_ca]) as api:
        found = (await py_spiffe(api.endpoints[AGENT], jwt_audience=MATH))["jwt"]
    assert found["spiffe_id"] == AGENT
    assert found["audience"] == [MATH]
    assert found["validated"] == AGENT
    assert found["checked"] == AGENT  # parse_and_validate against the JWT bundle it fetched
    assert other_ca.jwt_kid in found["bundle_kids"]["other.org"]
    assert ca.jwt_kid in found["bundle_kids"]["example.org"]


# ------------------------------------------------------------------------------------ raw gRPC


async def test_x509_response_matches_the_wire_format(
    short_dir: Path, ca: DevCA, other_ca: DevCA
) -> None:
    async with (
        DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT}, federated=[other_ca]) as api,
        raw_stub(api.endpoints[AGENT]) as stub,
    ):
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        message = await _read(call)
        call.cancel()
        bundles_call = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
        bundles = await _read(bundles_call)
        bundles_call.cancel()
    assert dict(message.federated_bundles) == {"spiffe://other.org": other_ca.x509_bundle_der()}
    assert dict(bundles.bundles) == {
        "spiffe://example.org": ca.x509_bundle_der(),
        "spiffe://other.org": other_ca.x509_bundle_der(),
    }
    snapshot = snapshot_from_x509_response(message)
    assert str(snapshot.svid.spiffe_id) == AGENT
    assert dict(snapshot.bundles) == {
        "example.org": (ca.ca_cert,),
        "other.org": (other_ca.ca_cert,),
    }


@pytest.mark.parametrize("metadata", [(), (("workload.spiffe.io", "false"),)])
async def test_calls_without_security_header_are_refused(
    short_dir: Path, ca: DevCA, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with (
        DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT}) as api,
        raw_stub(api.endpoints[AGENT]) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as unary:
            await asyncio.wait_for(
                stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["a"]), metadata=metadata),
                WAIT,
            )
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            await asyncio.wait_for(call.read(), WAIT)
    for err in (unary.value, stream.value):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details() == "security header missing from request"


async def test_fetch_jwt_svid_argument_checks(short_dir: Path, ca: DevCA) -> None:
    async with (
        DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT}) as api,
        raw_stub(api.endpoints[AGENT]) as stub,
    ):

        async def fetch(**kwargs: Any) -> Any:
            request = workload_pb2.JWTSVIDRequest(**kwargs)
            return await asyncio.wait_for(stub.FetchJWTSVID(request, metadata=HEADER), WAIT)

        with pytest.raises(grpc.aio.AioRpcError) as no_audience:
            await fetch(audience=[])
        with pytest.raises(grpc.aio.AioRpcError) as wrong_id:
            await fetch(audience=["a"], spiffe_id=MATH)
        with pytest.raises(grpc.aio.AioRpcError) as bad_id:
            await fetch(audience=["a"], spiffe_id="https://example.org/x")
        ok = await fetch(audience=["a"], spiffe_id=AGENT)
    assert no_audience.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert wrong_id.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [s.spiffe_id for s in ok.svids] == [AGENT]
    assert jwt.decode(ok.svids[0].svid, options={"verify_signature": False})["sub"] == AGENT


async def test_validate_jwt_svid(short_dir: Path, ca: DevCA, other_ca: DevCA) -> None:
    async with (
        DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT}, federated=[other_ca]) as api,
        raw_stub(api.endpoints[AGENT]) as stub,
    ):

        async def validate(token: str, audience: str) -> Any:
            request = workload_pb2.ValidateJWTSVIDRequest(svid=token, audience=audience)
            return await asyncio.wait_for(stub.ValidateJWTSVID(request, metadata=HEADER), WAIT)

        own = ca.issue_jwt_svid(SpiffeId.parse(AGENT), [MATH], dt.timedelta(minutes=1))
        foreign_id = SpiffeId.parse("spiffe://other.org/ns/x")
        federated = other_ca.issue_jwt_svid(foreign_id, [MATH], dt.timedelta(minutes=1))
        result = await validate(own, MATH)
        federated_result = await validate(federated, MATH)
        stranger = DevCA.generate("example.org").issue_jwt_svid(
            SpiffeId.parse(AGENT), [MATH], dt.timedelta(minutes=1)
        )
        failures = {}
        for name, token, audience in [
            ("wrong audience", own, "spiffe://example.org/other"),
            ("unknown key", stranger, MATH),
            ("garbage", "not.a.jwt", MATH),
            ("no audience", own, ""),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await validate(token, audience)
            failures[name] = err.value.code()
    assert result.spiffe_id == AGENT
    assert result.claims["sub"] == AGENT
    assert list(result.claims["aud"]) == [MATH]
    assert federated_result.spiffe_id == "spiffe://other.org/ns/x"
    assert set(failures.values()) == {grpc.StatusCode.INVALID_ARGUMENT}


# ------------------------------------------------------------------------------------ streams


async def test_rotation_pushes_a_new_svid_at_half_life(short_dir: Path, ca: DevCA) -> None:
    api = DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT}, x509_ttl=dt.timedelta(seconds=2))
    async with api, raw_stub(api.endpoints[AGENT]) as stub:
        call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        first = await _read(call)
        second = await _read(call)
        call.cancel()
    assert _leaf_serial(first) != _leaf_serial(second)
    assert first.svids[0].x509_svid_key != second.svids[0].x509_svid_key
    assert second.svids[0].spiffe_id == AGENT


async def test_rotate_now_reaches_every_stream(short_dir: Path, ca: DevCA) -> None:
    api = DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT, f"{short_dir}/m.sock": MATH})
    async with (
        api,
        raw_stub(api.endpoints[AGENT]) as agent_stub,
        raw_stub(api.endpoints[MATH]) as math_stub,
    ):
        calls = [
            stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            for stub in (agent_stub, math_stub)
        ]
        before = [_leaf_serial(await _read(c)) for c in calls]
        api.rotate_now()
        after_messages = [await _read(c) for c in calls]
        for c in calls:
            c.cancel()
    assert [m.svids[0].spiffe_id for m in after_messages] == [AGENT, MATH]
    after = [_leaf_serial(m) for m in after_messages]
    assert after[0] != before[0] and after[1] != before[1]
    assert after == [api.current_svid(AGENT).serial_number, api.current_svid(MATH).serial_number]


async def test_extra_cas_are_pushed_and_removed(
    short_dir: Path, ca: DevCA, other_ca: DevCA
) -> None:
    extra = DevCA.generate("example.org").ca_cert
    api = DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT})
    async with api, raw_stub(api.endpoints[AGENT]) as stub:
        svids = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        bundles = stub.FetchX509Bundles(workload_pb2.X509BundlesRequest(), metadata=HEADER)
        initial = await _read(svids), await _read(bundles)
        api.set_extra_cas([extra])
        added = await _read(svids), await _read(bundles)
        api.set_extra_cas([])
        removed = await _read(svids), await _read(bundles)
        svids.cancel()
        bundles.cancel()

    def own_bundle(pair: tuple[Any, Any]) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        svid_message, bundles_message = pair
        return (
            split_der_certificates(svid_message.svids[0].bundle),
            split_der_certificates(bundles_message.bundles["spiffe://example.org"]),
        )

    assert own_bundle(initial) == ((ca.ca_cert,), (ca.ca_cert,))
    assert own_bundle(added) == ((ca.ca_cert, extra), (ca.ca_cert, extra))
    assert own_bundle(removed) == ((ca.ca_cert,), (ca.ca_cert,))
    # A bundle change does not rotate the SVID.
    assert _leaf_serial(initial[0]) == _leaf_serial(added[0]) == _leaf_serial(removed[0])


async def test_federation_changes_are_pushed(short_dir: Path, ca: DevCA, other_ca: DevCA) -> None:
    api = DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT})
    async with api, raw_stub(api.endpoints[AGENT]) as stub:
        jwt_call = stub.FetchJWTBundles(workload_pb2.JWTBundlesRequest(), metadata=HEADER)
        x509_call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
        jwt_before, x509_before = await _read(jwt_call), await _read(x509_call)
        api.set_federated([other_ca])
        jwt_after, x509_after = await _read(jwt_call), await _read(x509_call)
        jwt_call.cancel()
        x509_call.cancel()
    assert dict(jwt_before.bundles) == {"spiffe://example.org": ca.jwt_bundle_json()}
    assert dict(jwt_after.bundles) == {
        "spiffe://example.org": ca.jwt_bundle_json(),
        "spiffe://other.org": other_ca.jwt_bundle_json(),
    }
    assert dict(x509_before.federated_bundles) == {}
    assert dict(x509_after.federated_bundles) == {"spiffe://other.org": other_ca.x509_bundle_der()}


async def test_streams_end_cleanly_when_the_server_stops(short_dir: Path, ca: DevCA) -> None:
    api = DevWorkloadApi(ca, {f"{short_dir}/a.sock": AGENT})
    await api.start()
    try:
        async with raw_stub(api.endpoints[AGENT]) as stub:
            call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            await _read(call)
            await api.stop()
            end = await asyncio.wait_for(call.read(), WAIT)
            code = await asyncio.wait_for(call.code(), WAIT)
    finally:
        await api.stop()
    assert end is grpc.aio.EOF  # type: ignore[attr-defined]  # grpc-stubs lacks grpc.aio.EOF
    assert code == grpc.StatusCode.OK
    assert not _exists(f"{short_dir}/a.sock")


# ------------------------------------------------------------------------------------ endpoints


async def test_restart_on_the_same_socket_and_state_dir(short_dir: Path) -> None:
    sock = f"{short_dir}/agent.sock"
    first_ca = DevCA.load_or_create(short_dir / "state", "example.org")
    async with DevWorkloadApi(first_ca, {sock: AGENT}):
        pass
    # A socket file left behind by a crashed run must not stop the next one either.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(sock)
    assert _exists(sock)

    second_ca = DevCA.load_or_create(short_dir / "state", "example.org")
    async with DevWorkloadApi(second_ca, {f"unix://{sock}": AGENT}) as api:
        context = await py_spiffe(api.endpoints[AGENT])
    assert context["x509_bundles"]["example.org"] == [der_hex(first_ca.ca_cert)]


async def test_never_removes_a_path_that_is_not_a_socket(short_dir: Path, ca: DevCA) -> None:
    regular = short_dir / "agent.sock"
    regular.write_text("keep me")
    api = DevWorkloadApi(ca, {str(regular): AGENT})
    with pytest.raises(DevServerError, match="not a socket"):
        await api.start()
    assert regular.read_text() == "keep me"


async def test_refuses_a_socket_another_server_listens_on(short_dir: Path, ca: DevCA) -> None:
    sock = f"{short_dir}/agent.sock"
    async with DevWorkloadApi(ca, {sock: AGENT}) as first:
        with pytest.raises(DevServerError, match="already listening"):
            await DevWorkloadApi(ca, {sock: MATH}).start()
        # The first server is unaffected.
        async with raw_stub(first.endpoints[AGENT]) as stub:
            call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            assert (await _read(call)).svids[0].spiffe_id == AGENT
            call.cancel()


async def test_tcp_endpoint_with_port_zero(ca: DevCA) -> None:
    async with DevWorkloadApi(ca, {"tcp://127.0.0.1:0": MATH}) as api:
        url = api.endpoints[MATH]
        assert url.startswith("tcp://127.0.0.1:") and not url.endswith(":0")
        async with raw_stub(url) as stub:
            call = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=HEADER)
            message = await _read(call)
            call.cancel()
            response = await asyncio.wait_for(
                stub.FetchJWTSVID(workload_pb2.JWTSVIDRequest(audience=["x"]), metadata=HEADER),
                WAIT,
            )
    assert message.svids[0].spiffe_id == MATH
    assert response.svids[0].spiffe_id == MATH


@pytest.mark.parametrize(
    ("text", "kind", "url"),
    [
        ("/run/a.sock", "unix", "unix:///run/a.sock"),
        ("unix:///run/a.sock", "unix", "unix:///run/a.sock"),
        ("tcp://127.0.0.1:0", "tcp", "tcp://127.0.0.1:0"),
        ("tcp://[::1]:8081", "tcp", "tcp://[::1]:8081"),
    ],
)
def test_parse_endpoint(text: str, kind: str, url: str) -> None:
    endpoint = parse_endpoint(text)
    assert (endpoint.kind, endpoint.url) == (kind, url)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relative.sock", "expected"),
        ("unix://host/a.sock", "absolute"),
        ("tcp://10.1.2.3:8081", "loopback"),
        ("tcp://localhost:8081", "IP address"),
        ("tcp://127.0.0.1", "tcp://IP:PORT"),
        ("/" + "x" * 120, "limited"),
        ("http://127.0.0.1:1", "expected"),
    ],
)
def test_parse_endpoint_rejects(text: str, message: str) -> None:
    with pytest.raises(DevServerError, match=message):
        parse_endpoint(text)


def test_constructor_checks_identities(ca: DevCA, other_ca: DevCA) -> None:
    with pytest.raises(DevServerError, match="not a workload ID of trust domain"):
        DevWorkloadApi(ca, {"/tmp/x.sock": "spiffe://other.org/a"})
    with pytest.raises(DevServerError, match="more than one endpoint"):
        DevWorkloadApi(ca, {"/tmp/x.sock": AGENT, "/tmp/y.sock": AGENT})
    with pytest.raises(DevServerError, match="own trust domain"):
        DevWorkloadApi(ca, {"/tmp/x.sock": AGENT}, federated=[DevCA.generate("example.org")])


# ------------------------------------------------------------------------------------ CLI


async def test_cli_serves_and_exits_zero_on_sigterm(short_dir: Path) -> None:
    sock = f"{short_dir}/agent.sock"
    async with running_module(
        "sidecar.cli",
        "dev-workload-api",
        "--state-dir",
        str(short_dir / "state"),
        "--socket",
        f"{sock}={AGENT}",
        "--socket",
        f"tcp://127.0.0.1:0={MATH}",
        "--federate-with",
        f"{short_dir / 'fed'}=other.org",
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [
            (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split() for _ in range(2)
        ]
        assert lines[0] == ["ready", f"unix://{sock}", AGENT]
        assert lines[1][0] == "ready" and lines[1][2] == MATH
        assert lines[1][1].startswith("tcp://127.0.0.1:")
        context = await py_spiffe(f"unix://{sock}")
        assert context["spiffe_id"] == AGENT
        fed = DevCA.load_or_create(short_dir / "fed", "other.org").ca_cert
        assert context["x509_bundles"]["other.org"] == [der_hex(fed)]
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert b"NOT for production" in stderr
    assert b"Traceback" not in stderr
    assert not _exists(sock)


def test_cli_bad_socket_exits_2_naming_the_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "dev-workload-api", "--socket", "no-id-here"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--socket" in result.stderr and "PATH=SPIFFE_ID" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "flag", "message"),
    [
        (["--socket", "/tmp/x.sock=spiffe://example.org"], "--socket", "not a workload"),
        (["--socket", "/tmp/x.sock=spiffe://Example.org/a"], "--socket", "invalid characters"),
        (["--socket", "tcp://10.0.0.1:1=spiffe://example.org/a"], "--socket", "loopback"),
        (
            ["--socket", "/tmp/x.sock=spiffe://example.org/a", "--x509-ttl", "0"],
            "--x509-ttl",
            "positive",
        ),
        (
            ["--socket", "/tmp/x.sock=spiffe://example.org/a", "--jwt-ttl", "nan"],
            "--jwt-ttl",
            "positive",
        ),
        (
            ["--socket", "/tmp/x.sock=spiffe://example.org/a", "--jwt-alg", "HS256"],
            "--jwt-alg",
            "choice",
        ),
        (
            ["--socket", "/tmp/x.sock=spiffe://example.org/a", "--federate-with", "dir"],
            "--federate-with",
            "DIR=TRUST_DOMAIN",
        ),
        (
            ["--trust-domain", "A.org", "--socket", "/tmp/x.sock=spiffe://a.org/x"],
            "--trust-domain",
            "invalid",
        ),
        ([], "--socket", "required"),
    ],
)
def test_cli_argument_errors_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["dev-workload-api", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and message in err


def test_cli_semantic_errors_exit_2(capsys: pytest.CaptureFixture[str], short_dir: Path) -> None:
    sock = f"{short_dir}/a.sock"
    assert cli_main(["dev-workload-api", "--socket", f"{sock}=spiffe://other.org/a"]) == 2
    assert (
        "--socket: spiffe://other.org/a is not in trust domain 'example.org'"
        in capsys.readouterr().err
    )

    DevCA.load_or_create(short_dir / "state", "other.org")
    argv = ["--state-dir", str(short_dir / "state"), "--socket", f"{sock}={AGENT}"]
    assert cli_main(["dev-workload-api", *argv]) == 2
    assert "--state-dir:" in capsys.readouterr().err

    (short_dir / "file").write_text("x")
    argv = ["--state-dir", str(short_dir / "s2"), "--socket", f"{short_dir / 'file'}={AGENT}"]
    assert cli_main(["dev-workload-api", *argv]) == 2
    err = capsys.readouterr().err
    assert "--socket:" in err and "not a socket" in err
