"""Client sessions of a multiplexed endpoint and what each keeps per target (pure).

The endpoint owns the client's session: it issues its own ``Mcp-Session-Id`` (256 random bits,
never a target's) and keeps, per target, the target's own session id and negotiated protocol
version. Target session ids never reach the client, nor client session ids a target.

The table is bounded (``max_sessions``: beyond it the least recently used session is ended)
and sessions unused for ``idle`` seconds expire; the caller ends the target sessions of what
``expire`` / ``add`` hand back. Time is passed in (``now``), so this module stays pure.

Per session it also keeps:

* the client's ``initialize`` params, to initialize a target again later (a target that was
  down, or whose session ended) with what the client asked for;
* which targets each in-flight client request went to, so ``notifications/cancelled`` reaches
  the target that owns the request (client request ids go to targets unchanged: each target
  session sees only its own client's ids, and the endpoint's own requests use ids of a form no
  other request of that target session has);
* the server-to-client requests waiting for the client's answer: each gets an id of the
  endpoint (``ServerRequests``), so ids of two targets never collide, and the answer is routed
  back to its target with the original id;
* for ``prefix_mode: never``, the owner of each unprefixed name (``OwnerTable``).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

RequestId = str | int
NameKind = Literal["tool", "prompt"]

MAX_PENDING_SERVER_REQUESTS: Final = 256
"""Server-to-client requests awaiting an answer, per session; the oldest is forgotten first."""
MAX_IN_FLIGHT: Final = 1024
"""Client requests remembered for cancellation, per session; the oldest is forgotten first."""
RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0
"""A failed target is tried again after 0.5 s, doubling per failure up to 30 s."""


def new_session_id() -> str:
    """256 random bits, URL-safe (visible ASCII, as the MCP spec requires)."""
    return secrets.token_urlsafe(32)


@dataclass
class TargetSession:
    """One target's side of a client session."""

    session_id: str | None = None
    """The target's ``Mcp-Session-Id`` (None: it gave none, or it is not initialized)."""
    protocol_version: str | None = None
    ready: bool = False
    """``initialize`` answered (and ``notifications/initialized`` sent once the client did)."""
    failures: int = 0
    retry_at: float = 0.0
    reason: str | None = None
    """Why the target is unavailable (the last failure), None while it works."""
    capabilities: Mapping[str, Any] | None = None

    @property
    def available(self) -> bool:
        """Working as far as we know (initialized, no failure since)."""
        return self.ready and self.reason is None

    def failed(self, reason: str, now: float, *, keep_session: bool = False) -> None:
        """Unavailable until ``retry_at``. A target that was only too slow keeps its session
        (``keep_session``): it is skipped for a while, not initialized again."""
        if not keep_session:
            self.ready = False
            self.session_id = None
        self.failures += 1
        self.reason = reason
        self.retry_at = now + min(RETRY_MAX, RETRY_FIRST * 2 ** (self.failures - 1))

    def recovered(self) -> bool:
        """The target answered: clear its failures; True if it had failed."""
        was_failing = self.failures > 0
        self.failures = 0
        self.reason = None
        self.retry_at = 0.0
        return was_failing

    def gone(self) -> None:
        """The target ended its session (404): initialize again at the next use."""
        self.ready = False
        self.session_id = None

    def may_try(self, now: float) -> bool:
        """Not in a back-off after a failure."""
        return now >= self.retry_at

    def initialized(self, session_id: str | None, version: str | None, caps: Any) -> None:
        self.session_id = session_id
        self.protocol_version = version
        self.capabilities = caps if isinstance(caps, Mapping) else None
        self.ready = True
        self.failures = 0
        self.reason = None
        self.retry_at = 0.0


@dataclass(frozen=True, slots=True)
class ServerRequest:
    target: str
    original_id: RequestId
    progress_token: Any = None


