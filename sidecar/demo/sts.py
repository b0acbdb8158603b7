"""A minimal RFC 8693 security token service (STS) for the delegation demo and the tests, over
real HTTPS on loopback (a throw-away CA of its own). Development only: never imported by ``run``.

No installable Python package implements the actor side of token exchange: idpyoidc's
``TokenExchangeHelper`` only re-mints tokens of its own sessions and knows neither
``actor_token`` nor ``act``; authlib has no token-exchange grant. So this one follows the
specifications itself, as strictly as a real STS would:

* RFC 8693 section 2.1: ``grant_type``, ``subject_token`` + ``subject_token_type`` (an access
  token of the user's identity provider, ``UserIdp``: signature, ``iss``, ``exp``), optional
  ``actor_token`` + ``actor_token_type`` (a JWT-SVID: signature by the trust domain's JWT bundle,
  ``aud`` = this STS, ``exp``), ``resource`` / ``audience`` (RFC 8707), ``scope``;
* client authentication: RFC 7523 ``client_assertion`` (a JWT-SVID, same checks) or
  ``client_secret_basic``; the actor must be the authenticated client, and a subject token's
  ``may_act`` (section 4.4) must name it;
* the issued token: ``sub`` of the subject, ``act`` = ``{"sub": actor}`` with the subject's own
  ``act`` nested inside it (section 4.1), ``aud`` = the resource, ``exp`` no later than the
  subject's; the answer of section 2.2.1; errors as RFC 6749 section 5.2 JSON.

Also serves OIDC discovery and its JWKS. ``down = True`` answers 503 to everything.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm

from sidecar.tokens.exchange import ACCESS_TOKEN_TYPE, CLIENT_ASSERTION_TYPE, GRANT_TYPE
from sidecar.tokens.exchange import JWT_TOKEN_TYPE as JWT_TYPE

STS_KID = "sts-1"


class UserIdp(Protocol):
    """The identity provider whose access tokens users bring (its issuer URL and keys)."""

    @property
    def url(self) -> str: ...

    @property
    def keys(self) -> Mapping[str, ec.EllipticCurvePrivateKey]: ...


@dataclass
class DemoIdp:
    """A stand-in identity provider for the demo: signs users' access tokens (ES256)."""

    url: str = "https://idp.example.org"
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(
        default_factory=lambda: {"idp-1": ec.generate_private_key(ec.SECP256R1())}
    )

    def token(self, sub: str, *, scope: str, ttl: int = 600, **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.url, "sub": sub, "aud": "agent-app", "iat": now, "exp": now + ttl}
        body.update(scope=scope, **claims)
        return jwt.encode(body, self.keys["idp-1"], algorithm="ES256", headers={"kid": "idp-1"})


