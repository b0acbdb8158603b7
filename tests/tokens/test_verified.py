"""VerifiedTokens: a remembered verification never outlives its token or its key set."""

from __future__ import annotations

import datetime as dt

from sidecar.tokens.claims import VerifiedToken
from sidecar.tokens.verified import VerifiedTokens

EXPIRY = 2_000_000_000.0


def verified(subject: str = "agent") -> VerifiedToken:
    return VerifiedToken(
        layer="oauth",
        subject=subject,
        issuer="https://auth.example.com",
        audience=("https://mcp.example.com/mcp",),
        expires_at=dt.datetime.fromtimestamp(EXPIRY, dt.UTC),
    )


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_remembered_until_the_token_expires() -> None:
    clock = Clock(EXPIRY - 10)
    cache, keys, result = VerifiedTokens(clock=clock), object(), verified()
    assert cache.get("t", keys) is None
    cache.put("t", result, keys)
    assert cache.get("t", keys) is result
    assert cache.get("other", keys) is None
    clock.now = EXPIRY  # exp itself is too late (no leeway here)
    assert cache.get("t", keys) is None


def test_another_key_set_forgets_everything() -> None:
    cache = VerifiedTokens(clock=Clock(EXPIRY - 10))
    old_keys, new_keys = object(), object()
    cache.put("t", verified(), old_keys)
    assert cache.get("t", new_keys) is None
    assert cache.get("t", old_keys) is None  # not even when the old set comes back
    assert len(cache) == 0
    cache.put("t", verified(), old_keys)
    cache.put("u", verified(), new_keys)  # remembering under a new set forgets the old one too
    assert cache.get("t", new_keys) is None and len(cache) == 1


def test_bounded() -> None:
    cache, keys = VerifiedTokens(limit=3, clock=Clock(EXPIRY - 10)), object()
    for name in "abc":
        cache.put(name, verified(name), keys)
    assert len(cache) == 3
    cache.put("d", verified("d"), keys)
    assert len(cache) == 1 and cache.get("d", keys) is not None and cache.get("a", keys) is None