class ServerRequests:
    """Ids the client sees for server-to-client requests: small integers of this session,
    mapped back to (target, original id); bounded."""

    def __init__(self, limit: int = MAX_PENDING_SERVER_REQUESTS) -> None:
        self._limit = limit
        self._next = 1
        self._pending: OrderedDict[int, ServerRequest] = OrderedDict()

    def add(self, target: str, original_id: RequestId, progress_token: Any = None) -> int:
        gateway_id = self._next
        self._next += 1
        self._pending[gateway_id] = ServerRequest(target, original_id, progress_token)
        while len(self._pending) > self._limit:
            self._pending.popitem(last=False)
        return gateway_id

    def take(self, gateway_id: object) -> ServerRequest | None:
        """The request the client answers (forgotten once answered); None if unknown."""
        if isinstance(gateway_id, bool) or not isinstance(gateway_id, int):
            return None
        return self._pending.pop(gateway_id, None)

    def gateway_id(self, target: str, original_id: object) -> int | None:
        """The id the client knows a pending request of ``target`` by (for the target's
        ``notifications/cancelled``)."""
        for gateway_id, request in self._pending.items():
            if request.target == target and _same_id(request.original_id, original_id):
                return gateway_id
        return None

    def forget(self, gateway_id: int) -> None:
        self._pending.pop(gateway_id, None)

    def target_of_progress(self, token: object) -> str | None:
        """The target of a pending request whose ``_meta.progressToken`` is ``token``."""
        if token is None or isinstance(token, bool):
            return None
        for request in self._pending.values():
            if request.progress_token is not None and _same_id(request.progress_token, token):
                return request.target
        return None

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class OwnerTable:
    """``prefix_mode: never``: which target serves each unprefixed tool / prompt name, filled
    from the targets' lists; a name two targets serve is ambiguous."""

    owners: dict[NameKind, dict[str, str]] = field(
        default_factory=lambda: {"tool": {}, "prompt": {}}
    )
    ambiguous: dict[NameKind, set[str]] = field(
        default_factory=lambda: {"tool": set(), "prompt": set()}
    )

    def learn(self, kind: NameKind, target: str, names: Iterable[str]) -> set[str]:
        """Record the names a target listed; returns the names now ambiguous because of it."""
        owners, ambiguous = self.owners[kind], self.ambiguous[kind]
        clashes: set[str] = set()
        for name in names:
            if name in ambiguous:
                clashes.add(name)
                continue
            owner = owners.setdefault(name, target)
            if owner != target:
                del owners[name]
                ambiguous.add(name)
                clashes.add(name)
        return clashes

    def owner(self, kind: NameKind, name: str) -> str | None:
        return self.owners[kind].get(name)

    def is_ambiguous(self, kind: NameKind, name: str) -> bool:
        return name in self.ambiguous[kind]

    def forget(self, kind: NameKind) -> None:
        """A list changed (``list_changed``): learn it again."""
        self.owners[kind].clear()
        self.ambiguous[kind].clear()


@dataclass
class MuxSession:
    id: str
    owner: str | None
    """Who created it (the caller's identity at an edge gateway): only they may use it."""
    init_params: Mapping[str, Any]
    targets: dict[str, TargetSession]
    last_used: float
    path: str = "/"
    """The request path the session began on: a target without its own ``path`` is reached on
    it (after the route's ``strip_prefix``)."""
    closed: bool = False
    """Ended (DELETE, expiry, eviction): nothing more is sent to its targets."""
    client_initialized: bool = False
    """The client sent ``notifications/initialized``: targets initialized later get it too."""
    in_flight: OrderedDict[RequestId, tuple[str, ...]] = field(default_factory=OrderedDict)
    server_requests: ServerRequests = field(default_factory=ServerRequests)
    names: OwnerTable = field(default_factory=OwnerTable)

    def started(self, request_id: RequestId, targets: tuple[str, ...]) -> None:
        self.in_flight[request_id] = targets
        self.in_flight.move_to_end(request_id)
        while len(self.in_flight) > MAX_IN_FLIGHT:
            self.in_flight.popitem(last=False)

    def finished(self, request_id: RequestId) -> None:
        self.in_flight.pop(request_id, None)


class SessionTable:
    """The sessions of one endpoint, least recently used first."""

    def __init__(self, max_sessions: int, idle: float) -> None:
        self.max_sessions = max_sessions
        self.idle = idle
        self._sessions: OrderedDict[str, MuxSession] = OrderedDict()

    def add(self, session: MuxSession) -> list[MuxSession]:
        """Keep ``session``; returns the sessions it pushed out (the least recently used)."""
        self._sessions[session.id] = session
        evicted: list[MuxSession] = []
        while len(self._sessions) > self.max_sessions:
            evicted.append(self._sessions.popitem(last=False)[1])
        return evicted

    def get(self, session_id: str, owner: str | None, now: float) -> MuxSession | None:
        """The live session ``session_id`` of ``owner`` (refreshed), else None: unknown,
        expired or another caller's session all look the same to the caller."""
        session = self._sessions.get(session_id)
        if session is None or session.owner != owner or now - session.last_used > self.idle:
            return None
        session.last_used = now
        self._sessions.move_to_end(session_id)
        return session

    def remove(self, session_id: str) -> MuxSession | None:
        return self._sessions.pop(session_id, None)

    def expire(self, now: float) -> list[MuxSession]:
        """Drop and return the sessions idle for longer than ``idle``."""
        expired: list[MuxSession] = []
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used <= self.idle:
                break
            expired.append(self._sessions.popitem(last=False)[1])
        return expired

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[MuxSession]:
        return list(self._sessions.values())


def _same_id(a: object, b: object) -> bool:
    """JSON-RPC ids compare by type and value (``1`` is not ``"1"``, ``true`` is no id)."""
    return type(a) is type(b) and a == b
