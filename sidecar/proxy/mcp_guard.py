"""MCP enforcement on the inbound side: policy decision, rate limits, list filtering, audit.

Thin glue over the pure ``sidecar.mcp`` modules. Only POST bodies are JSON-RPC; the body is
parsed only when a policy or a rate limit is configured, and judged by ``sidecar.mcp.judge`` (as
``mcp-sidecar explain`` does). A refused body never reaches the upstream; an allowed one is
forwarded unchanged, and the answer to one holding list requests is rewritten
(``sidecar.mcp.filter.ListRewrite`` under ``sidecar.proxy.rewrite``'s rule).

A policy in dry run enforces nothing it decides: a denied body is forwarded and audited (and
counted) as ``would_deny``, and the answer to list requests passes unchanged while a copy is
read the same way, to audit what would have been hidden (``would_filter``). Bodies that are not
valid JSON-RPC are still refused (the parser's rule, not the policy's), and rate limits, which
are not part of the policy, still apply.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.mcp.filter import LIST_FIELDS, Allow, ListRewrite, list_exchange
from sidecar.mcp.jsonrpc import Kind, Message, Parsed
from sidecar.mcp.judge import judge
from sidecar.mcp.policy import KNOWN_METHODS, Decision, Policy, TargetKind, visibility
from sidecar.mcp.ratelimit import RateLimiter, principal_key, rate_limited_response
from sidecar.metrics import Metrics
from sidecar.proxy.accesslog import AccessLogger, AuditRecord, mcp_session_id
from sidecar.proxy.messages import Request, Response, json_response
from sidecar.proxy.policy_reload import PolicyHolder
from sidecar.tokens.claims import Principal

MAX_TOOL_LABELS = 256
MAX_WOULD_HIDE = 32  # names listed in one would_filter audit line (all are counted)
MAX_NAME_LOGGED = 256  # characters of one such name


class WouldHide:
    """The ``allow`` of a dry-run list rewrite: keeps every item, and notes (boundedly) those
    the policy would hide."""

    def __init__(self, visible: Allow) -> None:
        self._visible = visible
        self.count = 0
        self.names: dict[str, list[str]] = {}
        self._listed = 0

    def __call__(self, kind: TargetKind, name: str) -> bool:
        if not self._visible(kind, name):
            self.count += 1
            if self._listed < MAX_WOULD_HIDE:
                self._listed += 1
                self.names.setdefault(kind, []).append(name[:MAX_NAME_LOGGED])
        return True


@dataclass
class Verdict:
    """What the guard decided for one request body.

    ``audits``: each message with its own decision and verdict (``allow``, ``deny``,
    ``would_deny``, ``rate_limited``, ``invalid``); ``outcome``: the verdict on the whole body;
    ``batch``: whether the body was a batch (its audit lines then carry ``outcome`` as
    ``batch``). ``observe`` (dry run): the rewrite the answer is shown to instead of being
    rewritten, ``would_hide`` what it saw."""

    refusal: Response | None = None
    rewrite: ListRewrite | None = None
    observe: ListRewrite | None = None
    would_hide: WouldHide | None = None
    audits: list[tuple[Message, Decision | None, str]] = field(default_factory=list)
    outcome: str = "allow"
    batch: bool = False


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

    @property
    def filters_lists(self) -> bool:
        """A policy is in force and enforced (not in dry run): list answers are filtered."""
        return self.policy is not None and not self.policy.current.dry_run

    def inspect(
        self, request: Request, principal: Principal, body: bytes, *, rewrite_ok: bool = True
    ) -> Verdict | None:
        """The verdict on ``body``. ``rewrite_ok=False`` (the callback path, which passes
        answers on unread): None instead of a verdict whose answer must be rewritten or
        watched, before anything is counted (a rate limit), so the caller can go the way that
        reads answers and ask again."""
        if not self.active or request.method != "POST":
            return Verdict()
        policy = self.policy.current if self.policy is not None else None
        judgement = judge(policy, principal, body)
        if not judgement.forwarded:
            refusal = judgement.refusal()
            assert refusal is not None
            status, answer = refusal
            if judgement.invalid is not None:
                self._audit_invalid(request, principal, judgement.invalid.reason)
                return Verdict(refusal=json_response(answer, status=status))
            assert judgement.parsed is not None
            return Verdict(
                refusal=json_response(answer, status=status),
                audits=judgement.elements(),
                outcome="deny",
                batch=judgement.parsed.batch,
            )
        parsed = judgement.parsed
        assert parsed is not None
        exchange = list_exchange(parsed) if policy is not None else None
        if exchange is not None and not rewrite_ok:
            return None
        if self.limiter is not None:
            limited = self._rate_limit(principal, parsed)
            if limited is not None:
                return Verdict(
                    refusal=limited,
                    audits=[(m, None, "rate_limited") for m in parsed.messages],
                    outcome="rate_limited",
                    batch=parsed.batch,
                )
        verdict = Verdict(
            audits=judgement.elements(),
            outcome="allow" if judgement.allowed else judgement.denied,
            batch=parsed.batch,
        )
        if exchange is None:
            return verdict
        assert policy is not None
        allow = self._visible(policy, principal)
        if policy.dry_run:
            verdict.would_hide = WouldHide(allow)
            verdict.observe = ListRewrite(exchange, verdict.would_hide)
        else:
            verdict.rewrite = ListRewrite(exchange, allow)
        return verdict

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

    def _visible(self, policy: Policy, principal: Principal) -> Allow:
        """What the answer's list items are filtered with, for a body holding list requests
        under a policy."""
        allowed = visibility(policy, principal)

        def allow(kind: TargetKind, name: str) -> bool:
            if kind == "tool" and len(self.known_tools) < MAX_TOOL_LABELS:
                self.known_tools.add(name)  # server-declared names become metric labels
            return allowed(kind, name)

        return allow

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
        batch = verdict.outcome if verdict.batch else None
        for message, decision, own in verdict.audits:
            if message.kind is Kind.RESPONSE:
                continue
            # metrics count what happened: an allowed element of a refused batch was refused
            happened = own if own != "allow" else verdict.outcome
            self.metrics.mcp_request(
                self._method_label(message.method), self._tool_label(message), happened
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
                    decision=own,
                    batch=batch,
                    rule=decision.rule if decision is not None else None,
                    status=status,
                    latency_ms=latency,
                    mcp_session_id=session,
                )
            )

    def record_observed(
        self, request: Request, principal: Principal, verdict: Verdict, status: int
    ) -> None:
        """The ``would_filter`` audit line of a dry-run policy, once the list answer was read:
        what it would have hidden (at most ``MAX_WOULD_HIDE`` names, all counted), or why it
        would have replaced the answer; nothing if it would have changed nothing."""
        observed, hidden = verdict.observe, verdict.would_hide
        if observed is None or hidden is None:
            return
        if hidden.count == 0 and observed.failure is None:
            return
        lists = [m for m, _, _ in verdict.audits if m.method in LIST_FIELDS]
        lone = lists[0] if len(lists) == 1 else None
        self.audit_log.log(
            AuditRecord(
                principal=principal.to_log(),
                method=lone.method if lone is not None else None,
                tool=None,
                request_id=lone.id if lone is not None else None,
                decision="would_filter",
                rule=None,
                status=status,
                latency_ms=0.0,
                mcp_session_id=mcp_session_id(request.headers),
                extra={
                    "would_hide": hidden.names,
                    "would_hide_count": hidden.count,
                    "would_replace": observed.failure,
                },
            )
        )

    def _audit_invalid(self, request: Request, principal: Principal, reason: str) -> None:
        self.metrics.mcp_request("other", "none", "invalid")
        self.audit_log.log(
            AuditRecord(
                principal=principal.to_log(),
                method=None,
                tool=None,
                request_id=None,
                decision="invalid",
                rule=reason,
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
