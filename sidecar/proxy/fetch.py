"""Fetching small JSON documents (JWKS, OIDC discovery) for the token layer, asynchronously.

aiohttp's client is imported on the first fetch, so a sidecar without OAuth never loads it.

Bounded in time and size, redirects refused, only http(s); errors are raised as ``FetchError``
so the caller (``tokens.oauth.JwksCache``) can keep its last good keys.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sidecar.errors import SidecarError

if TYPE_CHECKING:
    import aiohttp

MAX_DOCUMENT_BYTES = 1024 * 1024


class FetchError(SidecarError):
    status = 503
    reason = "fetch_failed"


class JsonFetcher:
    """``await fetcher(url)`` -> parsed JSON; one pooled session for the process."""

    def __init__(self, *, timeout: float = 5.0, max_bytes: int = MAX_DOCUMENT_BYTES) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def __call__(self, url: str) -> Any:
        if not url.startswith(("https://", "http://")):
            raise FetchError(f"refusing to fetch {url!r}: not an http(s) URL")
        import aiohttp  # only sidecars that fetch keys pay for the HTTP client (memory)

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        self.fetches += 1
        try:
            async with self._session.get(
                url, allow_redirects=False, headers={"Accept": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise FetchError(f"GET {url} answered HTTP {resp.status}")
                body = await resp.content.read(self._max_bytes + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"GET {url} failed: {exc!r}") from exc
        if len(body) > self._max_bytes:
            raise FetchError(f"GET {url}: document larger than {self._max_bytes} bytes")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FetchError(f"GET {url}: not JSON: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