@dataclass
class Sts:
    user_idp: UserIdp
    """Whose access tokens are accepted as subject tokens."""
    tls_dir: Path
    spiffe_jwks: Callable[[], Mapping[str, Any]] = lambda: {"keys": []}
    """The JWT bundle that verifies JWT-SVIDs (client assertions, actor tokens)."""
    client_secrets: dict[str, str] = field(default_factory=dict)
    client_actors: dict[str, str] = field(default_factory=dict)
    """client id -> the workload it is (actor tokens must name it); a JWT-SVID client is its
    own SPIFFE ID."""
    resources: tuple[str, ...] | None = None
    """If set, the only resources tokens are issued for (else: invalid_target)."""
    ttl: int = 300
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    down: bool = False
    forms: list[dict[str, str]] = field(default_factory=list)
    """Every token request received (form fields)."""
    issued: list[str] = field(default_factory=list)
    port: int = 0
    ca_file: Path | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {**jwk, "kid": STS_KID}

    async def start(self) -> Sts:
        self.ca_file, cert_file, key_file = _write_tls_files(self.tls_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        app.router.add_post("/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- endpoints ---------------------------------------------------------------------------

    async def _discovery(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="maintenance")
        return web.json_response(
            {
                "issuer": self.url,
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "grant_types_supported": [GRANT_TYPE],
                "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
            }
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        return web.json_response({"keys": [self.jwk]})

    async def _token(self, request: web.Request) -> web.Response:
        if self.down:
            return web.Response(status=503, text="maintenance")
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        self.forms.append(form)
        try:
            return web.json_response(self._exchange(form, request.headers.get("Authorization")))
        except OAuthError as exc:
            return web.json_response(
                {"error": exc.code, "error_description": exc.description}, status=exc.status
            )

    # -- the grant ---------------------------------------------------------------------------

    def _exchange(self, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        if form.get("grant_type") != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", "only token exchange here")
        client = self._client(form, authorization)
        if form.get("subject_token_type") != ACCESS_TOKEN_TYPE or "subject_token" not in form:
            raise OAuthError("invalid_request", "an access token subject_token is required")
        subject = self._user_token(form["subject_token"])
        actor: str | None = None
        if "actor_token" in form:
            if form.get("actor_token_type") != JWT_TYPE:
                raise OAuthError("invalid_request", "actor_token_type must be jwt")
            actor = self._jwt_svid(form["actor_token"], "invalid_request")
            if actor != self.client_actors.get(client, client):
                raise OAuthError("invalid_request", "the actor must be the authenticated client")
        may_act = subject.get("may_act")
        if isinstance(may_act, dict) and may_act.get("sub") != actor:
            raise OAuthError("access_denied", "the subject does not allow this actor")
        resource = form.get("resource") or form.get("audience")
        if resource is None:
            raise OAuthError("invalid_target", "name the resource the token is for")
        if self.resources is not None and resource not in self.resources:
            raise OAuthError("invalid_target", "unknown resource")
        granted = set(str(subject.get("scope", "")).split())
        requested = set(form.get("scope", "").split()) or granted
        if not requested <= granted:
            raise OAuthError("invalid_scope", "more scope than the subject token has")
        now = int(time.time())
        exp = min(int(subject["exp"]), now + self.ttl)
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": subject["sub"],
            "aud": resource,
            "iat": now,
            "exp": exp,
            "scope": " ".join(sorted(requested)),
            "client_id": client,
        }
        if actor is not None:
            act: dict[str, Any] = {"sub": actor}
            if isinstance(subject.get("act"), dict):
                act["act"] = subject["act"]
            claims["act"] = act
        token = jwt.encode(
            claims, self.key, algorithm="ES256", headers={"kid": STS_KID, "typ": "at+jwt"}
        )
        self.issued.append(token)
        return {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": exp - now,
            "scope": claims["scope"],
        }

    def _client(self, form: dict[str, str], authorization: str | None) -> str:
        if form.get("client_assertion_type") == CLIENT_ASSERTION_TYPE:
            return self._jwt_svid(form.get("client_assertion", ""), "invalid_client")
        if authorization and authorization.startswith("Basic "):
            user, _, secret = base64.b64decode(authorization[6:]).decode().partition(":")
            client_id, secret = unquote(user), unquote(secret)
            if self.client_secrets.get(client_id) == secret:
                return client_id
        raise OAuthError("invalid_client", "client authentication failed", status=401)

    def _jwt_svid(self, token: str, error: str) -> str:
        try:
            keys = jwt.PyJWKSet.from_dict(dict(self.spiffe_jwks()))
            kid = jwt.get_unverified_header(token).get("kid")
            key = next(k for k in keys.keys if k.key_id == kid)
            claims = jwt.decode(
                token, key, algorithms=["ES256", "RS256", "PS256"], audience=self.url
            )
        except (jwt.PyJWTError, StopIteration) as exc:
            raise OAuthError(error, f"bad JWT-SVID: {exc}", status=401) from None
        return str(claims["sub"])

    def _user_token(self, token: str) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.user_idp.keys[str(kid)]
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public_key(),
                algorithms=["ES256"],
                issuer=self.user_idp.url,
                options={"verify_aud": False, "require": ["exp", "sub"]},
            )
        except (jwt.PyJWTError, KeyError) as exc:
            raise OAuthError("invalid_grant", f"subject token refused: {exc}") from None
        return claims


class OAuthError(Exception):
    def __init__(self, code: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.code, self.description, self.status = code, description, status


def decode_unverified(token: str) -> dict[str, Any]:
    """The claims of a JWT, for assertions on what was issued."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


def _write_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 / localhost: (CA, cert, key)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev STS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sts")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = (directory / "sts-ca.pem", directory / "sts.pem", directory / "sts.key")
    files[0].write_bytes(ca.public_bytes(pem))
    files[1].write_bytes(cert.public_bytes(pem))
    files[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files
