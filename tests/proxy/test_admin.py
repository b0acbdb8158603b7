"""The admin listener over a real socket: health, readiness, metrics, JSON errors."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from sidecar.dev.devca import DevCA
from sidecar.identity.snapshot import X509Snapshot, X509Svid
from sidecar.metrics import Metrics
from sidecar.proxy.admin import build_admin_handler, readiness, start_admin
from sidecar.spiffe.ids import SpiffeId

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
