"""Token-bucket rate limits per principal and per (principal, tool) (``inbound.rate_limits``).
Pure: the clock is injected; no I/O, no threads, no timers.

Document shape (a list; every item is a separate family of buckets)::

    rate_limits:
      - {per: principal, rate: 10/s, burst: 20}        # every JSON-RPC request of a principal
      - {per: principal_tool, rate: 600/m, burst: 5, tools: ["search_*"]}
                                                       # each matching tool of each principal

``rate``: ``N/s``, ``N/m`` or ``N/h`` (``N`` may have decimals) or a number per second; ``burst``:
the bucket size, i.e. how many calls may come back-to-back (default: one second's worth, at least
1). A bucket starts full, refills continuously at ``rate`` and each call takes one token, so over
any window of T seconds at most ``burst + rate * T`` calls pass. ``tools`` (``principal_tool``
only; globs, case-sensitive; default: every tool) selects which ``tools/call`` names a family
applies to; each matching tool gets its own bucket.

A call over the limit is answered HTTP 429 with ``Retry-After`` and a JSON-RPC error
``RATE_LIMITED_CODE`` (-32029, "rate limit exceeded", in the implementation-defined server-error
range) carrying ``data.retry_after`` (``rate_limited_response``); it consumes nothing.

Memory is bounded: a bucket that is full again and unused for ``idle_ttl`` seconds is dropped
(losslessly: a new bucket starts full), and beyond ``max_buckets`` the least recently used bucket
is dropped. Under a flood of *distinct* principals that eviction resets the oldest buckets, which
then allow a fresh burst; principals are authenticated identities (mTLS SPIFFE IDs, validated
token subjects), not arbitrary strings, so such a flood needs that many credentials.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from sidecar.errors import ConfigError, ConfigErrors
from sidecar.mcp.policy import Glob
from sidecar.schema import (
    NOT_EMPTY,
    Section,
    Value,
    choice,
    got,
    key,
    keys_of,
    list_of,
    parse_each,
    read,
    section_value,
    short,
    whole_number,
)
from sidecar.tokens.claims import Principal

__all__ = [
    "RATE_LIMITED_CODE",
    "RATE_LIMITED_STATUS",
    "Per",
    "RateLimit",
    "RateLimiter",
    "parse_rate",
    "parse_rate_limits",
    "principal_key",
    "rate_limited_response",
    "retry_after_seconds",
]

RATE_LIMITED_CODE: Final = -32029
"""JSON-RPC ``error.code`` of a call refused by a rate limit ("rate limit exceeded")."""
RATE_LIMITED_STATUS: Final = 429
MAX_RATE: Final = 1_000_000.0
"""Upper bound of ``rate`` (per second)."""
MAX_BURST: Final = 1_000_000

Per = Literal["principal", "principal_tool"]


def principal_key(principal: Principal) -> str:
    """The bucket key of a caller: its SPIFFE ID, else ``sub:<token subject>``, else
    ``anonymous`` (the prefix keeps a subject from colliding with the other two forms)."""
    if principal.spiffe_id is not None:
        return str(principal.spiffe_id)
    if principal.sub is not None:
        return f"sub:{principal.sub}"
    return "anonymous"


def retry_after_seconds(wait: float) -> int:
    """``Retry-After`` for a wait in seconds: rounded up to whole seconds, at least 1."""
    return max(1, math.ceil(wait - 1e-9))


def rate_limited_response(message_id: str | int | None, retry_after: float) -> dict[str, Any]:
    """The JSON-RPC error for a rate-limited request: ``error.code`` -32029
    (``RATE_LIMITED_CODE``), ``error.data.retry_after`` in whole seconds (send it as the
    ``Retry-After`` header too, with HTTP 429)."""
    seconds = retry_after_seconds(retry_after)
    return {
        "jsonrpc": "2.0",
        "id": message_id,
        "error": {
            "code": RATE_LIMITED_CODE,
            "message": f"rate limit exceeded; retry after {seconds} s",
            "data": {"reason": "rate_limited", "retry_after": seconds},
        },
    }


class _Bucket:
    __slots__ = ("tokens", "updated", "used")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now  # time of the last refill
        self.used = now  # time of the last consumption (LRU / idle order)


_BucketKey = tuple[int, str, str | None]


class RateLimiter:
    """The buckets of a list of ``RateLimit`` families."""

    def __init__(
        self,
        limits: Sequence[RateLimit],
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 10_000,
        idle_ttl: float = 600.0,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        if idle_ttl <= 0:
            raise ValueError("idle_ttl must be positive")
        self.limits = tuple(limits)
        self._globs = tuple(tuple(Glob.parse(t) for t in limit.tools) for limit in self.limits)
        self._clock = clock
        self._max = max_buckets
        self._idle_ttl = idle_ttl
        self._buckets: OrderedDict[_BucketKey, _Bucket] = OrderedDict()
        self._sweep_every = min(1.0, idle_ttl)
        self._last_sweep = -math.inf

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def check(self, principal_key: str, tool: str | None = None) -> float | None:
        """Take a token for one request of ``principal_key`` (``tool``: the name of a
        ``tools/call``, else None). None = allowed (tokens consumed); otherwise the whole number
        of seconds (>= 1.0) after which it would be allowed - the ``Retry-After`` value - and
        nothing is consumed."""
        return self.check_many(principal_key, (tool,))

    def check_many(self, principal_key: str, tools: Sequence[str | None]) -> float | None:
        """``check`` for the requests of one batch at once: all pass (and consume) or none.

        A batch needing more tokens than a bucket holds passes only when that bucket is full,
        leaving it in debt (negative), so the long-run rate still holds."""
        now = self._clock()
        if now - self._last_sweep >= self._sweep_every:
            self.sweep(now)
        needs: dict[_BucketKey, int] = {}
        for index, limit in enumerate(self.limits):
            if limit.per == "principal":
                if tools:
                    needs[(index, principal_key, None)] = len(tools)
                continue
            for tool in tools:
                if tool is not None and self._applies(index, tool):
                    tool_key: _BucketKey = (index, principal_key, tool)
                    needs[tool_key] = needs.get(tool_key, 0) + 1
        if not needs:
            return None
        wait = 0.0
        for bucket_key, cost in needs.items():
            limit = self.limits[bucket_key[0]]
            bucket = self._buckets.get(bucket_key)
            if bucket is None:
                continue  # a new bucket is full
            self._refill(bucket, limit, now)
            need = min(cost, limit.burst)
            if bucket.tokens < need:
                wait = max(wait, (need - bucket.tokens) / limit.rate)
        if wait > 0:
            return float(retry_after_seconds(wait))
        for bucket_key, cost in needs.items():
            bucket = self._buckets.get(bucket_key)
            if bucket is None:
                bucket = self._buckets[bucket_key] = _Bucket(
                    float(self.limits[bucket_key[0]].burst), now
                )
            bucket.tokens -= cost
            bucket.used = now
            self._buckets.move_to_end(bucket_key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return None

    def sweep(self, now: float | None = None) -> int:
        """Drop buckets unused for ``idle_ttl`` that are full again; returns how many. Checks
        call it (at most once a second); call it periodically too if traffic may stop."""
        if now is None:
            now = self._clock()
        self._last_sweep = now
        victims: list[_BucketKey] = []
        for bucket_key, bucket in self._buckets.items():
            if now - bucket.used < self._idle_ttl:
                break  # ordered by last use: the rest are more recent
            limit = self.limits[bucket_key[0]]
            if bucket.tokens + max(0.0, now - bucket.updated) * limit.rate >= limit.burst:
                victims.append(bucket_key)
        for bucket_key in victims:
            del self._buckets[bucket_key]
        return len(victims)

    def _applies(self, index: int, tool: str) -> bool:
        globs = self._globs[index]
        return not globs or any(g.matches(tool) for g in globs)

    @staticmethod
    def _refill(bucket: _Bucket, limit: RateLimit, now: float) -> None:
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.rate)
        bucket.updated = now


# ------------------------------------------------------------------------------------- parsing

_RATE_RE = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,9})?) ?/ ?(s|m|h)", re.ASCII)
_RATE_UNITS: Final[Mapping[str, float]] = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_LIKE = "a rate like 10/s, 600/m, 1000/h or a number per second"


def parse_rate(value: object, path: str = "rate") -> float:
    """Tokens per second from ``N/s``, ``N/m``, ``N/h`` or a number (per second)."""
    if isinstance(value, str):
        match = _RATE_RE.fullmatch(value)
        if match is None:
            raise ConfigError(path, f"not a rate: {short(value)}; expected {_RATE_LIKE}")
        rate = float(match[1]) / _RATE_UNITS[match[2]]
    elif isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected {_RATE_LIKE}, got {got(value)}")
    else:
        rate = float(value)
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(path, f"must be greater than 0 (got {got(value)})")
    if rate > MAX_RATE:
        raise ConfigError(path, f"must be at most {MAX_RATE:g}/s (got {got(value)})")
    return rate


def _tool_glob(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a tool name or glob, got {got(value)}")
    return value


_RATE = Value(
    parse_rate,
    "rate",
    {"type": ["number", "string"], "pattern": r"^[0-9]{1,9}(\.[0-9]{1,9})? ?/ ?(s|m|h)$"},
)
_TOOLS = list_of(
    Value(_tool_glob, "glob", {"type": "string", "minLength": 1}),
    "tool names or globs",
    empty=NOT_EMPTY,
    label="list of globs",
)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One family of token buckets (an item of ``inbound.rate_limits``)."""

    rate: float = key(
        _RATE,
        "Refill rate: `N/s`, `N/m` or `N/h` (`N` may have decimals: `0.5/s`), or a plain "
        "number per second. Greater than 0, at most 1000000/s.",
        required=_RATE_LIKE,
    )
    """Tokens per second."""
    burst: int = key(
        whole_number(1, MAX_BURST, label="integer"),
        "The bucket size: how many calls may come back-to-back (1 .. 1000000).",
        shown="one second's worth of `rate`, at least 1",
    )
    per: Per = key(
        choice("principal", "principal_tool"),
        "`principal`: one bucket per caller, taken by every JSON-RPC request it sends. "
        "`principal_tool`: one bucket per caller and tool, taken by `tools/call` of a "
        "matching tool.",
        required="'principal' or 'principal_tool'",
    )
    tools: tuple[str, ...] = key(
        _TOOLS,
        "`principal_tool` only: the tool names this family applies to (globs, "
        "case-sensitive); each matching tool gets its own bucket.",
        default=(),
        shown="every tool",
    )
    """Empty: every tool."""


