"""Fetching small JSON documents (JWKS, OIDC discovery) for the token layer, and posting token
requests to a security token service, asynchronously.

aiohttp's client is imported on the first fetch, so a sidecar without OAuth never loads it.

Bounded in time and size, redirects refused, only http(s); errors are raised as ``FetchError``
so the caller (``tokens.oauth.JwksCache``) can keep its last good keys. TLS is verified with the
system's CAs, or with the ``ssl_context`` given (e.g. a configured CA file).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
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

    def __init__(
        self,
        *,
        timeout: float = 5.0,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    async def __call__(self, url: str) -> Any:
        status, body = await self._request("GET", url, {"Accept": "application/json"})
        if status != 200:
            raise FetchError(f"GET {url} answered HTTP {status}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FetchError(f"GET {url}: not JSON: {exc}") from exc

    async def post_form(
        self,
        url: str,
        form: Sequence[tuple[str, str]],
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """POST ``application/x-www-form-urlencoded``; (status, body) whatever the status (an
        OAuth error answer is a 400 with a JSON body the caller reads)."""
        return await self._request(
            "POST", url, {"Accept": "application/json", **(headers or {})}, form
        )

    async def _request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        form: Sequence[tuple[str, str]] | None = None,
    ) -> tuple[int, bytes]:
        if not url.startswith(("https://", "http://")):
            raise FetchError(f"refusing to fetch {url!r}: not an http(s) URL")
        import aiohttp  # only sidecars that fetch keys pay for the HTTP client (memory)

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True),
            )
        self.fetches += 1
        try:
            async with self._session.request(
                method, url, allow_redirects=False, headers=dict(headers), data=form
            ) as resp:
                body = await resp.content.read(self._max_bytes + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"{method} {url} failed: {exc!r}") from exc
        if len(body) > self._max_bytes:
            raise FetchError(f"{method} {url}: answer larger than {self._max_bytes} bytes")
        return status, body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
