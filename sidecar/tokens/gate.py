"""The inbound token layer as one object: which validator applies, keys, peer binding, challenge.

mTLS answers "which workload is calling"; this answers "on whose behalf, for which audience".
Verified JWT-SVIDs are remembered until they expire or the JWT bundles change, so the
signature of the JWT-SVID a peer sidecar presents on every request is checked once (the rules
are fixed per listener); peer binding and cnf are still checked per request. When both
``jwt_svid`` and ``oauth`` are configured, a token whose (unverified) ``iss`` equals the OAuth
issuer is validated as an OAuth access token and every other token as a JWT-SVID — there
is no fallback from one validator to the other. With ``api_keys``, a request that carries an API
key (in the configured header; in ``Authorization``, a bearer token with the ``mcpk_`` prefix) is
judged by the key alone. Pure apart from ``JwksCache``'s injected fetch.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sidecar.config import InboundConfig
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.apikeys import ApiKeys, ApiKeyVerifier, presented_key
from sidecar.tokens.bearer import bearer_token
from sidecar.tokens.claims import Principal, VerifiedToken, check_actor, check_cnf
from sidecar.tokens.errors import TokenError, TokenLayer
from sidecar.tokens.jwt_svid import JwtBundles, JwtSvidRules, check_peer, validate_jwt_svid
from sidecar.tokens.metadata import WELL_KNOWN_PATH, protected_resource_metadata
from sidecar.tokens.oauth import JwksCache, OAuthRules
from sidecar.tokens.verified import VerifiedTokens

JwksMapping = Mapping[str, Mapping[str, Any]]


class TokenGate:
    """Authenticates the bearer token of one inbound request into a ``Principal``."""

    def __init__(
        self,
        config: InboundConfig,
        jwt_bundles: Callable[[], JwksMapping],
        fetch_json: Callable[[str], Awaitable[Any]],
        *,
        api_keys: Callable[[], ApiKeys] | None = None,
    ) -> None:
        self.config = config
        self.api_keys: Callable[[], ApiKeys] | None = None
        """The key set in force (the reloaded file), or None without ``inbound.api_keys``."""
        if config.api_keys is not None:
            start_keys = config.api_keys.keys
            self.api_keys = api_keys or (lambda: start_keys)  # never: configured but unchecked
        self.api_key_header = config.api_keys.header if config.api_keys is not None else None
        self.key_verifier = ApiKeyVerifier()
        self._jwt_bundles_source = jwt_bundles
        self._bundles_seen: JwksMapping | None = None
        self._bundles = JwtBundles()
        self._verified = VerifiedTokens()  # JWT-SVIDs, for the current bundles
        jwt_cfg, oauth = config.jwt_svid, config.oauth
        self.jwt_rules = (
            JwtSvidRules(jwt_cfg.audiences, jwt_cfg.algorithms, jwt_cfg.leeway) if jwt_cfg else None
        )
        self.bind_to_peer = bool(jwt_cfg and jwt_cfg.bind_to_peer)
        self.bind_actor_to_peer = bool(oauth and oauth.bind_actor_to_peer)
        self.jwks: JwksCache | None = None
        if oauth is not None:
            rules = OAuthRules(
                issuer=oauth.issuer,
                audience=oauth.audience,
                required_scopes=oauth.required_scopes,
                algorithms=oauth.algorithms,
                leeway=oauth.leeway,
                require_typ=oauth.typ,
                roles_claim=oauth.roles_claim,
                groups_claim=oauth.groups_claim,
                jwks_cache_ttl=oauth.jwks_cache_ttl,
                jwks_refresh_interval=oauth.jwks_refresh_interval,
            )
            self.jwks = JwksCache(rules, fetch_json, jwks_uri=oauth.jwks_uri, jwks=oauth.jwks)
            self.metadata_paths = frozenset({WELL_KNOWN_PATH, oauth.resource_metadata_path})
            self.metadata = protected_resource_metadata(
                oauth.audience, oauth.authorization_servers, oauth.scopes_supported
            )
        else:
            self.metadata_paths = frozenset()
            self.metadata = {}

    @property
    def enabled(self) -> bool:
        return self.jwt_rules is not None or self.jwks is not None or self.api_keys is not None

    @property
    def default_layer(self) -> TokenLayer:
        """The layer a missing token is reported for (OAuth wins: it has a discovery story)."""
        if self.jwks is not None:
            return "oauth"
        return "jwt_svid" if self.jwt_rules is not None else "api_key"

    def challenge(self, exc: TokenError) -> str:
        """The ``WWW-Authenticate`` value for a refusal (RFC 6750, RFC 9728)."""
        if self.config.oauth is not None:
            return exc.www_authenticate(resource_metadata=self.config.resource_metadata_url)
        return exc.www_authenticate(realm="spiffe" if self.jwt_rules is not None else "api_key")

    async def authenticate(
        self,
        authorization: Sequence[str],
        peer: SpiffeId | None,
        peer_cert_sha256: str | None,
        *,
        header_values: Callable[[str], list[str]] | None = None,
    ) -> Principal:
        """``header_values(name)``: every value of a request header (for a custom API key
        header)."""
        if not self.enabled:
            return Principal(spiffe_id=peer)
        key = self._api_key(authorization, header_values)
        if key is not None:
            assert self.api_keys is not None
            verified_key = await self.key_verifier.verify(key, self.api_keys())
            return Principal(spiffe_id=peer, token=verified_key)
        token = bearer_token(authorization, layer=self.default_layer)
        verified = await self._validate(token)
        return self._bound(verified, peer, peer_cert_sha256)

    def authenticate_now(
        self,
        authorization: Sequence[str],
        peer: SpiffeId | None,
        peer_cert_sha256: str | None,
        *,
        header_values: Callable[[str], list[str]] | None = None,
    ) -> Principal | None:
        """``authenticate`` when it needs no I/O (and never awaits): a JWT-SVID (validated
        here, or remembered), an OAuth token or API key verified before with the current keys,
        a refusal; None when only ``authenticate`` can answer (keys to fetch, a key to derive,
        a token not seen before with these keys)."""
        if not self.enabled:
            return Principal(spiffe_id=peer)
        key = self._api_key(authorization, header_values)
        if key is not None:
            assert self.api_keys is not None
            verified_key = self.key_verifier.verify_now(key, self.api_keys())
            if verified_key is None:
                return None
            return Principal(spiffe_id=peer, token=verified_key)
        token = bearer_token(authorization, layer=self.default_layer)
        if self._is_oauth(token):
            assert self.jwks is not None
            remembered = self.jwks.validate_now(token)
            if remembered is None:
                return None
            return self._bound(remembered, peer, peer_cert_sha256)
        return self._bound(self._validate_jwt_svid(token), peer, peer_cert_sha256)

    def _api_key(
        self, authorization: Sequence[str], header_values: Callable[[str], list[str]] | None
    ) -> str | None:
        """The API key the request presents (None: none; judged by its other token)."""
        if self.api_keys is None or self.api_key_header is None:
            return None
        header = self.api_key_header
        values = (
            list(authorization)
            if header.lower() == "authorization"
            else (header_values(header) if header_values is not None else [])
        )
        key = presented_key(values, header)
        if key is None and self.jwt_rules is None and self.jwks is None:
            raise TokenError("no API key", reason="missing_token", layer="api_key")
        return key

    def _bound(
        self, verified: VerifiedToken, peer: SpiffeId | None, peer_cert_sha256: str | None
    ) -> Principal:
        """The principal of a verified token, once its bindings to the connection hold."""
        if verified.layer == "jwt_svid" and self.bind_to_peer:
            check_peer(verified, peer)
        if verified.layer == "oauth" and self.bind_actor_to_peer:
            check_actor(verified, peer)
        oauth = self.config.oauth
        check_cnf(
            verified,
            peer_cert_sha256,
            required=bool(oauth and oauth.require_cnf and verified.layer == "oauth"),
        )
        return Principal(spiffe_id=peer, token=verified)

    def _is_oauth(self, token: str) -> bool:
        """Whether ``token`` is judged as an OAuth access token (else as a JWT-SVID)."""
        return self.jwks is not None and (
            self.jwt_rules is None or _unverified_issuer(token) == self.jwks.rules.issuer
        )

    async def _validate(self, token: str) -> VerifiedToken:
        if self._is_oauth(token):
            assert self.jwks is not None
            return await self.jwks.validate(token)
        return self._validate_jwt_svid(token)

    def _validate_jwt_svid(self, token: str) -> VerifiedToken:
        assert self.jwt_rules is not None
        bundles = self._current_bundles()
        verified = self._verified.get(token, bundles)
        if verified is None:
            verified = validate_jwt_svid(token, bundles, self.jwt_rules)
            self._verified.put(token, verified, bundles)
        return verified

    def _current_bundles(self) -> JwtBundles:
        """Parse the streamed JWT bundles once per Workload API update, not per request; new
        bundles are a new key set, so every verified token is verified again (a key may have
        been removed)."""
        raw = self._jwt_bundles_source()
        if raw is not self._bundles_seen:
            self._bundles = JwtBundles.from_jwks(raw)
            self._bundles_seen = raw
        return self._bundles

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()


def _unverified_issuer(token: str) -> str | None:
    """``iss`` of a JWT without verifying anything — only to choose the validator."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return None
    issuer = data.get("iss") if isinstance(data, dict) else None
    return issuer if isinstance(issuer, str) else None