RATE_LIMIT_SECTION = Section(
    "inbound.rate_limits[]", keys_of(RateLimit, "per", "rate", "burst", "tools")
)
RATE_LIMIT_KEYS: Final = RATE_LIMIT_SECTION.names


def _rate_limit(value: object, path: str) -> RateLimit:
    f = read(RATE_LIMIT_SECTION, value, path, none_ok=False)
    per = f.get("per")
    rate = f.get("rate")
    given: dict[str, object] = {}
    if "tools" in f and per == "principal":
        f.error("only with per: principal_tool", "tools")
        given["tools"] = ()
    values = f.values(RateLimit, **given)
    f.check()
    values.setdefault("burst", max(1, min(MAX_BURST, math.ceil(rate))))
    return RateLimit(**values)


def parse_rate_limits(data: object, path: str = "rate_limits") -> tuple[RateLimit, ...]:
    """Validate a ``rate_limits`` list. Raises ``ConfigErrors`` listing every problem by key
    path (``inbound.rate_limits[1].burst``); an absent / empty list is ``()``."""
    if data is None:
        return ()
    if isinstance(data, str) or not isinstance(data, list | tuple):
        raise ConfigErrors([ConfigError(path, f"expected a list of rate limits, got {got(data)}")])
    problems: list[ConfigError] = []
    limits = parse_each(data, path, _rate_limit, problems)
    if limits is None:
        raise ConfigErrors(problems)
    return limits


RATE_LIMITS = section_value(RATE_LIMIT_SECTION, parse_rate_limits, many="list of rate limits")
