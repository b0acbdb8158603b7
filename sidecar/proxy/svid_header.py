"""The ``Authorization: Bearer <JWT-SVID>`` header sent upstream, per audience (outbound routes,
multiplexed targets). It replaces whatever Authorization header the caller sent."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from sidecar.identity.snapshot import JwtSvid
from sidecar.identity.workload_api import WorkloadApiError
from sidecar.proxy.errors import JwtSvidUnavailable

HEADER_REUSE = 1.0  # seconds an Authorization header is reused before asking the source again


class JwtSvidHeaders:
    """The source caches and refreshes the SVIDs; a header is reused for up to
    ``HEADER_REUSE`` seconds (never past the SVID's expiry), so the request path does not ask
    the source every time."""

    def __init__(self, fetch: Callable[[str], Awaitable[JwtSvid]] | None) -> None:
        self._fetch = fetch
        self._headers: dict[str, tuple[str, float]] = {}  # audience -> (header, reuse until)

    def header_now(self, audience: str) -> str | None:
        """The header while it may still be reused, else None (``header`` fetches)."""
        cached = self._headers.get(audience)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        return None

    async def header(self, audience: str) -> str:
        cached = self._headers.get(audience)
        now = time.time()
        if cached is not None and now < cached[1]:
            return cached[0]
        if self._fetch is None:  # pragma: no cover - wiring error
            raise JwtSvidUnavailable("no Workload API source for JWT-SVIDs")
        try:
            svid = await self._fetch(audience)
        except WorkloadApiError as exc:
            raise JwtSvidUnavailable(exc.message) from exc
        header = f"Bearer {svid.token}"
        until = min(now + HEADER_REUSE, svid.expiry.timestamp() - HEADER_REUSE)
        self._headers[audience] = (header, until)
        return header
