"""Tokens whose signature and claims were already checked, remembered so a token presented on
every request (a sidecar's cached JWT-SVID, an agent's OAuth access token) is verified once.

A remembered result holds only while the token has not expired (``exp``, no leeway) and only for
the key set it was verified with: when the keys change (a bundle update, a JWKS refetch, a key
removed), everything remembered is forgotten and tokens are verified again against the new
keys. Refusals are never remembered. Like Envoy's ``jwt_cache_config``, bounded in size.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sidecar.tokens.claims import VerifiedToken

MAX_REMEMBERED = 4096


class VerifiedTokens:
    """token -> its ``VerifiedToken``, for one key set at a time (compared by identity)."""

    def __init__(
        self, *, limit: int = MAX_REMEMBERED, clock: Callable[[], float] | None = None
    ) -> None:
        self.limit = limit
        self._clock = clock  # POSIX seconds; None: time.time, looked up at each call
        self._keys: object = None
        self._entries: dict[str, tuple[VerifiedToken, float]] = {}

    def get(self, token: str, keys: object) -> VerifiedToken | None:
        """The remembered result for ``token`` verified with ``keys``, if it has not expired."""
        if keys is not self._keys:
            self._forget_all(keys)
            return None
        entry = self._entries.get(token)
        if entry is None:
            return None
        now = time.time() if self._clock is None else self._clock()
        return entry[0] if now < entry[1] else None

    def put(self, token: str, verified: VerifiedToken, keys: object) -> None:
        if keys is not self._keys:
            self._forget_all(keys)
        if len(self._entries) >= self.limit:
            self._entries.clear()  # a flood of distinct tokens: start over rather than grow
        self._entries[token] = (verified, verified.expires_at.timestamp())

    def __len__(self) -> int:
        return len(self._entries)

    def _forget_all(self, keys: object) -> None:
        self._entries.clear()
        self._keys = keys
