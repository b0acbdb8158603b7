"""A multiplexing endpoint: several MCP servers ("targets") presented as one Streamable HTTP MCP
server (an outbound route with ``targets:``, or an edge gateway's inbound).

The endpoint owns the client's session (``sidecar.mcp.mux.session``) and keeps one session per
target, each reached over its own mTLS connection pool that checks that target's own SPIFFE ID.

* ``initialize`` fans out to every target (with the client's params) and the answers merge;
  ``notifications/initialized`` fans out; ``DELETE`` ends every target session.
* The list methods fan out and merge page by page (``sidecar.mcp.mux.merge``, cursors signed by
  ``sidecar.mcp.mux.cursor``); ``tools/call``, ``prompts/get``, ``resources/read``,
  ``resources/(un)subscribe`` and ``completion/complete`` go to the owning target
  (``sidecar.mcp.mux.relay``). SSE answers are relayed event by event as they come, never
  buffered: every event is parsed and rewritten (server-to-client request ids, resource URIs);
  one that cannot be read ends the stream with a JSON-RPC error for the client's request.
* The client's GET stream merges one GET stream per target; ``*/list_changed`` from any target
  reaches the client there, and so does a ``list_changed`` of the endpoint's own when a target
  goes away or comes back.
* A target that fails is left out (lists say so in ``_meta``) and a call to it gets a JSON-RPC
  error naming it (``TARGET_UNAVAILABLE``); it is tried again after a back-off (0.5 s doubling
  to 30 s) and initialized again lazily when it answers. A target session that ended (404) is
  initialized again and the message sent once more: a 404 means it was not processed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
)
from dataclasses import dataclass
from typing import Any, Final

from multidict import CIMultiDict

from sidecar import __version__
from sidecar.config import CircuitBreakers, Limits, MuxConfig
from sidecar.mcp.filter import ListRewrite
from sidecar.mcp.jsonrpc import JsonRpcError, Kind, Message, loads, parse_value
from sidecar.mcp.mux.cursor import CursorCodec, CursorError
from sidecar.mcp.mux.merge import LISTS, merge_initialize, merge_page
from sidecar.mcp.mux.names import Naming
from sidecar.mcp.mux.relay import (
    ROUTED_METHODS,
    Routed,
    Unknown,
    Unroutable,
    answer_to_target,
    from_target,
    notification_targets,
    route,
)
from sidecar.mcp.mux.session import (
    MuxSession,
    NameKind,
    SessionTable,
    TargetSession,
    new_session_id,
)
from sidecar.mcp.mux.sse import sse_event
from sidecar.metrics import Metrics
from sidecar.proxy.forward import SSE_HEARTBEAT, forwardable_headers
from sidecar.proxy.handler import RequestInfo
from sidecar.proxy.messages import Request, Response
from sidecar.proxy.mux_target import (
    JSON_MEDIA,
    SSE_MEDIA,
    Refused,
    SessionGone,
    TargetError,
    TargetLink,
    dumps,
    load_answer,
    messages,
    read_whole,
    server_verifier,
)
from sidecar.proxy.svid_header import JwtSvidHeaders
from sidecar.proxy.upstream import DEFAULT_BREAKERS, pool_for
from sidecar.tls.contexts import PeerRejected, RotatingTls
from sidecar.tokens.claims import Principal

log = logging.getLogger(__name__)

TARGET_UNAVAILABLE: Final = -32010
"""JSON-RPC ``error.code`` of a message whose target cannot be reached right now (``data``
names the target and the reason)."""
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
MAX_LIST_PAGES: Final = 64
"""Pages of one target read to learn its names (``prefix_mode: never``)."""
GET_PAUSE: Final = 1.0
"""Seconds between two GET streams to one target (after one ended)."""
CLIENT_STREAM_BACKLOG: Final = 256
"""Events waiting for a slow client on its GET stream; the target streams then wait."""
DRAIN_WAIT: Final = 5.0
"""How long the rest of a target's SSE answer is read after its response (to reuse the
connection); the connection is closed after that."""
_NOT_FORWARDED: Final = (
    "x-forwarded-client-cert",
    "authorization",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    "accept",
    "content-type",
    "origin",
    "cookie",
)
_LIST_CHANGED: Final = tuple(
    dumps({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})
    for kind in ("tools", "prompts", "resources")
)
JSON_HEADERS: Final = (("Content-Type", "application/json"),)
SSE_HEADERS: Final = (("Content-Type", SSE_MEDIA), ("Cache-Control", "no-cache"))


def rpc_error(
    message_id: Any, code: int, text: str, data: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": text}
    if data is not None:
        error["data"] = dict(data)
    return {"jsonrpc": "2.0", "id": message_id, "error": error}


@dataclass
class _Exchange:
    """What one client message needs to reach targets."""

    request: Request
    path: str
    base: CIMultiDict[str]
    """The client's end-to-end headers that may go on to targets."""
    info: RequestInfo
    rewrite: ListRewrite | None


