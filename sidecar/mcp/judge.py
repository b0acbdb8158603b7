"""The policy's verdict on one request body - parse, decide each message, the answer to a
refused body - as the inbound sidecar reaches it (``proxy.mcp_guard``) and as ``mcp-sidecar
explain`` reports it: one function for both, so they cannot disagree. Pure: no I/O.

Rate limits are not part of it (they depend on what came before); the admission checks that
precede it (SPIFFE ID allowlist, tokens) neither. A policy in dry run is judged the same way;
``Judgement.enforced`` says whether the verdict is applied, and a denial it does not apply is
``would_deny``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sidecar.mcp.jsonrpc import JsonRpcError, Message, Parsed, parse_body
from sidecar.mcp.policy import DENIED_STATUS, Decision, Policy, decide_each, denial_body
from sidecar.tokens.claims import Principal

__all__ = ["INVALID_STATUS", "Judgement", "judge"]

INVALID_STATUS: Final = 400


@dataclass(slots=True)
class Judgement:
    """``parsed`` is None when the body is refused as invalid (``invalid`` says why);
    ``decisions`` (one per message) are None when there is no policy; ``allowed``: the policy
    lets the body through (it is valid and every message of it is allowed); ``dry_run``: the
    policy only reports, so a denied body is forwarded all the same (a valid one: an invalid
    body is refused by the parser, not by the policy)."""

    parsed: Parsed | None
    allowed: bool
    invalid: JsonRpcError | None = None
    decisions: tuple[Decision, ...] | None = None
    dry_run: bool = False

    @property
    def forwarded(self) -> bool:
        """The body goes to the server: allowed, or denied by a policy in dry run."""
        return self.allowed or (self.dry_run and self.invalid is None)

    @property
    def denied(self) -> str:
        """The verdict on a denied message: ``deny``, or ``would_deny`` in dry run."""
        return "would_deny" if self.dry_run else "deny"

    def elements(self) -> list[tuple[Message, Decision | None, str]]:
        """Each message with its own decision and its own verdict (``allow`` / ``deny`` /
        ``would_deny``): an allowed element of a denied batch is ``allow`` here, though the
        batch is refused."""
        if self.parsed is None:
            return []
        decisions = self.decisions or (None,) * len(self.parsed.messages)
        denied = self.denied
        return [
            (m, d, "allow" if d is None or d.allowed else denied)
            for m, d in zip(self.parsed.messages, decisions, strict=True)
        ]

    def refusal(self) -> tuple[int, Any] | None:
        """(HTTP status, JSON body) answering a refused body, or None if it is forwarded."""
        if self.invalid is not None:
            error = {"code": self.invalid.code, "message": self.invalid.message}
            return INVALID_STATUS, {"jsonrpc": "2.0", "id": None, "error": error}
        if self.forwarded:
            return None
        assert self.parsed is not None and self.decisions is not None
        answer = denial_body(self.parsed, self.decisions)
        return DENIED_STATUS, answer if answer is not None else {"error": "forbidden_by_policy"}


def judge(policy: Policy | None, principal: Principal, body: bytes) -> Judgement:
    """The verdict on a request body from an admitted ``principal`` (``policy`` None: parsed,
    not judged)."""
    try:
        parsed = parse_body(body)
    except JsonRpcError as exc:
        return Judgement(None, False, invalid=exc)
    if policy is None:
        return Judgement(parsed, True)
    decisions = decide_each(policy, principal, parsed)
    allowed = True
    for decision in decisions:
        if not decision.allowed:
            allowed = False
            break
    return Judgement(parsed, allowed, decisions=decisions, dry_run=policy.dry_run)
