"""OAuth 2.1 bearer access tokens (JWT, RFC 9068) for the MCP authorization spec, and the cache of
the authorization server's signing keys.

``validate_access_token`` is pure: header (asymmetric ``alg`` allowlist, ``typ``, ``kid``) ->
key -> signature -> ``iss`` (exact) -> ``aud`` (RFC 8707: our resource URL) ->
``exp``/``nbf``/``iat`` -> ``sub`` -> claim shapes; only a token valid in every other respect
can fail with ``InsufficientScope`` (403, step-up).

``JwksCache`` holds one issuer's keys. Sources: a ``jwks_uri``, an inline JWKS (never fetches), or
discovery (OIDC ``/.well-known/openid-configuration``, then RFC 8414
``/.well-known/oauth-authorization-server``; the discovered ``issuer`` must be ours). Keys are
reused for ``jwks_cache_ttl``; an unknown ``kid`` triggers a refresh, but fetch attempts (failed
ones included) are at least ``jwks_refresh_interval`` apart and concurrent callers share one
in-flight fetch: a flood of tokens with made-up ``kid`` values costs the issuer one request per
interval. The HTTP client is injected (``fetch_json``), so this module never imports aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import jwt

from sidecar.tokens.claims import (
    VerifiedToken,
    claim_strings,
    delegation_chain,
    freeze,
    parse_scopes,
)
from sidecar.tokens.errors import (
    InsufficientScope,
    JwksUnavailable,
    TokenError,
    TokenLayer,
    UnknownKid,
)
from sidecar.tokens.jose import (
    ALLOWED_ALGORITHMS,
    audiences,
    check_algorithms,
    check_header,
    check_leeway,
    check_times,
    cnf_thumbprint,
    load_jwks,
    parse_token,
    verified_claims,
    verify_signature,
)
from sidecar.tokens.verified import VerifiedTokens

__all__ = [
    "JwksCache",
    "OAuthRules",
    "discover",
    "discovery_urls",
    "validate_access_token",
]

log = logging.getLogger(__name__)

LAYER: Final[TokenLayer] = "oauth"
_SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+", re.ASCII)

FetchJson = Callable[[str], Awaitable[Any]]
KeySource = Literal["jwks_uri", "inline", "discovery"]


@dataclass(frozen=True, slots=True)
class OAuthRules:
    """What an access token must satisfy here (mapped from ``inbound.oauth``)."""

    issuer: str
    """``iss`` must equal it exactly (no normalisation)."""
    audience: str
    """Our RFC 8707 resource URL: ``aud`` (string or list) must contain it."""
    required_scopes: tuple[str, ...] = ()
    """All must be granted, else 403 ``insufficient_scope``."""
    algorithms: tuple[str, ...] = ALLOWED_ALGORITHMS
    leeway: float = 30.0
    require_typ: str | None = None
    """If set (e.g. ``at+jwt``), the ``typ`` header must be this media type."""
    roles_claim: str = "roles"
    groups_claim: str = "groups"
    jwks_cache_ttl: float = 300.0
    """Seconds fetched keys are used before they are fetched again."""
    jwks_refresh_interval: float = 30.0
    """Minimum seconds between two fetch attempts (unknown ``kid``, expiry or failure)."""

    def __post_init__(self) -> None:
        if not isinstance(self.issuer, str) or not self.issuer:
            raise ValueError("OAuthRules.issuer must be a non-empty string")
        if not isinstance(self.audience, str) or not self.audience:
            raise ValueError("OAuthRules.audience must be a non-empty string")
        scopes = tuple(self.required_scopes)
        if not all(isinstance(s, str) and _SCOPE_TOKEN_RE.fullmatch(s) for s in scopes):
            raise ValueError("OAuthRules.required_scopes: each must be an RFC 6749 scope token")
        object.__setattr__(self, "required_scopes", scopes)
        object.__setattr__(
            self, "algorithms", check_algorithms(self.algorithms, "OAuthRules.algorithms")
        )
        object.__setattr__(self, "leeway", check_leeway(self.leeway, "OAuthRules"))
        if self.require_typ is not None and not self.require_typ.strip():
            raise ValueError("OAuthRules.require_typ must be None or a media type")
        for name in ("jwks_cache_ttl", "jwks_refresh_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"OAuthRules.{name} must be a positive number of seconds")


def validate_access_token(
    token: str,
    keys: Mapping[str, jwt.PyJWK],
    rules: OAuthRules,
    *,
    now: float | None = None,
) -> VerifiedToken:
    """Validate a JWT access token against ``keys`` (``kid`` -> key); raise ``TokenError``
    (``UnknownKid`` if its ``kid`` is not in ``keys``, ``InsufficientScope`` last)."""
    parsed = parse_token(token, LAYER)
    alg, kid = check_header(
        parsed.header,
        algorithms=rules.algorithms,
        typs=None if rules.require_typ is None else (rules.require_typ,),
        typ_required=True,
        layer=LAYER,
    )
    key = keys.get(kid)
    if key is None:
        raise UnknownKid("token 'kid' is not among the issuer's keys", layer=LAYER)
    claims = verified_claims(verify_signature(token, key, alg, LAYER), LAYER)
    if claims.get("iss") != rules.issuer:
        raise TokenError(
            "token was not issued by the expected authorization server",
            reason="wrong_issuer",
            layer=LAYER,
        )
    aud = audiences(claims, LAYER)
    if rules.audience not in aud:
        raise TokenError(
            "token audience is not this resource", reason="wrong_audience", layer=LAYER
        )
    exp = check_times(
        claims, now=time.time() if now is None else now, leeway=rules.leeway, layer=LAYER
    )
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise TokenError("token has no 'sub' claim", reason="bad_subject", layer=LAYER)
    scopes = parse_scopes(claims, LAYER)
    verified = VerifiedToken(
        layer=LAYER,
        subject=subject,
        issuer=rules.issuer,
        audience=aud,
        expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
        scopes=scopes,
        roles=claim_strings(claims, rules.roles_claim, LAYER),
        groups=claim_strings(claims, rules.groups_claim, LAYER),
        claims=freeze(claims),
        cnf_x5t_s256=cnf_thumbprint(claims, LAYER),
        actors=delegation_chain(claims, LAYER),
    )
    if not scopes.issuperset(rules.required_scopes):
        raise InsufficientScope(
            "token lacks a required scope", scope=" ".join(rules.required_scopes), layer=LAYER
        )
    return verified


def discovery_urls(issuer: str) -> tuple[str, ...]:
    """Where to find the issuer's metadata, in order: OIDC Discovery (appended to the issuer),
    OIDC with the well-known segment inserted, and RFC 8414 (inserted before the issuer's path)."""
    parts = urlsplit(issuer)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"issuer {issuer!r} is not an http(s) URL: discovery is impossible")
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = (
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{origin}/.well-known/oauth-authorization-server{path}",
    )
    return tuple(dict.fromkeys(urls))