def session_owner(principal: Principal) -> str:
    """Who a session belongs to at an edge gateway: the caller's SPIFFE ID and token subject
    (a session id alone, even leaked, does not let another caller use the session)."""
    spiffe_id = str(principal.spiffe_id) if principal.spiffe_id is not None else ""
    return f"{spiffe_id}|{principal.sub or ''}"


def build_endpoint(
    name: str,
    config: MuxConfig,
    limits: Limits,
    tls: RotatingTls,
    metrics: Metrics,
    svid_headers: JwtSvidHeaders,
    on_rejected: Callable[[PeerRejected], None],
    *,
    peer_is_target: bool = True,
    breakers: CircuitBreakers = DEFAULT_BREAKERS,
) -> MuxEndpoint:
    """An endpoint whose targets are each reached over mTLS with our SVID, each checked
    against its own ``server_spiffe_id``; each target's pool has the endpoint's circuit
    breakers (overflows counted under ``<endpoint>/<target>``)."""
    links: dict[str, TargetLink] = {}
    for target in config.targets:
        pool, host = pool_for(
            target.upstream,
            limits,
            context=tls.client_context,
            verify=server_verifier(tls, target.server_spiffe_id, on_rejected),
            server_name=target.sni,
            breakers=breakers,
            on_overflow=functools.partial(
                metrics.upstream_overflowed,
                "inbound" if not peer_is_target else "outbound",
                f"{name}/{target.name}",
            ),
        )
        links[target.name] = TargetLink(target, pool, host, svid_headers.header)
    return MuxEndpoint(name, config, limits, links, metrics, peer_is_target=peer_is_target)


