"""The outbound side of RFC 8693 token exchange: one ``TokenExchanger`` per route with
``token_exchange``, turning the user's token in the agent's request into the
``Authorization: Bearer`` value sent to the server.

Exchanged tokens are cached (``tokens.exchange.ExchangeCache``) per (hash of the user's token,
target, scopes); identical exchanges in flight at the same time share one request to the STS,
which a caller that goes away does not cancel for the others. The token endpoint is configured or
discovered from the STS's metadata (and discovered again after a failure). The pure request and
answer logic is in ``sidecar.tokens.exchange``; this module does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from urllib.parse import urlsplit

from multidict import CIMultiDict

from sidecar.config import TokenExchangeConfig
from sidecar.identity.snapshot import JwtSvid
from sidecar.identity.workload_api import WorkloadApiError
from sidecar.proxy.errors import JwtSvidUnavailable
from sidecar.proxy.fetch import FetchError, JsonFetcher
from sidecar.tokens.exchange import (
    ExchangeCache,
    ExchangedToken,
    ExchangeError,
    basic_authorization,
    exchange_form,
    read_answer,
    subject_key,
    subject_token,
)
from sidecar.tokens.oauth import discover

log = logging.getLogger(__name__)

JwtSvidSource = Callable[[str], Awaitable[JwtSvid]]


def _https_or_loopback(url: str) -> bool:
    """The user's token is only ever sent over TLS (plain http only to this machine)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def sts_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the STS like any HTTPS client: hostname and chain, against the system's CAs or
    only those of ``ca_file``."""
    return ssl.create_default_context(cafile=ca_file)


class TokenExchanger:
    def __init__(
        self,
        config: TokenExchangeConfig,
        jwt_svid: JwtSvidSource | None,
        cache: ExchangeCache,
        *,
        http: JsonFetcher | None = None,
    ) -> None:
        self.config = config
        self._jwt_svid = jwt_svid
        self._cache = cache
        self._http = http or JsonFetcher(
            timeout=config.timeout, ssl_context=sts_ssl_context(config.ca_file)
        )
        self._endpoint = config.token_endpoint
        self._inflight: dict[Hashable, asyncio.Task[ExchangedToken]] = {}
        self._secret: tuple[tuple[int, int, int], str] | None = None
        self.exchanges = 0
        """Token requests sent to the STS (tests, metrics)."""

    @property
    def subject_header(self) -> str:
        return self.config.subject_token_header

    async def authorization(self, request_headers: CIMultiDict[str]) -> str:
        """``Bearer <token for this route's server>`` for the user token in the request."""
        subject = subject_token(
            request_headers.getall(self.subject_header, []), self.subject_header
        )
        key = (subject_key(subject), self.config.target)
        cached = self._cache.get(key)
        if cached is not None:
            return f"Bearer {cached}"
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._exchange(key, subject))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        exchanged = await asyncio.shield(task)
        return f"Bearer {exchanged.access_token}"

    def _finished(self, key: Hashable, task: asyncio.Task[ExchangedToken]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _exchange(self, key: Hashable, subject: str) -> ExchangedToken:
        cfg = self.config
        svid = (
            await self._our_jwt_svid() if cfg.actor_token or cfg.client_auth == "jwt_svid" else None
        )
        headers: dict[str, str] = {}
        if cfg.client_auth == "client_secret":
            assert cfg.client_id is not None
            headers["Authorization"] = basic_authorization(cfg.client_id, self._client_secret())
        form = exchange_form(
            subject=subject,
            subject_type=cfg.subject_token_type,
            resource=cfg.resource,
            audience=cfg.audience,
            scopes=cfg.scopes,
            actor=svid if cfg.actor_token else None,
            client_assertion=svid if cfg.client_auth == "jwt_svid" else None,
            client_id=cfg.client_id if cfg.client_auth == "jwt_svid" else None,
        )
        endpoint = await self._token_endpoint()
        self.exchanges += 1
        try:
            status, body = await self._http.post_form(endpoint, form, headers)
        except FetchError as exc:
            if cfg.issuer is not None:
                self._endpoint = None  # discover again: the STS may have moved
            raise ExchangeError(
                f"the STS could not be reached: {exc.message}", status=502, reason="sts_unavailable"
            ) from exc
        token = read_answer(status, body)
        self._cache.put(key, token, cfg.refresh_before)
        return token

    async def _our_jwt_svid(self) -> str:
        if self._jwt_svid is None:  # pragma: no cover - wiring error
            raise JwtSvidUnavailable("no Workload API source for JWT-SVIDs")
        try:
            return (await self._jwt_svid(self.config.sts_audience)).token
        except WorkloadApiError as exc:
            raise JwtSvidUnavailable(exc.message) from exc

    async def _token_endpoint(self) -> str:
        if self._endpoint is not None:
            return self._endpoint
        issuer = self.config.issuer
        assert issuer is not None
        try:
            endpoint = await discover(self._http, issuer, "token_endpoint")
            if not _https_or_loopback(endpoint):
                raise LookupError(f"token_endpoint {endpoint!r} is not https://")
        except LookupError as exc:
            raise ExchangeError(
                f"the STS's token endpoint could not be discovered from {issuer}: {exc}",
                status=502,
                reason="sts_unavailable",
            ) from exc
        log.info("STS %s: discovered token_endpoint %s", issuer, endpoint)
        self._endpoint = endpoint
        return endpoint

    def _client_secret(self) -> str:
        """Read from the file (a mounted Secret) when it changed, so a rotated secret is used
        without a restart. Never logged, never in an error message."""
        path = self.config.client_secret_file
        assert path is not None
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._secret is None or self._secret[0] != stamp:
                secret = Path(path).read_text(encoding="utf-8").strip()
                if not secret:
                    raise ValueError("the file is empty")
                self._secret = (stamp, secret)
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise ExchangeError(
                f"the STS client secret could not be read from {path}: "
                f"{getattr(exc, 'strerror', None) or exc}",
                status=502,
                reason="sts_client_secret_unavailable",
            ) from None
        return self._secret[1]

    async def close(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._http.close()
