"""Token buckets on a fake clock: burst, refill, Retry-After, per-tool buckets, eviction."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigErrors
from sidecar.mcp.ratelimit import (
    RATE_LIMITED_CODE,
    RateLimit,
    RateLimiter,
    parse_rate,
    parse_rate_limits,
    principal_key,
    rate_limited_response,
)
from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.claims import Principal


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(
    *limits: RateLimit, max_buckets: int = 10_000, idle_ttl: float = 600.0
) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(limits, clock, max_buckets, idle_ttl), clock


def allowed_in_a_row(rl: RateLimiter, key: str, tool: str | None = None) -> int:
    count = 0
    while rl.check(key, tool) is None:
        count += 1
        assert count < 10_000
    return count


def test_burst_then_retry_after_then_refill() -> None:
    rl, clock = limiter(RateLimit(rate=2.0, burst=5, per="principal"))
    assert allowed_in_a_row(rl, "a") == 5
    assert rl.check("a") == 1.0  # 0.5 s to the next token, rounded up
    clock.now += 0.5
    assert rl.check("a") is None
    assert rl.check("a") == 1.0
    clock.now += 3.0  # 6 tokens worth, capped at the burst
    assert allowed_in_a_row(rl, "a") == 5


def test_n_plus_burst_over_a_window() -> None:
    rl, clock = limiter(RateLimit(rate=8.0, burst=20, per="principal"))
    passed = 0
    for _ in range(100):  # 5 attempts every 0.125 s (exact in binary floating point)
        passed += sum(rl.check("p") is None for _ in range(5))
        clock.now += 0.125
    # the burst, plus one token per tick after the first: 99 ticks * 0.125 s * 8/s
    assert passed == 20 + 99


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    rl, clock = limiter(RateLimit(rate=10 / 3600, burst=1, per="principal"))  # 10/h
    assert rl.check("a") is None
    assert rl.check("a") == 360.0
    clock.now += 359.2
    assert rl.check("a") == 1.0
    clock.now += 0.81
    assert rl.check("a") is None


def test_denied_calls_consume_nothing() -> None:
    rl, clock = limiter(
        RateLimit(rate=1.0, burst=3, per="principal"),
        RateLimit(rate=1.0, burst=1, per="principal_tool", tools=("slow",)),
    )
    assert rl.check("a", "slow") is None
    assert rl.check("a", "slow") == 1.0  # tool bucket empty: principal bucket untouched
    assert rl.check("a", "fast") is None
    assert rl.check("a", "fast") is None
    assert rl.check("a", "fast") == 1.0  # 3 taken: slow + 2 fast
    del clock


def test_per_tool_buckets_are_independent() -> None:
    rl, _ = limiter(RateLimit(rate=1.0, burst=2, per="principal_tool", tools=("search_*",)))
    assert allowed_in_a_row(rl, "a", "search_web") == 2
    assert allowed_in_a_row(rl, "a", "search_docs") == 2
    assert allowed_in_a_row(rl, "b", "search_web") == 2
    assert rl.check("a", "add") is None  # not limited
    assert rl.check("a", None) is None  # not a tool call
    assert rl.bucket_count == 3


def test_principals_are_independent() -> None:
    rl, _ = limiter(RateLimit(rate=1.0, burst=1, per="principal"))
    assert rl.check("a") is None and rl.check("a") == 1.0
    assert rl.check("b") is None


def test_batches_are_all_or_nothing() -> None:
    rl, clock = limiter(RateLimit(rate=1.0, burst=3, per="principal"))
    assert rl.check_many("a", ["t", None]) is None
    assert rl.check_many("a", ["t", "t"]) == 1.0  # 1 token left, 2 needed: nothing taken
    assert rl.check("a") is None
    clock.now += 10
    assert rl.check_many("a", ["t"] * 5) is None  # bigger than the burst: passes when full...
    assert rl.check("a") == 3.0  # ...and leaves a debt of 2


def test_idle_buckets_are_evicted() -> None:
    rl, clock = limiter(RateLimit(rate=1.0, burst=5, per="principal"), idle_ttl=60.0)
    for key in ("a", "b", "c"):
        assert rl.check(key) is None
    assert rl.bucket_count == 3
    clock.now += 30
    assert rl.check("c") is None
    clock.now += 31  # a and b idle for 61 s and full again; c used 31 s ago
    assert rl.sweep() == 2
    assert rl.bucket_count == 1
    clock.now += 61
    assert rl.check("d") is None  # a check sweeps too
    assert rl.bucket_count == 1


def test_idle_buckets_that_are_not_full_are_kept() -> None:
    rl, clock = limiter(RateLimit(rate=0.01, burst=5, per="principal"), idle_ttl=60.0)
    assert allowed_in_a_row(rl, "a") == 5
    clock.now += 100  # 1 token back of 5: evicting would forgive the debt
    assert rl.sweep() == 0 and rl.bucket_count == 1
    clock.now += 400
    assert rl.sweep() == 1 and rl.bucket_count == 0


def test_least_recently_used_buckets_are_dropped_beyond_the_cap() -> None:
    rl, clock = limiter(RateLimit(rate=1.0, burst=1, per="principal"), max_buckets=3)
    for key in ("a", "b", "c"):
        assert rl.check(key) is None
    clock.now += 0.1
    assert rl.check("d") is None
    assert rl.bucket_count == 3
    assert rl.check("a") is None  # a's bucket was dropped: it starts full again
    assert rl.check("c") == 1.0  # c's was kept
    assert rl.bucket_count == 3


def test_principal_key() -> None:
    from sidecar.tokens.claims import VerifiedToken

    sid = SpiffeId.parse("spiffe://example.org/ns/a/sa/b")
    assert principal_key(Principal(spiffe_id=sid)) == "spiffe://example.org/ns/a/sa/b"
    import datetime as dt

    token = VerifiedToken(
        layer="oauth",
        subject="alice",
        issuer=None,
        audience=(),
        expires_at=dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
    )
    assert principal_key(Principal(token=token)) == "sub:alice"
    assert principal_key(Principal(spiffe_id=sid, token=token)) == str(sid)
    assert principal_key(Principal()) == "anonymous"


def test_rate_limited_response() -> None:
    assert rate_limited_response(4, 2.2) == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {
            "code": RATE_LIMITED_CODE,
            "message": "rate limit exceeded; retry after 3 s",
            "data": {"reason": "rate_limited", "retry_after": 3},
        },
    }
    assert RATE_LIMITED_CODE == -32029
    assert rate_limited_response("x", 0.01)["error"]["data"]["retry_after"] == 1


def test_parse_rate_limits() -> None:
    limits = parse_rate_limits(
        [
            {"per": "principal", "rate": "10/s", "burst": 20},
            {"per": "principal_tool", "rate": "600/m", "tools": ["search_*", "search_*"]},
            {"per": "principal", "rate": 0.5},
            {"per": "principal", "rate": "1.5 / h", "burst": 1},
        ],
        path="inbound.rate_limits",
    )
    assert limits == (
        RateLimit(rate=10.0, burst=20, per="principal"),
        RateLimit(rate=10.0, burst=10, per="principal_tool", tools=("search_*",)),
        RateLimit(rate=0.5, burst=1, per="principal"),
        RateLimit(rate=1.5 / 3600, burst=1, per="principal"),
    )
    assert parse_rate_limits(None) == ()
    assert parse_rate("2/m") == pytest.approx(1 / 30)


def test_rate_limit_problems_name_their_path() -> None:
    with pytest.raises(ConfigErrors) as err:
        parse_rate_limits(
            [
                {"per": "principle", "rate": "10/s"},
                {"per": "principal", "rate": "10 per second", "burst": True},
                {"per": "principal", "rate": 0, "tools": ["x"]},
                {"rate": "1/s", "brust": 3},
                "10/s",
                {"per": "principal_tool", "rate": "1/s", "tools": []},
            ],
            path="inbound.rate_limits",
        )
    found = {p.path: p.message for p in err.value.problems}
    p = "inbound.rate_limits"
    assert "did you mean 'principal'?" in found[f"{p}[0].per"]
    assert "not a rate" in found[f"{p}[1].rate"]
    assert "whole number from 1" in found[f"{p}[1].burst"]
    assert "greater than 0" in found[f"{p}[2].rate"]
    assert "only with per: principal_tool" in found[f"{p}[2].tools"]
    assert "required" in found[f"{p}[3].per"]
    assert "did you mean 'burst'?" in found[f"{p}[3].brust"]
    assert "expected a mapping" in found[f"{p}[4]"]
    assert "must not be empty" in found[f"{p}[5].tools"]
    assert len(found) == 9
    with pytest.raises(ConfigErrors):
        parse_rate_limits({"per": "principal"})
