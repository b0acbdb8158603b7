"""Errors of the token layer (JWT-SVID and OAuth bearer tokens).

Every refusal carries the HTTP status it maps to, a stable snake_case ``reason`` (metric label, JSON
body, log line), the ``layer`` that refused (``jwt_svid`` or ``oauth``) and the RFC 6750 section
3.1 ``error`` code for the ``WWW-Authenticate`` challenge. Messages are safe to send to the client:
they never contain key material, the token, or attacker-controlled header values.
"""

from __future__ import annotations

from typing import Literal

from sidecar.errors import SidecarError

TokenLayer = Literal["jwt_svid", "oauth", "api_key"]

INVALID_TOKEN = "invalid_token"  # noqa: S105 (an RFC 6750 error code)
INVALID_REQUEST = "invalid_request"
INSUFFICIENT_SCOPE = "insufficient_scope"


class TokenError(SidecarError):
    """A bearer token was refused: 401 with ``WWW-Authenticate: Bearer error=...``.

    ``error`` is the RFC 6750 error code, or ``None`` when the request carried no token at all
    (RFC 6750 section 3.1: the challenge then SHOULD NOT include an error code) or when the
    failure is ours, not the client's (``JwksUnavailable``, 503).
    """

    status = 401
    reason = "invalid_token"
    error: str | None = INVALID_TOKEN

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        layer: TokenLayer,
        error: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.layer: TokenLayer = layer
        if error is not None:
            self.error = error
        elif self.reason == "missing_token":
            self.error = None

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "layer": self.layer}

    def www_authenticate(
        self, *, resource_metadata: str | None = None, realm: str | None = None
    ) -> str:
        """The ``WWW-Authenticate`` value of this refusal (RFC 6750 sec. 3, RFC 9728 sec. 5.1)."""
        from sidecar.tokens.metadata import www_authenticate

        return www_authenticate(
            resource_metadata=resource_metadata,
            realm=realm,
            error=self.error,
            description=self.message if self.error else None,
            scope=getattr(self, "scope", None),
        )


class UnknownKid(TokenError):
    """The token's ``kid`` is not among the keys: the caller may refresh its keys and retry."""

    reason = "unknown_kid"

    def __init__(self, message: str, *, layer: TokenLayer) -> None:
        super().__init__(message, reason="unknown_kid", layer=layer)


class InsufficientScope(TokenError):
    """A valid token without every required scope: 403 ``error="insufficient_scope"`` with the
    space-separated ``scope`` the client must obtain (step-up authorization)."""

    status = 403
    reason = "insufficient_scope"
    error = INSUFFICIENT_SCOPE

    def __init__(self, message: str, *, scope: str, layer: TokenLayer = "oauth") -> None:
        super().__init__(message, reason="insufficient_scope", layer=layer)
        self.scope = scope


class JwksUnavailable(TokenError):
    """No signing keys could be obtained from the authorization server, and none are cached.

    503, not 401: the token may well be valid; it is our side that cannot check it.
    """

    status = 503
    reason = "jwks_unavailable"
    error = None

    def __init__(self, message: str, *, layer: TokenLayer = "oauth") -> None:
        super().__init__(message, reason="jwks_unavailable", layer=layer)
