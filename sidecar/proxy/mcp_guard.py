"""MCP enforcement on the inbound side: policy decision, rate limits, list filtering, audit.

Thin glue over the pure ``sidecar.mcp`` modules. Only POST bodies are JSON-RPC; the body is
parsed only when a policy or a rate limit is configured. A refused body never reaches the
upstream; an allowed one is forwarded unchanged, and list responses to it are filtered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.mcp.filter import FilterError, SseFilter, filter_json_body, pending_list_requests
from sidecar.mcp.jsonrpc import JsonRpcError, Kind, Message, Parsed, parse_body
from sidecar.mcp.policy import (
    KNOWN_METHODS,
    Decision,
    Policy,
    TargetKind,
    decide_each,
    denial_body,
    visibility,
)
from sidecar.mcp.ratelimit import RateLimiter, principal_key, rate_limited_response
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger, AuditRecord, mcp_session_id
from sidecar.proxy.forward import BodyRewriter, RewriteError
from sidecar.proxy.messages import Request, Response, json_response
from sidecar.proxy.policy_reload import PolicyHolder
from sidecar.tokens.claims import Principal

MAX_FILTERED_JSON = 16 * 1024 * 1024
MAX_TOOL_LABELS = 256


class JsonListRewriter:
    """Buffers an ``application/json`` answer to list requests and filters it at the end."""

    def __init__(self, filter_body: Callable[[bytes], bytes]) -> None:
        self._filter = filter_body
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        if len(self._buf) > MAX_FILTERED_JSON:
            raise RewriteError("list response too large to filter")
        return b""

    def finish(self) -> bytes:
        return self._filter(bytes(self._buf))


class SseListRewriter:
    def __init__(self, sse: SseFilter) -> None:
        self._sse = sse

    def feed(self, chunk: bytes) -> bytes:
        try:
            return self._sse.feed(chunk)
        except FilterError as exc:
            raise RewriteError(str(exc)) from exc

    def finish(self) -> bytes:
        try:
            return self._sse.flush()
        except FilterError as exc:
            raise RewriteError(str(exc)) from exc


@dataclass
class Verdict:
    """What the guard decided for one request body."""

    refusal: Response | None = None
    rewriter: Callable[[str], BodyRewriter | None] | None = None
    audits: list[tuple[Message, Decision | None, str]] = field(default_factory=list)


class McpGuard:
    def __init__(
        self,
        policy: PolicyHolder[Policy] | None,
        limiter: RateLimiter | None,
        metrics: Metrics,
        audit_log: AccessLogger,
    ) -> None:
        self.policy = policy
        self.limiter = limiter
        self.metrics = metrics
        self.audit_log = audit_log
        self.known_tools: set[str] = set()

    @property
    def active(self) -> bool:
        return self.policy is not None or self.limiter is not None

    def inspect(self, request: Request, principal: Principal, body: bytes) -> Verdict:
        if not self.active or request.method != "POST":
            return Verdict()
        try:
            parsed = parse_body(body)
        except JsonRpcError as exc:
            error = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": exc.code, "message": exc.message},
            }
            verdict = Verdict(refusal=json_response(error, status=400))
            self._audit_invalid(request, principal, exc)
            return verdict
        policy = self.policy.current if self.policy is not None else None
        decisions = decide_each(policy, principal, parsed) if policy is not None else None
        if decisions is not None and not all(d.allowed for d in decisions):
            answer = denial_body(parsed, decisions)
            denied = json_response(
                answer if answer is not None else {"error": "forbidden_by_policy"}, status=403
            )
            return Verdict(
                refusal=denied,
                audits=[(m, d, "deny") for m, d in zip(parsed.messages, decisions, strict=True)],
            )
        if self.limiter is not None:
            limited = self._rate_limit(principal, parsed)
            if limited is not None:
                return Verdict(
                    refusal=limited, audits=[(m, None, "rate_limited") for m in parsed.messages]
                )
        audits = [
            (m, decisions[i] if decisions is not None else None, "allow")
            for i, m in enumerate(parsed.messages)
        ]
        return Verdict(rewriter=self._rewriter(policy, principal, parsed), audits=audits)

    def _rate_limit(self, principal: Principal, parsed: Parsed) -> Response | None:
        assert self.limiter is not None
        requests = [m for m in parsed.messages if m.kind is Kind.REQUEST]
        tools = [m.target if m.method == "tools/call" else None for m in requests]
        if not requests:
            return None
        wait = self.limiter.check_many(principal_key(principal), tools)
        if wait is None:
            return None
        answers = [rate_limited_response(m.id, wait) for m in requests]
        body: Any = answers if parsed.batch else answers[0]
        response = json_response(body, status=429)
        response.headers["Retry-After"] = str(int(wait))
        return response

    def _rewriter(
        self, policy: Policy | None, principal: Principal, parsed: Parsed
    ) -> Callable[[str], BodyRewriter | None] | None:
        pending = pending_list_requests(parsed)
        if policy is None or not pending:
            return None
        allowed = visibility(policy, principal)

        def allow(kind: TargetKind, name: str) -> bool:
            if kind == "tool" and len(self.known_tools) < MAX_TOOL_LABELS:
                self.known_tools.add(name)  # server-declared names become metric labels
            return allowed(kind, name)

        def make(content_type: str) -> BodyRewriter | None:
            if content_type == "text/event-stream":
                return SseListRewriter(SseFilter(pending, allow))
            if content_type == "application/json":
                return JsonListRewriter(
                    lambda data: filter_json_body(data, pending, allow, batch=parsed.batch)
                )
            return None

        return make

    # -- audit and metrics -------------------------------------------------------------------

    def record(
        self,
        request: Request,
        principal: Principal,
        verdict: Verdict,
        status: int,
        started: float,
    ) -> None:
        """Audit lines and metrics for the messages of one body (the principal is rendered for
        the audit log only when that log is on)."""
        if not verdict.audits:
            return
        auditing = self.audit_log.enabled
        if auditing:
            latency = (time.perf_counter() - started) * 1000
            session = mcp_session_id(request.headers)
        who: Mapping[str, Any] | None = None
        for message, decision, outcome in verdict.audits:
            if message.kind is Kind.RESPONSE:
                continue
            self.metrics.mcp_request(
                self._method_label(message.method), self._tool_label(message), outcome
            )
            if not auditing:
                continue
            if who is None:
                who = principal.to_log()
            self.audit_log.log(
                AuditRecord(
                    principal=who,
                    method=message.method,
                    tool=message.target,
                    request_id=message.id,
                    decision=outcome,
                    rule=decision.rule if decision is not None else None,
                    status=status,
                    latency_ms=latency,
                    mcp_session_id=session,
                )
            )

    def _audit_invalid(self, request: Request, principal: Principal, exc: JsonRpcError) -> None:
        self.metrics.mcp_request("other", "none", "invalid")
        self.audit_log.log(
            AuditRecord(
                principal=principal.to_log(),
                method=None,
                tool=None,
                request_id=None,
                decision="invalid",
                rule=exc.reason,
                status=400,
                latency_ms=0.0,
                mcp_session_id=mcp_session_id(request.headers),
            )
        )

    @staticmethod
    def _method_label(method: str | None) -> str:
        if method is None:
            return "none"
        return method if method in KNOWN_METHODS else "other"

    def _tool_label(self, message: Message) -> str:
        if message.method != "tools/call" or message.target is None:
            return "none"
        return message.target if message.target in self.known_tools else "other"
