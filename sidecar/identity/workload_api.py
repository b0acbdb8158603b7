"""Async SPIFFE Workload API client that never gives up.

Why not py-spiffe's ``X509Source``: its updates arrive on threads, a stream that ends cleanly is not
reconnected and a fatal error closes the source for good. A sidecar must instead keep serving with
the last good SVID until it expires and reconnect forever, so we drive py-spiffe's generated gRPC
stubs with ``grpc.aio`` directly, inside the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import grpc
import grpc.aio
import jwt

from sidecar.errors import SidecarError
from sidecar.identity.endpoint import resolve_endpoint
from sidecar.identity.proto import workload_pb2, workload_pb2_grpc
from sidecar.identity.snapshot import (
    JwtSvid,
    SnapshotError,
    X509Snapshot,
    snapshot_from_x509_response,
)
from sidecar.spiffe.ids import SpiffeId, SpiffeIdError, trust_domain_from_bundle_key

log = logging.getLogger(__name__)

WORKLOAD_API_METADATA = (("workload.spiffe.io", "true"),)
Clock = Callable[[], dt.datetime]
X509Listener = Callable[[X509Snapshot], None]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WorkloadApiError(SidecarError):
    """The Workload API could not give us what we asked for (503: we are not ready to serve)."""

    status = 503
    reason = "workload_api_unavailable"


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter, so restarted agents are not stampeded."""

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(attempt, 32))
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


