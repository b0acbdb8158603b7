"""The admin listener over a real socket: health, readiness, metrics, JSON errors; and on running
sidecars with the dev Workload API: /certs (rotation included), /config_dump, /logging."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes

from sidecar.dev.devca import DevCA
from sidecar.identity.snapshot import X509Snapshot, X509Svid
from sidecar.metrics import Metrics
from sidecar.proxy.admin import build_admin_handler, readiness, start_admin
from sidecar.proxy.admin_views import REDACTED, SECRET_KEYS, certs_view, config_view
from sidecar.runtime import Sidecar
from sidecar.spiffe.ids import SpiffeId
from tests.polling import until
from tests.proxy.mesh import SERVER, local_mesh

TD = "example.org"
AGENT = SpiffeId.parse(f"spiffe://{TD}/ns/agents/sa/agent")


class State:
    def __init__(self) -> None:
        self.ok = True
        self.reason = ""
        self.broken = False

    def __call__(self) -> tuple[bool, str]:
        if self.broken:
            raise RuntimeError("readiness check crashed")
        return self.ok, self.reason


@pytest.fixture
def state() -> State:
    return State()


@pytest.fixture
async def client(state: State) -> AsyncIterator[aiohttp.ClientSession]:
    metrics = Metrics()
    metrics.observe_request("inbound", str(AGENT), 200, 0.01)
    listener, port = await start_admin(build_admin_handler(metrics, state), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as session:
            yield session
    finally:
        await listener.close(0.0)


async def test_healthz(client: aiohttp.ClientSession) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == {"status": "ok"}


async def test_readyz_ready_and_not_ready(client: aiohttp.ClientSession, state: State) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready"}

    state.ok, state.reason = False, "no_svid"
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"status": "not_ready", "reason": "no_svid"}


async def test_readyz_broken_check_is_not_ready(
    client: aiohttp.ClientSession, state: State
) -> None:
    state.broken = True
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"status": "not_ready", "reason": "readiness_check_failed"}


async def test_metrics_exposition(client: aiohttp.ClientSession) -> None:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    body = await resp.text()
    assert "# TYPE mcp_sidecar_requests_total counter" in body
    assert (
        f'mcp_sidecar_requests_total{{direction="inbound",peer="{AGENT}",status="200"}} 1.0' in body
    )

    resp = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).endswith("# EOF\n")


@pytest.mark.parametrize("path", ["/", "/nope", "/metrics/x", "/healthz/../../etc/passwd"])
async def test_unknown_path_is_json_404(client: aiohttp.ClientSession, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["error"] == "not_found"
    assert body["status"] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
async def test_wrong_method_is_json_405(client: aiohttp.ClientSession, method: str) -> None:
    resp = await client.request(method, "/metrics")
    assert resp.status == 405
    assert resp.content_type == "application/json"
    assert (await resp.json())["error"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_head_is_allowed(client: aiohttp.ClientSession) -> None:
    resp = await client.head("/healthz")
    assert resp.status == 200
    assert await resp.read() == b""  # headers only


async def test_start_admin_binds_a_free_port(state: State) -> None:
    listener, port = await start_admin(build_admin_handler(Metrics(), state), "127.0.0.1", 0)
    try:
        assert port > 0
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as resp,
        ):
            assert resp.status == 200
            assert await resp.json() == {"status": "ok"}
    finally:
        await listener.close(0.0)


class FakeSource:
    def __init__(self) -> None:
        self.snapshot: X509Snapshot | None = None
        self.x509_stream_connected = False
        self.jwt_stream_connected = False

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    def subscribe(self, listener: Callable[[X509Snapshot], None]) -> Callable[[], None]:
        return lambda: None


def test_readiness_from_source() -> None:
    ca = DevCA.generate(TD)
    chain, key = ca.issue_x509_svid(AGENT, dt.timedelta(hours=1))
    snapshot = X509Snapshot(svid=X509Svid(AGENT, chain, key), bundles={TD: (ca.ca_cert,)})
    now = dt.datetime.now(dt.UTC)
    clock = {"now": now}
    source = FakeSource()
    check = readiness(source, clock=lambda: clock["now"])

    assert check() == (False, "no_svid")
    source.snapshot = snapshot
    assert check() == (True, "")
    clock["now"] = snapshot.svid.not_after + dt.timedelta(seconds=1)
    assert check() == (False, "svid_expired")


# ------------------------------------------------------------- operator views and controls


@pytest.fixture
def root_level() -> Iterator[None]:
    """Tests here change the process's log level; put it back."""
    root = logging.getLogger()
    before = root.level
    yield
    root.setLevel(before)


