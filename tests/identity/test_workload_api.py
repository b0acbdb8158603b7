"""The Workload API source against the real dev Workload API over real gRPC on unix sockets:
rotation, outage and restart, bundle changes, JWT-SVID caching, bad updates, readiness."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from sidecar.dev.devca import DevCA
from sidecar.dev.devserver import DevWorkloadApi
from sidecar.identity.proto import workload_pb2, workload_pb2_grpc
from sidecar.identity.workload_api import Backoff, WorkloadApiError, WorkloadApiSource
from sidecar.spiffe.ids import SpiffeId
from tests.polling import until

TD = "example.org"
AGENT = SpiffeId.parse(f"spiffe://{TD}/ns/agents/sa/agent")
WAIT = 15.0
FAST = Backoff(initial=0.05, maximum=0.5)


@pytest.fixture
def ca(short_dir: Path) -> DevCA:
    return DevCA.load_or_create(short_dir / "state", TD)


def socket_url(short_dir: Path) -> str:
    return f"unix://{short_dir}/agent.sock"


async def test_first_svid_bundles_and_readiness(ca: DevCA, short_dir: Path) -> None:
    fed = DevCA.generate("federated.test")
    url = socket_url(short_dir)
    async with DevWorkloadApi(ca, {url: AGENT}, federated=[fed]) as api:
        source = WorkloadApiSource(url, backoff=FAST)
        # compared as a tuple: "assert not source.ready" would narrow the property for mypy
        assert (source.ready, source.snapshot) == (False, None)
        async with source:
            snap = await source.wait_ready(WAIT)
            assert source.ready
            assert snap.svid.spiffe_id == AGENT
            assert snap.svid.serial_number == api.current_svid(AGENT).serial_number
            assert snap.bundles[TD] == (ca.ca_cert,)
            assert snap.bundles["federated.test"] == (fed.ca_cert,)
            await until(lambda: "federated.test" in source.jwt_bundles, "JWT bundles")
            assert {k["kid"] for k in source.jwt_bundles[TD]["keys"]} == set(ca.jwt_keys())


async def test_not_ready_after_svid_expiry(ca: DevCA, short_dir: Path) -> None:
    url = socket_url(short_dir)
    now = [dt.datetime.now(dt.UTC)]
    async with (
        DevWorkloadApi(ca, {url: AGENT}),
        WorkloadApiSource(url, backoff=FAST, clock=lambda: now[0]) as source,
    ):
        snap = await source.wait_ready(WAIT)
        now[0] = snap.svid.not_after + dt.timedelta(seconds=1)
        assert not source.ready
        assert source.snapshot is snap  # kept for diagnostics, but not served as ready


async def test_rotation_is_pushed_and_counted(ca: DevCA, short_dir: Path) -> None:
    url = socket_url(short_dir)
    seen: list[int] = []
    async with (
        DevWorkloadApi(ca, {url: AGENT}, x509_ttl=dt.timedelta(seconds=2)),
        WorkloadApiSource(url, backoff=FAST) as source,
    ):
        source.subscribe(lambda snap: seen.append(snap.svid.serial_number))
        first = await source.wait_ready(WAIT)
        await source.wait_for(lambda s: s.svid.serial_number != first.svid.serial_number, WAIT)
        assert source.rotations >= 1
        assert len(set(seen)) >= 1 and seen[-1] != first.svid.serial_number


async def test_unavailable_at_start_then_agent_appears(ca: DevCA, short_dir: Path) -> None:
    url = socket_url(short_dir)
    async with WorkloadApiSource(url, backoff=FAST) as source:
        await asyncio.sleep(0.3)  # a few failed attempts against a missing socket
        assert not source.ready and not source.x509_stream_connected
        async with DevWorkloadApi(ca, {url: AGENT}):
            snap = await source.wait_ready(WAIT)
            assert snap.svid.spiffe_id == AGENT


async def test_outage_keeps_cached_svid_and_reconnects_after_restart(
    ca: DevCA, short_dir: Path
) -> None:
    url = socket_url(short_dir)
    async with WorkloadApiSource(url, backoff=FAST) as source:
        async with DevWorkloadApi(ca, {url: AGENT}):
            before = await source.wait_ready(WAIT)
        await until(lambda: not source.x509_stream_connected, "the stream to drop")
        assert source.ready and source.snapshot is before  # last good SVID kept
        restarted_ca = DevCA.load_or_create(short_dir / "state", TD)
        async with DevWorkloadApi(restarted_ca, {url: AGENT}):
            after = await source.wait_for(
                lambda s: s.svid.serial_number != before.svid.serial_number, WAIT
            )
            assert source.x509_stream_connected
            assert after.svid.spiffe_id == AGENT


class _RefusingServicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """An agent that does not (yet) know this workload, as SPIRE answers before registration."""

    def __init__(self) -> None:
        self.calls = 0

    async def FetchX509SVID(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.calls += 1
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")

    async def FetchJWTBundles(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")


async def _serve(servicer: Any, url: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]  # generated gRPC code: no annotations
    server.add_insecure_port(url)
    await server.start()
    return server


async def test_permission_denied_is_retried_until_the_agent_issues(
    ca: DevCA, short_dir: Path
) -> None:
    url = socket_url(short_dir)
    refusing = _RefusingServicer()
    server = await _serve(refusing, url)
    async with WorkloadApiSource(url, backoff=FAST) as source:
        await until(lambda: refusing.calls >= 3, "three refused attempts")
        assert not source.ready
        await server.stop(None)
        async with DevWorkloadApi(ca, {url: AGENT}):
            assert (await source.wait_ready(WAIT)).svid.spiffe_id == AGENT


class _BadUpdateServicer(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Sends one good X.509 context, then one without SVIDs, then one with a garbage chain."""

    def __init__(self, ca: DevCA) -> None:
        self.ca = ca
        self.sent_bad = asyncio.Event()

    def _good(self) -> Any:
        chain, key = self.ca.issue_x509_svid(AGENT, dt.timedelta(hours=1))
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=str(AGENT),
                    x509_svid=b"".join(c.public_bytes(serialization.Encoding.DER) for c in chain),
                    x509_svid_key=key.private_bytes(
                        serialization.Encoding.DER,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ),
                    bundle=self.ca.x509_bundle_der(),
                )
            ]
        )

    async def FetchX509SVID(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield self._good()
        yield workload_pb2.X509SVIDResponse()
        bad = self._good()
        bad.svids[0].x509_svid = b"\x30\x03garbage"
        yield bad
        self.sent_bad.set()
        await asyncio.sleep(3600)


async def test_bad_updates_are_ignored_and_last_good_kept(ca: DevCA, short_dir: Path) -> None:
    url = socket_url(short_dir)
    servicer = _BadUpdateServicer(ca)
    server = await _serve(servicer, url)
    try:
        async with WorkloadApiSource(url, backoff=FAST) as source:
            good = await source.wait_ready(WAIT)
            await asyncio.wait_for(servicer.sent_bad.wait(), WAIT)
            await asyncio.sleep(0.1)  # let the source consume the bad messages
            assert source.snapshot is good and source.ready and source.updates == 1
    finally:
        await server.stop(None)


async def test_jwt_svid_is_cached_and_refreshed_in_background(ca: DevCA, short_dir: Path) -> None:
    url = socket_url(short_dir)
    now = [dt.datetime.now(dt.UTC)]
    async with (
        DevWorkloadApi(ca, {url: AGENT}, jwt_ttl=dt.timedelta(minutes=5)),
        WorkloadApiSource(url, backoff=FAST, clock=lambda: now[0]) as source,
    ):
        first = await source.fetch_jwt_svid("spiffe://example.org/ns/mcp/sa/math")
        claims = jwt.decode(
            first.token,
            ca.jwt_keys()[jwt.get_unverified_header(first.token)["kid"]],
            algorithms=["ES256", "RS256"],
            audience="spiffe://example.org/ns/mcp/sa/math",
        )
        assert claims["sub"] == str(AGENT) and first.spiffe_id == AGENT
        again = await source.fetch_jwt_svid("spiffe://example.org/ns/mcp/sa/math")
        assert again is first  # served from cache, no new fetch
        # Past the refresh point (half-life) the cached token is still returned at once and
        # a background fetch replaces it.
        now[0] = first.expiry - dt.timedelta(seconds=10)
        stale = await source.fetch_jwt_svid("spiffe://example.org/ns/mcp/sa/math")
        assert stale is first
        await until(
            lambda: source._jwt_cache["spiffe://example.org/ns/mcp/sa/math"] is not first,
            "background JWT refresh",
        )
        # Once expired, the caller waits for a fresh token instead of getting the old one.
        now[0] = first.expiry + dt.timedelta(hours=1)
        fresh = await source.fetch_jwt_svid("spiffe://example.org/ns/mcp/sa/math")
        assert fresh is not first


async def test_jwt_svid_fetch_failure_is_a_typed_error(short_dir: Path) -> None:
    async with WorkloadApiSource(socket_url(short_dir), backoff=FAST) as source:
        with pytest.raises(WorkloadApiError) as err:
            await source.fetch_jwt_svid("aud", timeout=0.5)
        assert err.value.status == 503
