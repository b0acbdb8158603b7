"""OAuth 2.0 Token Exchange (RFC 8693) from the client side: what an outbound route asks the
security token service (STS) for, and how its answer is read. Pure: no I/O (the HTTP round trip
lives in ``sidecar.proxy.token_exchange``).

The agent's sidecar trades the user's token (the *subject*, taken from the agent's request and
never forwarded) plus its own JWT-SVID (the *actor*, and the client authentication of RFC 7523)
for a token addressed to exactly one MCP server (RFC 8707 ``resource`` / RFC 8693
``audience``). The STS puts the actor into the new token's ``act`` claim, so the server's
sidecar sees who the user is and which workload acts for them.

Answers are read strictly and fail closed: an access token that is not a b64token (it becomes an
HTTP header), a token type other than Bearer, a missing ``issued_token_type`` or a body that is not
a JSON object is a 502, never forwarded. STS error codes (RFC 6749 section 5.2, RFC 8693 section
2.2.2, RFC 8707) become a 401 when the user's token is at fault, a 403 when the exchange is not
permitted, and a 502 otherwise; the STS's ``error`` code is passed on to the agent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from sidecar.errors import SidecarError
from sidecar.tokens.bearer import B64TOKEN_RE
from sidecar.tokens.jose import MAX_TOKEN_BYTES

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "CLIENT_ASSERTION_TYPE",
    "GRANT_TYPE",
    "JWT_TOKEN_TYPE",
    "TOKEN_TYPES",
    "ExchangeCache",
    "ExchangeError",
    "ExchangedToken",
    "basic_authorization",
    "exchange_form",
    "read_answer",
    "subject_key",
    "subject_token",
]

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_PREFIX: Final = "urn:ietf:params:oauth:token-type:"  # noqa: S105 (RFC 8693 URN)
ACCESS_TOKEN_TYPE: Final = TOKEN_TYPE_PREFIX + "access_token"
JWT_TOKEN_TYPE: Final = TOKEN_TYPE_PREFIX + "jwt"
TOKEN_TYPES: Final[Mapping[str, str]] = {
    name: TOKEN_TYPE_PREFIX + name
    for name in ("access_token", "refresh_token", "id_token", "jwt", "saml1", "saml2")
}
"""RFC 8693 section 3: the short names accepted for ``subject_token_type``."""
CLIENT_ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
"""RFC 7523 section 2.2: a JWT (here the agent's JWT-SVID) authenticates the client."""
ISSUED_TYPES: Final = frozenset({ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE})
"""What we can send upstream as ``Authorization: Bearer``."""

MAX_CACHED: Final = 4096
"""Exchanged tokens remembered at most (least recently used dropped first)."""
MAX_ANSWER_BYTES: Final = 64 * 1024

USER_TOKEN_ERRORS: Final = frozenset({"invalid_grant", "invalid_token"})
"""The subject token is invalid, expired or revoked: the user must sign in again (401)."""
DENIED_ERRORS: Final = frozenset(
    {"access_denied", "invalid_scope", "invalid_target", "unauthorized_client"}
)
"""The STS refuses this user / agent / target / scope combination (403)."""

_ERROR_CODE_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}", re.ASCII)  # RFC 6749 5.2
_DESCRIPTION_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,200}", re.ASCII)


class ExchangeError(SidecarError):
    """A token exchange failed; nothing was forwarded. ``sts_error`` is the STS's ``error``
    code (RFC 6749 section 5.2) when it gave a readable one."""

    status = 502
    reason = "token_exchange_failed"

    def __init__(
        self, message: str, *, status: int, reason: str, sts_error: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.sts_error = sts_error

    def to_json(self) -> dict[str, object]:
        body = super().to_json()
        if self.sts_error is not None:
            body["sts_error"] = self.sts_error
        return body

    @property
    def www_authenticate(self) -> str | None:
        """For a 401: the agent's (the user's) token is what must be renewed (RFC 6750)."""
        if self.status != 401:
            return None
        if self.reason == "missing_subject_token":
            return 'Bearer realm="token_exchange"'
        return 'Bearer realm="token_exchange", error="invalid_token"'


@dataclass(frozen=True, slots=True)
class ExchangedToken:
    access_token: str
    expires_at: float | None
    """POSIX seconds; None when the STS gave no lifetime and the token is not a JWT."""
    issued_at: float
    scope: str | None = None


# ------------------------------------------------------------------------------------ request


def subject_token(values: list[str], header: str) -> str:
    """The user's token from the one ``header`` of the agent's request: ``Bearer <token>`` in
    ``Authorization``, the bare token in any other header."""
    if not values:
        raise ExchangeError(
            f"the request carries no user token in {header} to exchange",
            status=401,
            reason="missing_subject_token",
        )
    if len(values) > 1:
        raise ExchangeError(
            f"more than one {header} header", status=400, reason="ambiguous_subject_token"
        )
    value = values[0].strip(" \t")
    if header.lower() == "authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise ExchangeError(
                "Authorization does not carry a Bearer token",
                status=401,
                reason="missing_subject_token",
            )
        value = value.strip(" \t")
    if not value or len(value) > MAX_TOKEN_BYTES or not B64TOKEN_RE.fullmatch(value):
        raise ExchangeError(
            f"the user token in {header} is empty, too long or not a b64token",
            status=401,
            reason="malformed_subject_token",
        )
    return value


def subject_key(token: str) -> bytes:
    """What the cache keys on instead of the user's token itself."""
    return hashlib.sha256(token.encode("ascii")).digest()