class WorkloadApiSource:
    """Streams X.509 contexts and JWT bundles, and fetches cached JWT-SVIDs, reconnecting forever.

    ``snapshot`` is the last good X.509 context (kept through outages); ``ready`` is true only while
    that SVID has not expired. Listeners registered with ``subscribe`` run in the event loop on
    every new X.509 context (rotation or bundle change).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        backoff: Backoff | None = None,
        jwt_refresh_fraction: float = 0.5,
        clock: Clock = utc_now,
    ) -> None:
        self.target = resolve_endpoint(endpoint)
        self._backoff = backoff or Backoff()
        self._jwt_refresh_fraction = jwt_refresh_fraction
        self._clock = clock
        self._channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[X509Listener] = []
        self._changed = asyncio.Condition()
        self._snapshot: X509Snapshot | None = None
        self._jwt_bundles: Mapping[str, Mapping[str, Any]] = MappingProxyType({})
        self._jwt_cache: dict[str, JwtSvid] = {}
        self._jwt_inflight: dict[str, asyncio.Task[JwtSvid]] = {}
        self.x509_stream_connected = False
        self.jwt_stream_connected = False
        self.updates = 0
        self.rotations = 0
        self.closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel and start both streams; returns at once (see ``wait_ready``)."""
        if self._tasks:
            return
        self._channel = grpc.aio.insecure_channel(
            self.target,
            options=[
                ("grpc.initial_reconnect_backoff_ms", int(self._backoff.initial * 1000)),
                ("grpc.min_reconnect_backoff_ms", int(self._backoff.initial * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(self._backoff.maximum * 1000)),
            ],
        )
        self._tasks = [
            asyncio.create_task(self._x509_loop(), name="workload-api-x509"),
            asyncio.create_task(self._jwt_bundles_loop(), name="workload-api-jwt-bundles"),
        ]

    async def close(self) -> None:
        self.closed = True
        tasks = self._tasks + list(self._jwt_inflight.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def __aenter__(self) -> WorkloadApiSource:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def snapshot(self) -> X509Snapshot | None:
        """Last good X.509 context, even if it expired (callers check ``ready``)."""
        return self._snapshot

    @property
    def ready(self) -> bool:
        snap = self._snapshot
        return snap is not None and snap.is_valid_at(self._clock())

    @property
    def jwt_bundles(self) -> Mapping[str, Mapping[str, Any]]:
        """Trust domain -> JWKS (parsed JSON), own and federated, as last streamed."""
        return self._jwt_bundles

    def subscribe(self, listener: X509Listener) -> Callable[[], None]:
        """Call ``listener`` on every new X.509 context; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_ready(self, timeout: float) -> X509Snapshot:
        """Wait (bounded) for the first usable SVID."""
        return await self.wait_for(lambda snap: True, timeout)

    async def wait_for(
        self, predicate: Callable[[X509Snapshot], bool], timeout: float
    ) -> X509Snapshot:
        """Wait (bounded) until a valid snapshot satisfies ``predicate``; raise on timeout."""

        def check() -> bool:
            return self.ready and self._snapshot is not None and predicate(self._snapshot)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(check), timeout)
            except TimeoutError as exc:
                raise WorkloadApiError(
                    f"no matching X.509-SVID from {self.target} within {timeout:g}s"
                ) from exc
        assert self._snapshot is not None
        return self._snapshot

    # -- streams ---------------------------------------------------------------------------

    def _stub(self) -> Any:
        assert self._channel is not None, "start() first"
        return workload_pb2_grpc.SpiffeWorkloadAPIStub(self._channel)  # type: ignore[no-untyped-call]

    async def _stream_forever(
        self,
        name: str,
        open_stream: Callable[[], AsyncIterator[Any]],
        on_message: Callable[[Any], None],
        set_connected: Callable[[bool], None],
    ) -> None:
        """Consume a server stream; on end or any error wait (capped backoff) and reopen."""
        attempt = 0
        while not self.closed:
            try:
                async for message in open_stream():
                    set_connected(True)
                    attempt = 0
                    try:
                        on_message(message)
                    except (SnapshotError, SpiffeIdError, ValueError) as exc:
                        log.warning("workload API %s: ignoring bad update: %s", name, exc)
                log.warning("workload API %s stream ended; reconnecting", name)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "workload API %s stream failed: %s %s",
                    name,
                    exc.code().name,
                    exc.details(),
                )
            except Exception:
                log.exception("workload API %s stream crashed; reconnecting", name)
            set_connected(False)
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _x509_loop(self) -> None:
        def open_stream() -> AsyncIterator[Any]:
            call: AsyncIterator[Any] = self._stub().FetchX509SVID(
                workload_pb2.X509SVIDRequest(), metadata=WORKLOAD_API_METADATA
            )
            return call

        def connected(value: bool) -> None:
            self.x509_stream_connected = value

        await self._stream_forever("x509", open_stream, self._on_x509, connected)

    def _on_x509(self, message: Any) -> None:
        snap = snapshot_from_x509_response(message)
        previous = self._snapshot
        self._snapshot = snap
        self.updates += 1
        if previous is not None and previous.svid.serial_number != snap.svid.serial_number:
            self.rotations += 1
        log.info(
            "x509 context update: id=%s serial=%x not_after=%s trust_domains=%s",
            snap.svid.spiffe_id,
            snap.svid.serial_number,
            snap.svid.not_after.isoformat(),
            sorted(snap.bundles),
        )
        for listener in list(self._listeners):
            try:
                listener(snap)
            except Exception:
                log.exception("x509 update listener failed")
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _jwt_bundles_loop(self) -> None:
        def open_stream() -> AsyncIterator[Any]:
            call: AsyncIterator[Any] = self._stub().FetchJWTBundles(
                workload_pb2.JWTBundlesRequest(), metadata=WORKLOAD_API_METADATA
            )
            return call

        def connected(value: bool) -> None:
            self.jwt_stream_connected = value

        await self._stream_forever("jwt-bundles", open_stream, self._on_jwt_bundles, connected)

    def _on_jwt_bundles(self, message: Any) -> None:
        bundles: dict[str, Mapping[str, Any]] = {}
        for key, raw in dict(message.bundles).items():
            jwks = json.loads(raw)
            if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
                raise ValueError(f"JWT bundle for {key!r} is not a JWKS")
            bundles[trust_domain_from_bundle_key(key)] = MappingProxyType(jwks)
        self._jwt_bundles = MappingProxyType(bundles)

    # -- JWT-SVIDs -------------------------------------------------------------------------

    async def fetch_jwt_svid(self, audience: str, *, timeout: float = 5.0) -> JwtSvid:
        """A JWT-SVID for ``audience``: cached, refreshed in the background after
        ``jwt_refresh_fraction`` of its lifetime, fetched in the foreground only when missing or
        expired. Concurrent callers share one fetch."""
        now = self._clock()
        cached = self._jwt_cache.get(audience)
        if cached is not None and now < cached.expiry:
            if now >= self._refresh_at(cached):
                self._start_jwt_fetch(audience, timeout)
            return cached
        return await asyncio.shield(self._start_jwt_fetch(audience, timeout))

    def _refresh_at(self, svid: JwtSvid) -> dt.datetime:
        issued = svid.issued_at or svid.expiry
        return issued + (svid.expiry - issued) * self._jwt_refresh_fraction

    def _start_jwt_fetch(self, audience: str, timeout: float) -> asyncio.Task[JwtSvid]:
        task = self._jwt_inflight.get(audience)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch_jwt(audience, timeout))
            self._jwt_inflight[audience] = task
            task.add_done_callback(lambda _t: self._jwt_inflight.pop(audience, None))
        return task

    async def _fetch_jwt(self, audience: str, timeout: float) -> JwtSvid:
        try:
            response = await self._stub().FetchJWTSVID(
                workload_pb2.JWTSVIDRequest(audience=[audience]),
                metadata=WORKLOAD_API_METADATA,
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            raise WorkloadApiError(
                f"FetchJWTSVID({audience!r}) failed: {exc.code().name} {exc.details()}"
            ) from exc
        if not response.svids:
            raise WorkloadApiError(f"FetchJWTSVID({audience!r}) returned no SVID")
        svid = jwt_svid_from_token(response.svids[0].svid)
        self._jwt_cache[audience] = svid
        return svid


def jwt_svid_from_token(token: str) -> JwtSvid:
    """Read ``sub``/``aud``/``exp``/``iat`` of our own JWT-SVID (from the local agent) to cache it.

    The signature is not checked here: the token came from the local Workload API and is only
    forwarded; receivers verify it.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        expiry = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        issued = dt.datetime.fromtimestamp(int(claims["iat"]), dt.UTC) if "iat" in claims else None
        aud = claims.get("aud", [])
        audience = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud)
        return JwtSvid(token, SpiffeId.parse_workload(str(claims["sub"])), audience, expiry, issued)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError, SpiffeIdError) as exc:
        raise WorkloadApiError(f"Workload API returned an unusable JWT-SVID: {exc}") from exc