async def admin_json(session: aiohttp.ClientSession, sidecar: Sidecar, path: str) -> Any:
    async with session.get(f"http://127.0.0.1:{sidecar.admin_port}{path}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_certs_show_the_svid_and_bundles_and_follow_rotation() -> None:
    async with local_mesh() as mesh, aiohttp.ClientSession() as session:
        ca = mesh.api.ca
        served = mesh.api.current_svid(SERVER)
        certs = await admin_json(session, mesh.server, "/certs")
        svid = certs["svid"]
        assert svid["spiffe_id"] == SERVER
        assert svid["serial"] == f"{served.serial_number:x}"
        assert svid["not_after"] == served.not_after.isoformat().replace("+00:00", "Z")
        assert 0 < svid["expires_in_seconds"] <= 3600
        assert svid["chain"][0]["sha256"] == served.leaf.fingerprint(hashes.SHA256()).hex()
        (bundle,) = certs["x509_bundles"][TD]
        assert bundle["sha256"] == ca.ca_cert.fingerprint(hashes.SHA256()).hex()
        assert bundle["subject"] == ca.ca_cert.subject.rfc4514_string()
        assert bundle["not_after"] == ca.ca_cert.not_valid_after_utc.isoformat().replace(
            "+00:00", "Z"
        )

        async def certs_now() -> Any:
            return await admin_json(session, mesh.server, "/certs")

        async def jwt_bundles_shown() -> bool:
            return bool((await certs_now())["jwt_bundles"])

        await until(jwt_bundles_shown, "a JWT bundle in /certs", interval=0.05)
        certs = await certs_now()
        assert certs["jwt_bundles"][TD] == {"key_ids": [ca.jwt_kid]}

        mesh.api.rotate_now()
        rotated = f"{mesh.api.current_svid(SERVER).serial_number:x}"
        assert rotated != svid["serial"]

        async def rotation_shown() -> bool:
            return bool((await certs_now())["svid"]["serial"] == rotated)

        await until(rotation_shown, "the rotation in /certs", interval=0.05)


async def test_config_dump_is_the_effective_config() -> None:
    async with local_mesh() as mesh, aiohttp.ClientSession() as session:
        dump = await admin_json(session, mesh.server, "/config_dump")
        agent = await admin_json(session, mesh.agent, "/config_dump")
    assert dump["trust_domain"] == TD
    assert dump["admin"]["listen"] == "127.0.0.1:0"
    assert dump["inbound"]["allow_spiffe_ids"] == {"patterns": [f"spiffe://{TD}/ns/agents/*/*"]}
    assert dump["inbound"]["limits"]["header_timeout"] == 10.0  # defaults filled in
    assert dump["outbound"] is None
    assert agent["outbound"]["routes"][0]["server_spiffe_id"] == SERVER


async def test_log_level_changes_on_post_only(root_level: None) -> None:
    probe = logging.getLogger("sidecar.proxy.connection")
    logging.getLogger().setLevel(logging.INFO)
    async with local_mesh() as mesh, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{mesh.server.admin_port}/logging"
        async with session.get(url, params={"level": "debug"}) as resp:
            assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert not probe.isEnabledFor(logging.DEBUG)
        async with session.post(url, params={"level": "debug"}, headers={"Origin": "x"}) as resp:
            assert resp.status == 403  # a browser page cannot change it
            assert (await resp.json())["error"] == "browser_request_refused"
        assert not probe.isEnabledFor(logging.DEBUG)
        for bad in ({"level": "verbose"}, {}, {"level": "debug", "x": "1"}):
            async with session.post(url, params=bad) as resp:
                assert resp.status == 400 and (await resp.json())["error"] == "bad_log_level"
        assert not probe.isEnabledFor(logging.DEBUG)
        async with session.post(url, params={"level": "DEBUG"}) as resp:
            assert resp.status == 200
            assert await resp.json() == {"level": "debug", "previous": "info"}
        assert probe.isEnabledFor(logging.DEBUG)  # every logger of the process
        async with session.post(url, params={"level": "error"}) as resp:
            assert await resp.json() == {"level": "error", "previous": "debug"}
        assert not probe.isEnabledFor(logging.WARNING)


async def test_no_operator_views_without_them(client: aiohttp.ClientSession) -> None:
    for path in ("/certs", "/config_dump"):
        resp = await client.get(path)
        assert resp.status == 404


def test_certs_view_before_the_first_svid() -> None:
    assert certs_view(None, {}, dt.datetime.now(dt.UTC)) == {
        "svid": None,
        "x509_bundles": {},
        "jwt_bundles": {},
    }


@dataclass(frozen=True)
class _Upstream:
    url: str
    client_secret: str | None
    headers: dict[str, str]
    jwks: dict[str, Any]
    matcher: object = field(repr=False, default=None)


def test_config_view_redacts_secrets_by_key_name() -> None:
    jwk = {"kty": "EC", "kid": "k1", "crv": "P-256", "x": "X", "y": "Y", "d": "PRIVATE"}
    view = config_view(
        _Upstream(
            url="https://idp",
            client_secret="s3cret",
            headers={"Authorization": "Bearer t0ken", "Accept": "json", "X-Api-Key": "no"},
            jwks={"keys": [jwk, {"kty": "oct", "k": "SYMMETRIC"}]},
            matcher=object(),
        )
    )
    assert view == {
        "url": "https://idp",
        "client_secret": REDACTED,
        "headers": {"Authorization": REDACTED, "Accept": "json", "X-Api-Key": "no"},
        "jwks": {
            "keys": [
                {"kty": "EC", "kid": "k1", "crv": "P-256", "x": "X", "y": "Y", "d": REDACTED},
                {"kty": "oct", "k": REDACTED},
            ]
        },
    }
    assert "s3cret" not in json.dumps(view) and "PRIVATE" not in json.dumps(view)
    assert config_view(_Upstream("u", None, {}, {}))["client_secret"] is None
    assert {"client_secret", "authorization", "password", "api_key"} <= SECRET_KEYS