def exchange_form(
    *,
    subject: str,
    subject_type: str,
    resource: str | None,
    audience: str | None,
    scopes: tuple[str, ...],
    actor: str | None,
    client_assertion: str | None,
    client_id: str | None,
) -> list[tuple[str, str]]:
    """The ``application/x-www-form-urlencoded`` fields of the token request (RFC 8693 sec. 2.1,
    RFC 8707 sec. 2, RFC 7523 sec. 2.2)."""
    form = [
        ("grant_type", GRANT_TYPE),
        ("subject_token", subject),
        ("subject_token_type", subject_type),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
    ]
    if resource is not None:
        form.append(("resource", resource))
    if audience is not None:
        form.append(("audience", audience))
    if scopes:
        form.append(("scope", " ".join(scopes)))
    if actor is not None:
        form += [("actor_token", actor), ("actor_token_type", JWT_TOKEN_TYPE)]
    if client_id is not None:
        form.append(("client_id", client_id))
    if client_assertion is not None:
        form += [
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            ("client_assertion", client_assertion),
        ]
    return form


def basic_authorization(client_id: str, secret: str) -> str:
    """``client_secret_basic`` (RFC 6749 section 2.3.1): both parts form-urlencoded first."""
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


# ------------------------------------------------------------------------------------- answer


def read_answer(status: int, body: bytes, *, now: float | None = None) -> ExchangedToken:
    """The STS's answer to a token request: the exchanged token, or ``ExchangeError``."""
    now = time.time() if now is None else now
    document = _json_object(body)
    if status != 200:
        raise _refusal(status, document)
    if document is None:
        raise _bad_answer("the token response is not a JSON object")
    token = document.get("access_token")
    if not isinstance(token, str) or not token:
        raise _bad_answer("the token response has no access_token")
    if len(token) > MAX_TOKEN_BYTES or not B64TOKEN_RE.fullmatch(token):
        raise _bad_answer("the issued access_token is not a b64token of acceptable size")
    token_type = document.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise _bad_answer(f"token_type {_show(token_type)} is not Bearer")
    issued = document.get("issued_token_type")
    if issued not in ISSUED_TYPES:
        raise _bad_answer(
            f"issued_token_type {_show(issued)} is not an access token or a JWT (RFC 8693 "
            "section 2.2.1 requires it)"
        )
    expires_in = document.get("expires_in")
    expires_at: float | None
    if expires_in is None:
        expires_at = _jwt_expiry(token)
    elif isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        raise _bad_answer(f"expires_in {_show(expires_in)} is not a number")
    elif expires_in <= 0:
        raise _bad_answer("expires_in is not positive: the token is already expired")
    else:
        expires_at = now + float(expires_in)
    scope = document.get("scope")
    return ExchangedToken(token, expires_at, now, scope if isinstance(scope, str) else None)


def _refusal(status: int, document: Mapping[str, Any] | None) -> ExchangeError:
    code = document.get("error") if document is not None else None
    sts_error = code if isinstance(code, str) and _ERROR_CODE_RE.fullmatch(code) else None
    described = document.get("error_description") if document is not None else None
    detail = (
        f": {described}"
        if isinstance(described, str) and _DESCRIPTION_RE.fullmatch(described)
        else ""
    )
    if status >= 500 or sts_error is None:
        what = f"the STS answered HTTP {status}" + (
            f" ({sts_error})" if sts_error else " without a readable error"
        )
        return ExchangeError(
            what + detail,
            status=502,
            reason="sts_unavailable" if status >= 500 else "sts_bad_response",
            sts_error=sts_error,
        )
    if sts_error in USER_TOKEN_ERRORS:
        return ExchangeError(
            f"the STS refused the user's token ({sts_error}){detail}",
            status=401,
            reason="subject_token_rejected",
            sts_error=sts_error,
        )
    if sts_error in DENIED_ERRORS:
        return ExchangeError(
            f"the STS refused the exchange ({sts_error}){detail}",
            status=403,
            reason="token_exchange_denied",
            sts_error=sts_error,
        )
    return ExchangeError(
        f"the STS refused the token request ({sts_error}){detail}",
        status=502,
        reason="token_exchange_failed",
        sts_error=sts_error,
    )


def _bad_answer(message: str) -> ExchangeError:
    return ExchangeError(message, status=502, reason="sts_bad_response")


def _json_object(body: bytes) -> Mapping[str, Any] | None:
    if len(body) > MAX_ANSWER_BYTES:
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _jwt_expiry(token: str) -> float | None:
    """``exp`` of a JWT, unverified: only to know how long to reuse it (the server verifies)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        return None
    return float(exp)


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value[:40])
    return "missing" if value is None else type(value).__name__


# -------------------------------------------------------------------------------------- cache


class ExchangeCache:
    """Exchanged tokens by (subject token hash, target, scopes), reused until shortly before
    they expire: ``refresh_before`` seconds, or half the lifetime if that is shorter, so a
    token always has time left when the server checks it. Bounded (LRU)."""

    def __init__(self, *, limit: int = MAX_CACHED, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()

    def get(self, key: Hashable) -> str | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, token: ExchangedToken, refresh_before: float) -> None:
        if token.expires_at is None:
            return  # no known lifetime: exchanged again next time rather than reused blindly
        lifetime = token.expires_at - token.issued_at
        until = token.expires_at - min(refresh_before, lifetime / 2)
        if until <= self._clock():
            return
        self._entries[key] = (token.access_token, until)
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