class JwksCache:
    """The signing keys of one issuer, fetched lazily through ``fetch_json(url) -> JSON``.

    Give at most one of ``jwks_uri`` and ``jwks`` (a JWKS mapping or its JSON text); with neither,
    the ``jwks_uri`` is discovered from the issuer's metadata. ``clock`` is monotonic seconds.
    Public counters: ``fetch_count`` (fetch attempts, each possibly including discovery requests)
    and ``fetch_failures``.
    """

    def __init__(
        self,
        rules: OAuthRules,
        fetch_json: FetchJson,
        *,
        jwks_uri: str | None = None,
        jwks: Mapping[str, Any] | str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if jwks_uri is not None and jwks is not None:
            raise ValueError("give jwks_uri or an inline jwks, not both")
        self.rules = rules
        self._fetch_json = fetch_json
        self._clock = clock
        self._keys: Mapping[str, jwt.PyJWK] = MappingProxyType({})
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._jwks_uri = jwks_uri
        self.fetch_count = 0
        self.fetch_failures = 0
        self.last_error: str | None = None
        self._verified = VerifiedTokens()  # access tokens, for the current key set
        self.source: KeySource
        if jwks is not None:
            self.source = "inline"
            document = json.loads(jwks) if isinstance(jwks, str) else jwks
            keys = load_jwks(document, source="inline JWKS")
            if not keys:
                raise ValueError("inline JWKS has no usable key (RSA/EC public keys with kid)")
            self._keys = MappingProxyType(keys)
            self._loaded_at = clock()
        elif jwks_uri is not None:
            self.source = "jwks_uri"
        else:
            self.source = "discovery"
            discovery_urls(rules.issuer)  # raises early if discovery cannot work

    # -- state ----------------------------------------------------------------------------

    @property
    def keys(self) -> Mapping[str, jwt.PyJWK]:
        """The current keys (read-only), possibly empty before the first successful fetch."""
        return self._keys

    @property
    def jwks_uri(self) -> str | None:
        """The configured or discovered JWKS URL (None before discovery, or inline)."""
        return self._jwks_uri

    @property
    def loaded_at(self) -> float | None:
        """``clock()`` time of the last successful load."""
        return self._loaded_at

    def _stale(self) -> bool:
        if self.source == "inline":
            return False
        return self._loaded_at is None or (
            self._clock() - self._loaded_at >= self.rules.jwks_cache_ttl
        )

    def _may_attempt(self) -> bool:
        return self._attempted_at is None or (
            self._clock() - self._attempted_at >= self.rules.jwks_refresh_interval
        )

    # -- validation -----------------------------------------------------------------------

    async def validate(self, token: str, *, now: float | None = None) -> VerifiedToken:
        """Validate ``token`` with the issuer's keys, fetching them first if needed; on an unknown
        ``kid`` refresh (rate-limited) and retry once. ``JwksUnavailable`` (503) if there are no
        keys at all. A token verified before with the same key set is not verified again until
        it expires (``now`` given, as tests do: always verified, nothing remembered)."""
        if self._stale():
            await self.refresh()
        keys = self._keys
        if not keys:
            raise JwksUnavailable("the authorization server's signing keys are unavailable")
        if now is None and (known := self._verified.get(token, keys)) is not None:
            return known
        try:
            verified = validate_access_token(token, keys, self.rules, now=now)
        except UnknownKid:
            if self.source == "inline":
                raise
            if self._keys is keys:  # nobody refreshed since we looked: try (rate-limited)
                await self.refresh()
            if self._keys is keys:  # no new keys: the kid stays unknown
                raise
            keys = self._keys
            verified = validate_access_token(token, keys, self.rules, now=now)
        if now is None:
            self._verified.put(token, verified, keys)
        return verified

    def validate_now(self, token: str) -> VerifiedToken | None:
        """A token ``validate`` verified before with the current (fresh) keys, else None."""
        if self._stale() or not self._keys:
            return None
        return self._verified.get(token, self._keys)

    async def refresh(self) -> bool:
        """Fetch the keys now unless the last attempt was less than ``jwks_refresh_interval``
        ago; join a fetch already in flight. True if a fetch succeeded."""
        if self.source == "inline":
            return False
        task = self._inflight
        if task is None:
            if not self._may_attempt():
                return False
            self._attempted_at = self._clock()
            task = self._inflight = asyncio.create_task(self._fetch(), name="jwks-fetch")
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel a fetch in flight (callers waiting on it see ``CancelledError``)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- fetching -------------------------------------------------------------------------

    async def _fetch(self) -> bool:
        self.fetch_count += 1
        try:
            uri = self._jwks_uri if self._jwks_uri is not None else await self._discover()
            document = await self._fetch_json(uri)
            keys = load_jwks(document, source=f"JWKS {uri}")
            if not keys:
                raise ValueError(f"JWKS {uri} has no usable key (RSA/EC public keys with kid)")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fetch_failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.source == "discovery":
                self._jwks_uri = None  # discover again next time: the URL may have moved
            if self._keys:
                log.warning(
                    "JWKS fetch for issuer %s failed (%s); keeping %d cached key(s)",
                    self.rules.issuer,
                    self.last_error,
                    len(self._keys),
                )
            else:
                log.error(
                    "JWKS fetch for issuer %s failed (%s); no keys: tokens cannot be checked",
                    self.rules.issuer,
                    self.last_error,
                )
            return False
        finally:
            self._inflight = None
        added = sorted(set(keys) - set(self._keys))
        removed = sorted(set(self._keys) - set(keys))
        self._keys = MappingProxyType(keys)
        self._loaded_at = self._clock()
        self.last_error = None
        if added or removed:
            log.info(
                "JWKS of issuer %s loaded: %d key(s), added %s, removed %s",
                self.rules.issuer,
                len(keys),
                added,
                removed,
            )
        return True

    async def _discover(self) -> str:
        jwks_uri = await discover(self._fetch_json, self.rules.issuer, "jwks_uri")
        log.info("issuer %s: discovered jwks_uri %s", self.rules.issuer, jwks_uri)
        self._jwks_uri = jwks_uri
        return jwks_uri


async def discover(fetch_json: FetchJson, issuer: str, member: str) -> str:
    """The http(s) URL ``member`` (``jwks_uri``, ``token_endpoint``) of ``issuer``'s
    authorization server metadata, tried at every ``discovery_urls`` in turn; ``LookupError``
    naming what was wrong with each if none serves it."""
    problems: list[str] = []
    for url in discovery_urls(issuer):
        try:
            doc = await fetch_json(url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            problems.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        if not isinstance(doc, Mapping):
            problems.append(f"{url}: not a JSON object")
            continue
        if doc.get("issuer") != issuer:
            # RFC 8414 sec. 3.3 / OIDC Discovery sec. 4.3: such metadata MUST NOT be used.
            problems.append(f"{url}: issuer {doc.get('issuer')!r} is not {issuer!r}")
            continue
        found = doc.get(member)
        if not isinstance(found, str) or urlsplit(found).scheme not in ("https", "http"):
            problems.append(f"{url}: no http(s) {member}")
            continue
        return found
    raise LookupError("metadata discovery failed: " + "; ".join(problems))
