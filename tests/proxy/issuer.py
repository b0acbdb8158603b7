"""A tiny OAuth authorization server for tests: OIDC discovery + JWKS over real HTTP on
loopback, key rotation, and a count of JWKS fetches."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.proxy.loopback import serve_app
from tests.tokens.jwtkit import PrivateKey, ec_key, public_jwk, sign


@dataclass
class Issuer:
    keys: dict[str, PrivateKey] = field(default_factory=lambda: {"k1": ec_key(index=11)})
    jwks_fetches: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Issuer:
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner, self.port = await serve_app(app)
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _discovery(self, request: web.Request) -> web.Response:
        return web.json_response({"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        return web.json_response({"keys": [public_jwk(k, kid) for kid, k in self.keys.items()]})

    def rotate(self, kid: str) -> None:
        """Replace the signing key with a new one under a new kid."""
        self.keys = {kid: ec_key(index=hash(kid) % 1000 + 100)}

    def token(self, *, kid: str | None = None, **claims: Any) -> str:
        kid = kid or next(iter(self.keys))
        now = int(time.time())
        body = {"iss": self.url, "sub": "user-1", "iat": now, "exp": now + 300, **claims}
        key = self.keys.get(kid) or ec_key(index=999)
        return sign(body, key, kid=kid, typ="at+jwt")
