"""Taking the bearer token out of the ``Authorization`` header (RFC 6750 section 2.1). Pure.

Only the header method is supported (``bearer_methods_supported: ["header"]``): tokens in query
strings end up in logs, and form bodies are the MCP server's, not ours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sidecar.tokens.errors import INVALID_REQUEST, TokenError, TokenLayer

__all__ = ["bearer_token"]

# RFC 6750 sec. 2.1 b64token
B64TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*", re.ASCII)


def bearer_token(authorization: Sequence[str], *, layer: TokenLayer) -> str:
    """The token of the one ``Authorization: Bearer <token>`` header among ``authorization`` (all
    values of that header in the request).

    No header: ``missing_token`` (challenge without error code). Several headers, another scheme
    or an empty credential: ``invalid_request``. A credential that is not a b64token:
    ``malformed_token``.
    """
    if not authorization:
        raise TokenError("no bearer token", reason="missing_token", layer=layer)
    if len(authorization) > 1:
        raise TokenError(
            "more than one Authorization header",
            reason="multiple_authorization_headers",
            layer=layer,
            error=INVALID_REQUEST,
        )
    scheme, _, credential = authorization[0].strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise TokenError(
            "Authorization header does not use the Bearer scheme",
            reason="unsupported_auth_scheme",
            layer=layer,
            error=INVALID_REQUEST,
        )
    credential = credential.strip(" \t")
    if not credential:
        raise TokenError(
            "Authorization header has an empty bearer token",
            reason="malformed_authorization",
            layer=layer,
            error=INVALID_REQUEST,
        )
    if not B64TOKEN_RE.fullmatch(credential):
        raise TokenError(
            "bearer token has characters outside the b64token syntax",
            reason="malformed_token",
            layer=layer,
        )
    return credential