class MuxEndpoint:
    """One multiplexing endpoint (``name``: the route's name, or ``inbound``)."""

    def __init__(
        self,
        name: str,
        config: MuxConfig,
        limits: Limits,
        links: Mapping[str, TargetLink],
        metrics: Metrics,
        *,
        peer_is_target: bool = True,
    ) -> None:
        self.name = name
        self.peer_is_target = peer_is_target
        """Outbound: a routed call's peer (log, metrics) is its target; inbound it stays the
        client."""
        self.config = config
        self.limits = limits
        self.links = dict(links)
        self.metrics = metrics
        self.naming = Naming.of(list(self.links), config.prefix_mode)
        self.sessions = SessionTable(config.max_sessions, config.session_idle)
        self.cursors = CursorCodec()
        self._inits: dict[tuple[str, str], asyncio.Task[TargetSession]] = {}
        self._streams: dict[str, asyncio.Queue[bytes | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)

    # -- entry -------------------------------------------------------------------------------

    async def handle(
        self,
        request: Request,
        body: bytes,
        path: str,
        info: RequestInfo,
        *,
        owner: str | None = None,
        rewrite: ListRewrite | None = None,
    ) -> Response:
        """Answer one client request (``path``: the request path after the route's prefix;
        ``owner``: who may use the sessions it creates)."""
        info.upstream = f"mux:{','.join(self.links)}"
        for expired in self.sessions.expire(self._now()):
            self._end_later(expired)
        base = forwardable_headers(request.headers, drop=_NOT_FORWARDED)
        exchange = _Exchange(request, path, base, info, rewrite)
        if request.method == "POST":
            return await self._post(exchange, body, owner)
        if request.method in ("GET", "DELETE"):
            session = self._session(request, owner)
            if isinstance(session, Response):
                return session
            if request.method == "GET":
                return self._get(exchange, session)
            return await self._delete(session)
        response = _json_error(405, "method_not_allowed", "use POST, GET or DELETE")
        response.headers["Allow"] = "GET, POST, DELETE"
        return response

    async def close(self) -> None:
        for queue in self._streams.values():
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        for task in [*self._background, *self._inits.values()]:
            task.cancel()
        for task in [*self._background, *self._inits.values()]:
            with contextlib.suppress(BaseException):
                await task
        for link in self.links.values():
            link.pool.close()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _session(self, request: Request, owner: str | None) -> MuxSession | Response:
        session_id = request.headers.get("Mcp-Session-Id")
        if session_id is None:
            return self._rpc_response(
                rpc_error(None, INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required"),
                status=400,
            )
        session = self.sessions.get(session_id, owner, self._now())
        if session is None:
            return self._rpc_response(
                rpc_error(None, INVALID_REQUEST, "Session not found"), status=404
            )
        return session

    # -- POST --------------------------------------------------------------------------------

    async def _post(self, ex: _Exchange, body: bytes, owner: str | None) -> Response:
        try:
            value = loads(body)
            parsed = parse_value(value)
        except JsonRpcError as exc:
            return self._rpc_response(rpc_error(None, exc.code, exc.message), status=400)
        if parsed.batch:
            return self._rpc_response(
                rpc_error(
                    None,
                    INVALID_REQUEST,
                    "batches are not supported by a multiplexing "
                    "endpoint; send one message per request",
                ),
                status=400,
            )
        message = parsed.messages[0]
        assert isinstance(value, dict)
        if message.kind is Kind.REQUEST and message.method == "initialize":
            if ex.request.headers.get("Mcp-Session-Id") is not None:
                return self._rpc_response(
                    rpc_error(
                        message.id,
                        INVALID_REQUEST,
                        "already initialized: initialize "
                        "starts a new session, send it without Mcp-Session-Id",
                    ),
                    status=400,
                )
            return await self._initialize(ex, message, owner)
        if ex.request.headers.get("Mcp-Session-Id") is None and message.method == "server/discover":
            # No stateless (2026-07-28) era here: this error makes SDK clients fall back to
            # the initialize handshake.
            return self._rpc_response(
                rpc_error(
                    message.id,
                    METHOD_NOT_FOUND,
                    "server/discover is not supported by "
                    "this multiplexing endpoint: use initialize",
                )
            )
        session = self._session(ex.request, owner)
        if isinstance(session, Response):
            return session
        if message.kind is Kind.NOTIFICATION:
            await self._notify(ex, session, message)
            return Response(202)
        if message.kind is Kind.RESPONSE:
            return await self._client_answer(ex, session, value)
        return await self._request(ex, session, message, value)

    async def _request(
        self, ex: _Exchange, session: MuxSession, message: Message, raw: dict[str, Any]
    ) -> Response:
        method = message.method
        assert method is not None
        if method == "ping":
            return self._rpc_response({"jsonrpc": "2.0", "id": message.id, "result": {}})
        if method in LISTS:
            return await self._list(ex, session, message)
        if method in ROUTED_METHODS:
            return await self._routed(ex, session, message, raw)
        if method == "logging/setLevel":
            await self._gather(
                session,
                self._ready_targets(session),
                lambda t: self._call(ex, session, t, method, dict(message.params or {})),
            )
            return self._rpc_response({"jsonrpc": "2.0", "id": message.id, "result": {}})
        return self._rpc_response(
            rpc_error(
                message.id,
                METHOD_NOT_FOUND,
                f"Method not found: {method} is not supported by this multiplexing endpoint",
            )
        )

    # -- initialize --------------------------------------------------------------------------

    async def _initialize(self, ex: _Exchange, message: Message, owner: str | None) -> Response:
        params = dict(message.params or {})
        version = params.get("protocolVersion")
        if not isinstance(version, str) or not version:
            return self._rpc_response(
                rpc_error(message.id, INVALID_PARAMS, "initialize needs params.protocolVersion")
            )
        now = self._now()
        session = MuxSession(
            new_session_id(),
            owner,
            params,
            {name: TargetSession() for name in self.links},
            last_used=now,
            path=ex.path,
        )
        answers, unavailable = await self._gather(
            session,
            list(self.links),
            lambda target: self._init_target(ex, session, target, message.id),
        )
        if not answers:
            return self._rpc_response(
                rpc_error(
                    message.id,
                    TARGET_UNAVAILABLE,
                    "no target of this endpoint answered initialize",
                    {"unavailable": [{"target": t, "reason": r} for t, r in unavailable.items()]},
                )
            )
        for evicted in self.sessions.add(session):
            self._end_later(evicted)
        self.metrics.mux_sessions(self.name, len(self.sessions))
        results = {t: a["result"] for t, a in answers.items()}
        merged = merge_initialize(self.naming, results, unavailable, version, __version__)
        response = self._rpc_response({"jsonrpc": "2.0", "id": message.id, "result": merged})
        response.headers["Mcp-Session-Id"] = session.id
        return response

    async def _init_target(
        self, ex: _Exchange, session: MuxSession, target: str, request_id: Any
    ) -> dict[str, Any]:
        """Initialize ``target`` for ``session`` with the client's params; the answer."""
        link = self.links[target]
        state = session.targets[target]
        was_down = state.failures > 0
        fresh = TargetSession()
        payload = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "initialize",
            "params": dict(session.init_params),
        }
        try:
            got = await link.send(
                "POST", fresh, link.path(session.path), ex.base, dumps(payload), self.limits
            )
            target_session = (
                got.headers.get("Mcp-Session-Id") if not isinstance(got, Refused) else None
            )
            answer = await self._answer_of(target, got, request_id)
            result = answer.get("result")
            if not isinstance(result, dict):
                raise TargetError(
                    target,
                    f"initialize failed: {_error_text(answer)}",
                    reason="target_initialize_failed",
                )
            state.initialized(
                target_session, result.get("protocolVersion"), result.get("capabilities")
            )
            if session.client_initialized:
                await self._send_quietly(
                    ex, session, target, {"jsonrpc": "2.0", "method": "notifications/initialized"}
                )
        except TargetError as exc:
            self._failed(session, target, exc)
            raise
        if was_down:
            log.info("%s: target %s is back", self.name, target)
            self._announce_change(session)
        return answer

    async def _ensure(self, ex: _Exchange, session: MuxSession, target: str) -> TargetSession:
        """The target's session, initialized again first if needed (one attempt at a time)."""
        state = session.targets[target]
        if session.closed:
            raise TargetError(target, "the session has ended", reason="session_ended")
        if not state.may_try(self._now()):
            raise TargetError(target, state.reason or "unavailable", reason="target_down")
        if state.ready:
            return state
        key = (session.id, target)
        task = self._inits.get(key)
        if task is None:

            async def init() -> TargetSession:
                await self._init_target(ex, session, target, f"mcp-sidecar-{next(self._ids)}")
                return state

            task = asyncio.get_running_loop().create_task(init())
            self._inits[key] = task
            task.add_done_callback(lambda _: self._inits.pop(key, None))
        return await asyncio.shield(task)

    def _failed(
        self, session: MuxSession, target: str, exc: TargetError, *, slow: bool = False
    ) -> None:
        state = session.targets[target]
        was_available = state.available
        state.failed(exc.message, self._now(), keep_session=slow)
        self.metrics.mux_target_failure(self.name, target, exc.reason)
        log.warning("%s: target %s failed: %s (%s)", self.name, target, exc.message, exc.reason)
        if was_available:
            self._announce_change(session)

    def _announce_change(self, session: MuxSession) -> None:
        """A target went away or came back: the client's lists changed."""
        queue = self._streams.get(session.id)
        if queue is None:
            return
        for note in _LIST_CHANGED:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(sse_event(note))

    # -- talking to targets ------------------------------------------------------------------

    async def _send(
        self,
        ex: _Exchange,
        session: MuxSession,
        target: str,
        method: str,
        body: bytes,
        *,
        accept: str | None = None,
    ) -> Any:
        """Send to ``target`` (initialized first if needed); a 404 for its session is retried
        once after initializing again. Returns the 2xx ``UpstreamResponse`` or ``Refused``."""
        link = self.links[target]
        extra = {} if accept is None else {"accept": accept}
        for attempt in (1, 2):
            state = await self._ensure(ex, session, target)
            try:
                got = await link.send(
                    method, state, link.path(session.path), ex.base, body, self.limits, **extra
                )
            except SessionGone as exc:
                state.gone()
                if attempt == 2:
                    self._failed(session, target, exc)
                    raise
            except TargetError as exc:
                if not (method == "GET" and exc.reason == "target_http_405"):
                    self._failed(session, target, exc)  # (405: a server without GET stream)
                raise
            if state.failures and state.recovered():
                log.info("%s: target %s answers again", self.name, target)
                self._announce_change(session)
            return got
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(
        self,
        ex: _Exchange,
        session: MuxSession,
        target: str,
        method: str,
        params: Mapping[str, Any],
        request_id: Any = None,
    ) -> dict[str, Any]:
        """One request to one target; its JSON-RPC response (result or error)."""
        if request_id is None:
            request_id = f"mcp-sidecar-{next(self._ids)}"
        payload = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": dict(params)}
        got = await self._send(ex, session, target, "POST", dumps(payload))
        try:
            return await self._answer_of(target, got, request_id)
        except TargetError as exc:
            self._failed(session, target, exc)
            raise

    async def _answer_of(self, target: str, got: Any, request_id: Any) -> dict[str, Any]:
        """The response to ``request_id`` in an answer; other messages in it are dropped (a
        fan-out has nobody to relay them to). The rest of an SSE answer is read in the
        background so the connection can be reused."""
        if isinstance(got, Refused):
            return _as_response(got.message, request_id)
        stream = messages(target, got, self.limits)
        async for message in stream:
            if message is None:
                continue
            for item in message if isinstance(message, list) else [message]:
                if isinstance(item, dict) and "method" not in item and item.get("id") == request_id:
                    self._spawn(_drain(stream))
                    return item
            log.debug("%s: dropped a message of %s during a fan-out", self.name, target)
        raise TargetError(target, "the answer ended without a response", reason="no_response")

    async def _send_quietly(
        self, ex: _Exchange, session: MuxSession, target: str, message: Mapping[str, Any]
    ) -> None:
        """A notification or an answer to a target: 202 expected; failures are logged only."""
        state = session.targets[target]
        link = self.links[target]
        try:
            got = await link.send(
                "POST", state, link.path(session.path), ex.base, dumps(message), self.limits
            )
        except TargetError as exc:
            log.info(
                "%s: %s not delivered to %s: %s",
                self.name,
                message.get("method", "answer"),
                target,
                exc.message,
            )
            return
        if not isinstance(got, Refused):
            got.release()

    async def _gather(
        self,
        session: MuxSession,
        targets: Iterable[str],
        call: Callable[[str], Coroutine[Any, Any, dict[str, Any]]],
    ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
        """Run ``call`` for every target at once; answers within ``target_wait`` (in target
        order) and why the others are missing. A target skipped by its back-off, or too slow,
        is unavailable for this answer (a slow one is marked failed: the next fan-outs do not
        wait for it until its back-off ends)."""
        now = self._now()
        unavailable: dict[str, str] = {}
        tasks: dict[str, asyncio.Task[dict[str, Any]]] = {}
        loop = asyncio.get_running_loop()
        for target in targets:
            state = session.targets[target]
            if not state.may_try(now):
                unavailable[target] = state.reason or "unavailable"
                continue
            tasks[target] = loop.create_task(call(target))
        if tasks:
            try:
                await asyncio.wait(tasks.values(), timeout=self.config.target_wait)
            except BaseException:  # the client went away: so does the fan-out
                for task in tasks.values():
                    task.cancel()
                raise
        answers: dict[str, dict[str, Any]] = {}
        for target, task in tasks.items():
            if not task.done():
                task.cancel()
                reason = f"no answer within {self.config.target_wait:g}s"
                slow = TargetError(target, reason, reason="target_slow")
                self._failed(session, target, slow, slow=True)
                unavailable[target] = reason
            elif (exc := task.exception()) is not None:
                unavailable[target] = exc.message if isinstance(exc, TargetError) else repr(exc)
                if not isinstance(exc, TargetError):
                    log.error("%s: fan-out to %s failed", self.name, target, exc_info=exc)
            else:
                answers[target] = task.result()
        return answers, unavailable

    def _ready_targets(self, session: MuxSession) -> list[str]:
        return [name for name, state in session.targets.items() if state.ready]

    # -- lists -------------------------------------------------------------------------------

    async def _list(self, ex: _Exchange, session: MuxSession, message: Message) -> Response:
        method, request_id = message.method, message.id
        assert method is not None and request_id is not None
        params = dict(message.params or {})
        cursor = params.pop("cursor", None)
        positions: dict[str, str] | None = None
        if cursor is not None:
            try:
                positions = self.cursors.decode(session.id, method, cursor)
            except CursorError as exc:
                return self._rpc_response(
                    rpc_error(message.id, INVALID_PARAMS, exc.message, {"reason": exc.reason})
                )
        targets = [t for t in self.links if positions is None or t in positions]
        session.started(request_id, tuple(targets))
        try:

            async def one(target: str) -> dict[str, Any]:
                page = params if positions is None else {**params, "cursor": positions[target]}
                return await self._call(ex, session, target, method, page, request_id)

            answers, unavailable = await self._gather(session, targets, one)
        finally:
            session.finished(request_id)
        page = merge_page(method, self.naming, answers, unavailable, session.names)
        kind = LISTS[method].kind
        for _ in page.ambiguous:
            self.metrics.mux_name_collision(self.name, kind or "resource")
        if page.ambiguous:
            log.warning(
                "%s: %s served by several targets left out of %s (prefix_mode: never): %s",
                self.name,
                kind,
                method,
                ", ".join(sorted(page.ambiguous)),
            )
        next_cursor = (
            self.cursors.encode(session.id, method, page.positions) if page.positions else None
        )
        result = page.result(LISTS[method], next_cursor)
        return self._rpc_response(
            {"jsonrpc": "2.0", "id": message.id, "result": result}, rewrite=ex.rewrite
        )

    async def _learn(self, ex: _Exchange, session: MuxSession, kind: NameKind) -> None:
        """``prefix_mode: never``: read every target's whole list of ``kind`` into the owner
        table (a call named something no list showed yet)."""
        method = "tools/list" if kind == "tool" else "prompts/list"
        shape = LISTS[method]

        async def read_all(target: str) -> dict[str, Any]:
            names: list[str] = []
            cursor: str | None = None
            for _ in range(MAX_LIST_PAGES):
                answer = await self._call(
                    ex, session, target, method, {} if cursor is None else {"cursor": cursor}
                )
                result = answer.get("result")
                if not isinstance(result, dict) or not isinstance(result.get(shape.key), list):
                    break
                names += [
                    item[shape.name_field]
                    for item in result[shape.key]
                    if isinstance(item, dict) and isinstance(item.get(shape.name_field), str)
                ]
                next_cursor = result.get("nextCursor")
                if not isinstance(next_cursor, str) or not next_cursor:
                    break
                cursor = next_cursor
            return {"names": names}

        answers, _ = await self._gather(session, list(self.links), read_all)
        session.names.forget(kind)
        for target, answer in answers.items():
            session.names.learn(kind, target, answer["names"])

    # -- calls routed to one target ----------------------------------------------------------

    async def _routed(
        self, ex: _Exchange, session: MuxSession, message: Message, raw: dict[str, Any]
    ) -> Response:
        method = message.method
        assert method is not None and message.id is not None
        routed = route(self.naming, session, method, message.params or {})
        if isinstance(routed, Unknown):
            await self._learn(ex, session, routed.kind)
            routed = route(self.naming, session, method, message.params or {})
            if isinstance(routed, Unknown):
                routed = Unroutable(f"unknown {routed.kind} {routed.name!r}", "unknown_name")
        if isinstance(routed, Unroutable):
            return self._rpc_response(
                rpc_error(message.id, routed.code, routed.message, {"reason": routed.reason})
            )
        assert isinstance(routed, Routed)
        target = routed.target
        link = self.links[target]
        if self.peer_is_target:
            ex.info.peer = str(link.config.server_spiffe_id)
        ex.info.upstream = link.config.upstream
        payload = dumps({**raw, "params": routed.params})
        session.started(message.id, (target,))
        try:
            got = await self._send(ex, session, target, "POST", payload)
        except TargetError as exc:
            session.finished(message.id)
            return self._rpc_response(_unavailable(message.id, exc))
        if isinstance(got, Refused):
            session.finished(message.id)
            out = from_target(got.message, target, session, self.naming, method)
            return self._rpc_response(out, status=got.status)
        if got.content_type != SSE_MEDIA:
            try:
                return await self._json_answer(session, target, got, method)
            except TargetError as exc:
                self._failed(session, target, exc)
                return self._rpc_response(_unavailable(message.id, exc))
            finally:
                session.finished(message.id)
        stream = self._relay(session, target, got, message.id, method)
        return Response(200, CIMultiDict(SSE_HEADERS), stream=stream)

    async def _json_answer(
        self, session: MuxSession, target: str, got: Any, method: str
    ) -> Response:
        """A target's JSON answer to a call. Only resource URIs may need rewriting in it (a JSON
        body carries the response alone, no server requests): a body without any ``"uri"`` key
        goes to the client as the target sent it, like a plain route's answer; any other is
        parsed strictly and rewritten (or refused)."""
        if got.content_type != JSON_MEDIA:
            got.release()
            raise TargetError(
                target, f"unexpected content type {got.content_type!r}", reason="bad_answer"
            )
        body = await read_whole(target, got, self.limits)
        if not self.naming.uris_mapped or (b'"uri"' not in body and b"\\u" not in body):
            return Response(got.status, CIMultiDict(JSON_HEADERS), body)
        answer = from_target(load_answer(target, body), target, session, self.naming, method)
        return self._rpc_response(answer, status=got.status)

    async def _relay(
        self, session: MuxSession, target: str, got: Any, request_id: Any, method: str
    ) -> AsyncIterator[bytes]:
        """A target's SSE answer, event by event (rewritten), as it comes."""
        answered = False
        failure: TargetError | None = None
        try:
            async with contextlib.aclosing(messages(target, got, self.limits)) as stream:
                async for message in stream:
                    if message is None:
                        yield SSE_HEARTBEAT
                        continue
                    out = from_target(message, target, session, self.naming, method)
                    if out is None:
                        continue
                    if _answers(out, request_id):
                        answered = True
                    yield sse_event(dumps(out))
        except TargetError as exc:
            failure = exc
        finally:
            cancelled = request_id not in session.in_flight  # the client cancelled it
            session.finished(request_id)
        if not answered and not cancelled:
            failure = failure or TargetError(
                target, "the target ended its answer without a response", reason="no_response"
            )
            self._failed(session, target, failure)
            yield sse_event(dumps(_unavailable(request_id, failure)))

    # -- notifications and answers from the client -------------------------------------------

    async def _notify(self, ex: _Exchange, session: MuxSession, message: Message) -> None:
        method = message.method
        assert method is not None
        if method == "notifications/initialized":
            session.client_initialized = True
            targets: Iterable[str] = self._ready_targets(session)
        else:
            targets = notification_targets(session, method, message.params)
        if method == "notifications/cancelled":
            request_id = (message.params or {}).get("requestId")
            if isinstance(request_id, str | int):
                session.finished(request_id)  # no answer is due any more
        note: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if message.params is not None:
            note["params"] = dict(message.params)
        ready = [t for t in targets if session.targets[t].ready]
        if ready:
            await asyncio.wait(
                [asyncio.ensure_future(self._send_quietly(ex, session, t, note)) for t in ready],
                timeout=self.config.target_wait,
            )

    async def _client_answer(
        self, ex: _Exchange, session: MuxSession, raw: dict[str, Any]
    ) -> Response:
        routed = answer_to_target(session, raw)
        if routed is None:
            return _json_error(
                400,
                "unknown_request",
                "no server request with this id is waiting for an answer in this session",
            )
        target, answer = routed
        if session.targets[target].ready:
            await self._send_quietly(ex, session, target, answer)
        return Response(202)

    # -- GET: the merged stream --------------------------------------------------------------

    def _get(self, ex: _Exchange, session: MuxSession) -> Response:
        if SSE_MEDIA not in ex.request.headers.get("Accept", ""):
            return _json_error(406, "not_acceptable", f"a GET stream needs Accept: {SSE_MEDIA}")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(CLIENT_STREAM_BACKLOG)
        previous = self._streams.get(session.id)
        if previous is not None:  # one GET stream per session: the newer replaces the older
            with contextlib.suppress(asyncio.QueueFull):
                previous.put_nowait(None)
        self._streams[session.id] = queue
        loop = asyncio.get_running_loop()
        followers = [
            loop.create_task(self._follow(ex, session, target, queue)) for target in self.links
        ]

        def stop() -> None:
            for task in followers:
                task.cancel()
            if self._streams.get(session.id) is queue:
                del self._streams[session.id]

        return Response(
            200,
            CIMultiDict(SSE_HEADERS),
            stream=self._merged(queue, stop),
            release=stop,
        )

    async def _merged(
        self, queue: asyncio.Queue[bytes | None], stop: Callable[[], None]
    ) -> AsyncIterator[bytes]:
        heartbeat = self.limits.sse_heartbeat or None
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), heartbeat)
                except TimeoutError:
                    yield SSE_HEARTBEAT
                    continue
                if item is None:
                    return
                yield item
        finally:
            stop()

    async def _follow(
        self, ex: _Exchange, session: MuxSession, target: str, queue: asyncio.Queue[bytes | None]
    ) -> None:
        """Relay one target's GET stream into the client's, for as long as the client's lasts;
        reconnect (initializing again if needed) when it ends or fails."""
        while not session.closed:
            state = session.targets[target]
            wait = state.retry_at - self._now()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                got = await self._send(ex, session, target, "GET", b"", accept=SSE_MEDIA)
            except TargetError as exc:
                if exc.reason in ("target_http_405", "session_ended"):
                    return  # this target has no GET stream / the session is over
                continue  # failed: its back-off decides when to try again
            if isinstance(got, Refused):
                return
            try:
                async with contextlib.aclosing(messages(target, got, self.limits)) as stream:
                    async for message in stream:
                        if message is None:
                            continue
                        out = from_target(message, target, session, self.naming)
                        if out is not None:
                            await queue.put(sse_event(dumps(out)))
            except TargetError as exc:
                log.info("%s: GET stream of %s ended: %s", self.name, target, exc.message)
            await asyncio.sleep(GET_PAUSE)

    # -- DELETE and the end of sessions ------------------------------------------------------

    async def _delete(self, session: MuxSession) -> Response:
        self.sessions.remove(session.id)
        self.metrics.mux_sessions(self.name, len(self.sessions))
        await self._end(session)
        return Response(200)

    async def _end(self, session: MuxSession) -> None:
        """End the client's GET stream and every target session (bounded by ``target_wait``)."""
        session.closed = True
        queue = self._streams.pop(session.id, None)
        if queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        deletes = [
            asyncio.ensure_future(self._delete_target(session, target, state))
            for target, state in session.targets.items()
            if state.session_id is not None
        ]
        if deletes:
            await asyncio.wait(deletes, timeout=self.config.target_wait)
            for task in deletes:
                task.cancel()

    async def _delete_target(self, session: MuxSession, target: str, state: TargetSession) -> None:
        link = self.links[target]
        path = link.path(session.path)
        try:
            got = await link.send("DELETE", state, path, CIMultiDict(), b"", self.limits)
        except TargetError as exc:
            log.info("%s: could not end the session of %s: %s", self.name, target, exc.message)
            return
        if not isinstance(got, Refused):
            got.release()
        state.gone()

    def _end_later(self, session: MuxSession) -> None:
        self.metrics.mux_sessions(self.name, len(self.sessions))
        self._spawn(self._end(session))

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- answers -----------------------------------------------------------------------------

    def _rpc_response(
        self,
        data: Any,
        *,
        status: int = 200,
        rewrite: ListRewrite | None = None,
    ) -> Response:
        body = dumps(data)
        if rewrite is not None:  # a merged list: filtered (or replaced) like any list answer
            body = rewrite.json(body)
        return Response(status, CIMultiDict(JSON_HEADERS), body)


def _json_error(status: int, reason: str, message: str) -> Response:
    body = dumps({"error": reason, "message": message, "status": status})
    return Response(status, CIMultiDict(JSON_HEADERS), body)


def _unavailable(message_id: Any, exc: TargetError) -> dict[str, Any]:
    return rpc_error(
        message_id,
        TARGET_UNAVAILABLE,
        f"target {exc.target!r} is unavailable: {exc.message}",
        {"target": exc.target, "reason": exc.reason},
    )


def _answers(message: Any, request_id: Any) -> bool:
    items = message if isinstance(message, list) else [message]
    return any(
        isinstance(m, dict) and "method" not in m and m.get("id") == request_id for m in items
    )


def _as_response(message: Any, request_id: Any) -> dict[str, Any]:
    if isinstance(message, dict) and ("result" in message or "error" in message):
        return message
    return rpc_error(request_id, -32603, "the target refused the request")


def _error_text(answer: Mapping[str, Any]) -> str:
    error = answer.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return "no result"


async def _drain(stream: AsyncGenerator[Any, None]) -> None:
    """Read what is left of an answer (bounded), so its connection goes back to the pool."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_WAIT):
            async for _ in stream:
                pass
    with contextlib.suppress(Exception):
        await stream.aclose()
