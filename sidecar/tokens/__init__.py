"""The token layer: JWT-SVIDs (SPIFFE) and OAuth 2.1 access tokens (MCP authorization).

Pure where possible (no aiohttp anywhere in this package): the validators are plain functions of
token, keys, rules and time; ``JwksCache`` does its HTTP through an injected ``fetch_json``.
"""

from sidecar.tokens.bearer import bearer_token
from sidecar.tokens.claims import Principal, VerifiedToken, cert_thumbprint, check_cnf
from sidecar.tokens.errors import InsufficientScope, JwksUnavailable, TokenError, UnknownKid
from sidecar.tokens.jose import ALLOWED_ALGORITHMS, MAX_TOKEN_BYTES, load_jwks
from sidecar.tokens.jwt_svid import JwtBundles, JwtSvidRules, check_peer, validate_jwt_svid
from sidecar.tokens.metadata import (
    metadata_path,
    metadata_url,
    protected_resource_metadata,
    www_authenticate,
)
from sidecar.tokens.oauth import JwksCache, OAuthRules, discovery_urls, validate_access_token

__all__ = [
    "ALLOWED_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "InsufficientScope",
    "JwksCache",
    "JwksUnavailable",
    "JwtBundles",
    "JwtSvidRules",
    "OAuthRules",
    "Principal",
    "TokenError",
    "UnknownKid",
    "VerifiedToken",
    "bearer_token",
    "cert_thumbprint",
    "check_cnf",
    "check_peer",
    "discovery_urls",
    "load_jwks",
    "metadata_path",
    "metadata_url",
    "protected_resource_metadata",
    "validate_access_token",
    "validate_jwt_svid",
    "www_authenticate",
]
