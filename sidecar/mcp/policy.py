"""Per-tool MCP authorization: who may call which method, tool, resource or prompt, with which
arguments (``inbound.mcp_policy``). Pure: no I/O apart from ``load_policy_file``.

Document shape::

    default: deny                  # deny | allow (required)
    dry_run: false                 # true: decide and log, enforce nothing (see below)
    rules:
      - name: agents-add           # required, unique ([A-Za-z0-9][A-Za-z0-9_.-]*, <= 64)
        effect: allow              # allow (default) | deny
        when:                      # who; every key given must match (AND); omitted = anyone
          spiffe_ids: ["spiffe://example.org/ns/agents/**"]   # any of (sidecar.spiffe.match)
          sub: [alice, bob]        # token subject, any of
          scopes: [mcp:tools]      # ALL of these scopes
          roles: [admin]           # any of
          groups: [ops]            # any of
          claims: {tenant: acme}   # top-level claim == value (string/number/bool; a list = any
                                   # of); type-strict: 1 is not "1", true is not 1
        methods: [tools/call]      # exact, case-sensitive; default: see below
        tools: [add, "get_*"]      # globs (fnmatchcase: * ? [seq]; * also matches '/')
        resources: ["file:///docs/*"]
        prompts: [summarise]
        arguments:                 # constraints on named arguments; all must hold
          a: {min: -1000, max: 1000}
          text: {max_length: 200, regex: "[a-z ]+"}
          mode: {one_of: [fast, safe]}
          unit: {equals: celsius, optional: true}

**Decision: explicit deny wins.** Every rule is evaluated. If any matching rule has
``effect: deny`` the call is denied and the *first* such rule (document order) is named; otherwise
if any ``allow`` rule matches it is allowed and the first such rule is named; otherwise
``default`` decides. The outcome never depends on rule order (only which rule is *named* does), so
policies assembled from several ConfigMap fragments, or rules added later, cannot silently
re-open something another fragment denied - with first-match, a fragment whose broad ``allow``
happens to land above a deny would. It is also the usual model (AWS IAM deny-overrides).

**What the rules see.** Once the mTLS / token layers admitted the caller:

* ``initialize``, ``ping``, every notification whose method starts with ``notifications/``, and
  JSON-RPC *responses* from the client (to sampling / elicitation requests) are always allowed.
* ``tools/list``, ``resources/list``, ``resources/templates/list`` and ``prompts/list`` are always
  allowed; their results are filtered with ``visible`` (``sidecar.mcp.filter``).
* Everything else - ``tools/call``, ``resources/read``, ``resources/(un)subscribe``,
  ``prompts/get``, ``completion/complete``, ``logging/setLevel``, unknown methods, and requests
  named ``notifications/...`` that carry an id - goes through the rules.
* A method that is not an MCP method but looks like one after case folding, Unicode (NFKC)
  normalisation and removing whitespace / invisible characters (``Tools/Call``, ``tools/call ``,
  ``tools/\\u200bcall``) is **always denied** (reason ``ambiguous_method``), whatever ``default``
  says: some server might normalise it and run a tool no rule was asked about.

**Which methods a rule covers.** ``methods`` if given. Otherwise: ``tools`` -> ``tools/call``;
``resources`` -> ``resources/read``, ``resources/subscribe``, ``resources/unsubscribe``;
``prompts`` -> ``prompts/get`` (the union if several are given); none of them -> every method.
A rule that gives names (``tools`` / ``resources`` / ``prompts``) only covers methods that carry
such a name, and only names of the kinds it lists (``methods: [resources/read]`` with only
``tools`` is a configuration error, not "any resource"). Methods that are always allowed cannot be
named in a rule (the rule would be ignored, which is an error here).

**Name matching.** Allow rules match names exactly (globs, case-sensitive). Deny rules also match
the *canonical* form of the name - NFKC, case-folded, percent-decoded, whitespace and invisible
characters removed - against the canonical pattern, so ``RM``, ``r%6D`` or ``r\\u200bm`` cannot
slip past ``deny: [rm]`` on a server that normalises names. Prefer allow lists (default deny) for
resource URIs: deny globs are string matches and know nothing of ``..`` segments.

**Argument constraints** (``tools/call`` / ``prompts/get`` arguments, top-level names only): each
check is true, false, or *undecidable* (a value of the wrong type: a regex or ``max_length`` on a
non-string, ``min``/``max`` on a non-number - a boolean is not a number -, ``equals``/``one_of``
on a value of another JSON type than the configured ones, or a string longer than the regex input
cap). An allow rule needs every check true; a deny rule fires unless some check is false - so a
wrong-typed value can never pass an allow rule nor slip past a deny rule. A missing argument fails
its constraint unless ``optional: true`` (then it satisfies it). ``regex`` is a full match in RE2
syntax (google-re2, what Envoy uses: linear time in the input, so no pattern can backtrack
catastrophically), compiled at load time; what RE2 cannot compile (backreferences, lookaround,
atomic groups, possessive quantifiers) is a configuration error. The input is capped at
``max_length`` (default ``REGEX_INPUT_CAP`` characters).

**Dry run** (``dry_run: true``): every decision is made and reported as usual, but nothing the
policy decides is enforced - a denied call is forwarded and reported as ``would_deny``, list
answers are not filtered (what would be hidden is reported instead) - so a new rule set can be
tried on production traffic before it is switched on. The sidecar applies it
(``proxy.mcp_guard``); here it is only read.

**Denials** are answered with HTTP 403 and a JSON-RPC error ``FORBIDDEN_CODE`` (-32001, "Forbidden
by policy", in the implementation-defined server-error range) naming the rule or saying that no
rule allows the call (``denial_response``, ``denial_body``).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, cast
from urllib.parse import unquote

from sidecar.errors import ConfigError
from sidecar.mcp.jsonrpc import Kind, Message, Parsed
from sidecar.schema import (
    Problems,
    got,
    join,
    load_yaml,
    non_empty_string,
    raise_config_errors,
    short,
)
from sidecar.spiffe.ids import SpiffeId, SpiffeIdError
from sidecar.spiffe.match import PatternError, SpiffeIdPattern
from sidecar.tokens.claims import Principal

if TYPE_CHECKING:
    import re2

__all__ = [
    "ALWAYS_ALLOWED_METHODS",
    "ARGUMENT_METHODS",
    "CALL_METHODS",
    "DENIED_STATUS",
    "FORBIDDEN_CODE",
    "KNOWN_METHODS",
    "LIST_METHODS",
    "REGEX_INPUT_CAP",
    "TARGET_KINDS",
    "ActorPattern",
    "ArgumentConstraint",
    "Decision",
    "Effect",
    "Glob",
    "Policy",
    "PrincipalMatch",
    "Rule",
    "TargetKind",
    "canonical",
    "decide",
    "decide_all",
    "decide_each",
    "denial_body",
    "denial_response",
    "load_policy_file",
    "parse_policy",
    "summarise",
    "visibility",
    "visible",
]

Effect = Literal["allow", "deny"]
TargetKind = Literal["tool", "resource", "prompt"]
Scalar = str | int | float | bool

FORBIDDEN_CODE: Final = -32001
"""JSON-RPC ``error.code`` of a call denied by the policy ("Forbidden by policy")."""
DENIED_STATUS: Final = 403
"""HTTP status of a denied call."""
REGEX_INPUT_CAP: Final = 4096
"""Longest string a ``regex`` constraint is evaluated on unless ``max_length`` says otherwise."""

ALWAYS_ALLOWED_METHODS: Final = frozenset({"initialize", "ping"})
NOTIFICATION_PREFIX: Final = "notifications/"
LIST_METHODS: Final[Mapping[str, TargetKind]] = {
    "tools/list": "tool",
    "resources/list": "resource",
    "resources/templates/list": "resource",
    "prompts/list": "prompt",
}
"""List methods (always allowed, results filtered) -> the kind of item they list."""
TARGET_KINDS: Final[Mapping[str, TargetKind]] = {
    "tools/call": "tool",
    "resources/read": "resource",
    "resources/subscribe": "resource",
    "resources/unsubscribe": "resource",
    "prompts/get": "prompt",
}
"""Methods that name a tool / resource / prompt (``Message.target``) -> its kind."""
CALL_METHODS: Final[Mapping[TargetKind, frozenset[str]]] = {
    "tool": frozenset({"tools/call"}),
    "resource": frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"}),
    "prompt": frozenset({"prompts/get"}),
}
"""The methods a rule covers by default when it lists names of a kind."""
USE_METHOD: Final[Mapping[TargetKind, str]] = {
    "tool": "tools/call",
    "resource": "resources/read",
    "prompt": "prompts/get",
}
"""The call ``visible`` asks about for a list item of each kind."""
ARGUMENT_METHODS: Final = frozenset({"tools/call", "prompts/get"})
"""Methods whose ``params.arguments`` argument constraints apply to."""
KNOWN_METHODS: Final = (
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "tasks/get",
    "tasks/list",
    "tasks/result",
    "tasks/cancel",
)
"""Client-to-server MCP request methods (2025-06-18, 2025-11-25)."""


def canonical(text: str) -> str:
    """The loose form deny rules also match: NFKC-normalised, case-folded, without whitespace,
    control, format (zero-width) or unassigned characters, percent-decoded - repeated until
    nothing changes, so the steps cannot hide each other (``%6\\uff24`` is ``m``)."""
    if len(text) <= 256:  # names are short; never keep huge attacker-sent strings in a cache
        return _canonical_cached(text)
    return _canonical(text)


def _canonical(text: str) -> str:
    for _ in range(8):
        decoded = unquote(_fold(text))
        if decoded == text:
            return text
        text = decoded
    return _fold(text)


_canonical_cached = functools.lru_cache(maxsize=1024)(_canonical)


def _fold(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        ch for ch in text if not ch.isspace() and not unicodedata.category(ch).startswith("C")
    )


_CANONICAL_METHODS: Final = {canonical(m): m for m in KNOWN_METHODS}


def _ambiguous_method(method: str) -> str | None:
    """The MCP method ``method`` imitates without being it, or None."""
    if method in KNOWN_METHODS or method.startswith(NOTIFICATION_PREFIX):
        return None
    folded = canonical(method)
    if folded.startswith(canonical(NOTIFICATION_PREFIX)):
        return NOTIFICATION_PREFIX + "..."
    return _CANONICAL_METHODS.get(folded)


# ---------------------------------------------------------------------------------- data model


@dataclass(frozen=True, slots=True)
class Glob:
    """An fnmatch-style pattern (``*``, ``?``, ``[seq]``), compiled once."""

    text: str
    exact: re.Pattern[str] = field(repr=False, compare=False)
    loose: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> Glob:
        return cls(
            text,
            re.compile(fnmatch.translate(text)),
            re.compile(fnmatch.translate(canonical(text))),
        )

    def matches(self, name: str, *, loose: bool = False) -> bool:
        """Exact (case-sensitive) match; with ``loose`` also the canonical forms."""
        if self.exact.match(name) is not None:
            return True
        return loose and self.loose.match(canonical(name)) is not None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class ActorPattern:
    """An actor of a delegated token (RFC 8693 ``act.sub``) in ``when.actor`` /
    ``when.actors_outside``: a SPIFFE ID pattern (text starting with ``spiffe://``, whole-segment
    wildcards as in ``allow_spiffe_ids``) or an exact actor name (e.g. an OAuth client id)."""

    text: str
    spiffe: SpiffeIdPattern | None = field(default=None, repr=False, compare=False)

    def matches(self, actor: str) -> bool:
        if self.spiffe is None:
            return actor == self.text
        sid = _actor_spiffe_id(actor)
        return sid is not None and self.spiffe.matches(sid)

    def __str__(self) -> str:
        return self.text


@functools.lru_cache(maxsize=1024)
def _actor_spiffe_id(actor: str) -> SpiffeId | None:
    """The actor as a SPIFFE ID, or None if it is not one (then no SPIFFE pattern matches)."""
    try:
        return SpiffeId.parse(actor)
    except SpiffeIdError:
        return None


@dataclass(frozen=True, slots=True)
class PrincipalMatch:
    """``when``: every field that is not None must match (AND); within a field, any of."""

    spiffe_ids: tuple[SpiffeIdPattern, ...] | None = None
    sub: tuple[str, ...] | None = None
    scopes: frozenset[str] | None = None
    """All of these scopes."""
    roles: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    claims: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()
    """(claim name, accepted values): the claim must equal one of them."""
    delegated: bool | None = None
    """True: the token carries an RFC 8693 ``act`` (someone acts for ``sub``); False: it does
    not."""
    actor: tuple[ActorPattern, ...] | None = None
    """The current actor (``act.sub``) matches any of these; never matches an undelegated
    token."""
    actors_outside: tuple[ActorPattern, ...] | None = None
    """Some actor of the chain (current or prior) matches none of these: for deny rules such as
    "no actor outside our trust domain". Never matches an undelegated token."""

    def matches(self, principal: Principal) -> bool:
        if self.spiffe_ids is not None:
            sid = principal.spiffe_id
            if sid is None:
                return False
            for pattern in self.spiffe_ids:
                if pattern.matches(sid):
                    break
            else:
                return False
        if self.sub is not None and principal.sub not in self.sub:
            return False
        if self.scopes is not None and not self.scopes <= principal.scopes:
            return False
        if self.roles is not None and not any(r in self.roles for r in principal.roles):
            return False
        if self.groups is not None and not any(g in self.groups for g in principal.groups):
            return False
        if self.delegated is not None and bool(principal.actors) is not self.delegated:
            return False
        if self.actor is not None:
            current = principal.actor
            if current is None or not _any_actor_pattern(self.actor, current):
                return False
        if self.actors_outside is not None:
            allowed = self.actors_outside
            if not any(not _any_actor_pattern(allowed, a) for a in principal.actors):
                return False
        if self.claims:
            token = principal.token
            if token is None:
                return False
            for name, values in self.claims:
                if name not in token.claims or _equals_any(token.claims[name], values) is not True:
                    return False
        return True


def _any_actor_pattern(patterns: tuple[ActorPattern, ...], actor: str) -> bool:
    return any(pattern.matches(actor) for pattern in patterns)


@dataclass(frozen=True, slots=True)
class ArgumentConstraint:
    """Checks on one named argument; see the module docstring for the three-valued logic."""

    name: str
    optional: bool = False
    equals: Scalar | None = None
    one_of: tuple[Scalar, ...] | None = None
    minimum: int | float | None = None
    maximum: int | float | None = None
    max_length: int | None = None
    regex: str | None = None
    compiled: FullMatcher | None = field(default=None, repr=False, compare=False)

    def evaluate(self, arguments: Mapping[str, Any] | None) -> bool | None:
        """True (holds), False (fails) or None (undecidable: a value of the wrong type)."""
        if arguments is None or self.name not in arguments:
            return self.optional
        value = arguments[self.name]
        results: list[bool | None] = []
        if self.equals is not None:
            results.append(_equals_any(value, (self.equals,)))
        if self.one_of is not None:
            results.append(_equals_any(value, self.one_of))
        if self.minimum is not None or self.maximum is not None:
            if not _is_number(value):
                results.append(None)
            else:
                results.append(
                    (self.minimum is None or value >= self.minimum)
                    and (self.maximum is None or value <= self.maximum)
                )
        if self.max_length is not None:
            results.append(len(value) <= self.max_length if isinstance(value, str) else None)
        if self.compiled is not None:
            cap = REGEX_INPUT_CAP if self.max_length is None else self.max_length
            if not isinstance(value, str) or len(value) > cap:
                results.append(None)
            else:
                results.append(self.compiled.fullmatch(value) is not None)
        if any(r is False for r in results):
            return False
        if any(r is None for r in results):
            return None
        return True


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    effect: Effect = "allow"
    when: PrincipalMatch = field(default_factory=PrincipalMatch)
    methods: frozenset[str] | None = None
    """The methods covered (explicit or derived from the name lists); None = every method."""
    tools: tuple[Glob, ...] | None = None
    resources: tuple[Glob, ...] | None = None
    prompts: tuple[Glob, ...] | None = None
    arguments: tuple[ArgumentConstraint, ...] = ()

    def names(self, kind: TargetKind) -> tuple[Glob, ...] | None:
        if kind == "tool":
            return self.tools
        return self.resources if kind == "resource" else self.prompts

    def covers(self, method: str, target: str | None) -> bool:
        """Whether the action (method and tool / resource / prompt name) is in the rule's scope
        (principal and arguments aside)."""
        if self.methods is not None and method not in self.methods:
            return False
        kind = TARGET_KINDS.get(method)
        if kind is None:
            return True
        globs = self.names(kind)
        if globs is None:
            return True  # the parser guarantees: no name lists at all in this rule
        if target is None:
            return False
        loose = self.effect == "deny"
        for glob in globs:  # noqa: SIM110 - no generator object per request
            if glob.matches(target, loose=loose):
                return True
        return False

    def arguments_hold(self, arguments: Mapping[str, Any] | None) -> bool:
        """Allow rule: every constraint true. Deny rule: no constraint false."""
        if not self.arguments:
            return True
        results = [c.evaluate(arguments) for c in self.arguments]
        if self.effect == "allow":
            return all(r is True for r in results)
        return all(r is not False for r in results)


@dataclass(frozen=True, slots=True)
class Policy:
    default: Effect
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False
    """Decide and report, enforce nothing (``would_deny``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """``reason``: ``rule:<name>``, ``default`` (default allow), ``no rule allows`` (default
    deny), ``always_allowed``, ``list_filtered``, ``ambiguous_method``, or (batch elements that
    were fine themselves) ``batch_denied``."""

    allowed: bool
    rule: str | None
    reason: str


ALWAYS = Decision(True, None, "always_allowed")


@functools.lru_cache(maxsize=1024)
def _rule_decision(allowed: bool, rule: str) -> Decision:
    """A rule's verdict (immutable, so one object per rule serves every request)."""
    return Decision(allowed, rule, f"rule:{rule}")


LISTED = Decision(True, None, "list_filtered")


# ------------------------------------------------------------------------------------ deciding


def decide(policy: Policy, principal: Principal, message: Message) -> Decision:
    """The policy's verdict on one JSON-RPC message from an admitted ``principal``."""
    if message.kind is Kind.RESPONSE or message.method is None:
        return ALWAYS
    method = message.method
    if method in ALWAYS_ALLOWED_METHODS or (
        message.kind is Kind.NOTIFICATION and method.startswith(NOTIFICATION_PREFIX)
    ):
        return ALWAYS
    if method in LIST_METHODS:
        return LISTED
    if _ambiguous_method(method) is not None:
        return Decision(False, None, "ambiguous_method")
    first_allow: Rule | None = None
    for rule in policy.rules:
        if rule.effect == "allow" and first_allow is not None:
            continue
        if not rule.covers(method, message.target) or not rule.when.matches(principal):
            continue
        if not rule.arguments_hold(message.arguments):
            continue
        if rule.effect == "deny":
            return _rule_decision(False, rule.name)
        first_allow = rule
    if first_allow is not None:
        return _rule_decision(True, first_allow.name)
    if policy.default == "allow":
        return Decision(True, None, "default")
    return Decision(False, None, "no rule allows")


def decide_each(policy: Policy, principal: Principal, parsed: Parsed) -> tuple[Decision, ...]:
    """One decision per message of a body (batch element order)."""
    return tuple(decide(policy, principal, message) for message in parsed.messages)


def decide_all(policy: Policy, principal: Principal, parsed: Parsed) -> Decision:
    """The verdict on a whole body (``summarise`` of ``decide_each``)."""
    return summarise(decide_each(policy, principal, parsed))


def summarise(decisions: Sequence[Decision]) -> Decision:
    """The verdict on a whole body from its elements': a batch is denied if any element is (the
    first denied element's decision is returned); if all are allowed, the first decision made by
    a rule, or else the first element's decision."""
    for decision in decisions:
        if not decision.allowed:
            return decision
    for decision in decisions:
        if decision.rule is not None:
            return decision
    return decisions[0]


def visible(policy: Policy, principal: Principal, kind: TargetKind, name: str) -> bool:
    """Whether a ``*/list`` item is shown to ``principal``: some allow rule (or an allow
    default) could let it call the item (``tools/call``, ``resources/read``, ``prompts/get``),
    ignoring argument constraints, and no deny rule *without* argument constraints matches it.

    So an item allowed only with some arguments is listed (the call may still be denied), and an
    item denied only with some arguments is listed too. Resource templates are matched by their
    ``uriTemplate`` text (``file:///docs/*`` matches ``file:///docs/{name}``).
    """
    method = USE_METHOD[kind]
    allowed = policy.default == "allow"
    for rule in policy.rules:
        if rule.effect == "allow" and allowed:
            continue
        if not rule.covers(method, name) or not rule.when.matches(principal):
            continue
        if rule.effect == "deny":
            if not rule.arguments:
                return False
        else:
            allowed = True
    return allowed


def visibility(policy: Policy, principal: Principal) -> Callable[[TargetKind, str], bool]:
    """``visible`` for one principal, as ``sidecar.mcp.filter`` wants it."""

    def allow(kind: TargetKind, name: str) -> bool:
        return visible(policy, principal, kind, name)

    return allow


# ------------------------------------------------------------------------------------- answers


def _denial_error(message_id: str | int | None, decision: Decision, text: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": message_id,
        "error": {
            "code": FORBIDDEN_CODE,
            "message": f"Forbidden by policy: {text}",
            "data": {"rule": decision.rule, "reason": decision.reason},
        },
    }


def denial_response(message_id: str | int | None, decision: Decision) -> dict[str, Any]:
    """The JSON-RPC error answering a denied request: ``error.code`` -32001 (``FORBIDDEN_CODE``),
    ``error.message`` "Forbidden by policy: rule 'NAME'" (or "no rule allows this call", or
    "ambiguous method name"), ``error.data`` ``{"rule": NAME | null, "reason": ...}``."""
    if decision.rule is not None:
        text = f"rule {decision.rule!r}"
    elif decision.reason == "ambiguous_method":
        text = "ambiguous method name (case or invisible-character variant of an MCP method)"
    else:
        text = "no rule allows this call"
    return _denial_error(message_id, decision, text)


def denial_body(
    parsed: Parsed, decisions: Sequence[Decision]
) -> dict[str, Any] | list[dict[str, Any]] | None:
    """The JSON-RPC body answering a denied body (with HTTP 403), or None when there is nothing
    to answer in JSON-RPC terms (a lone notification or a batch without requests: send 403 with
    an empty or plain JSON body).

    A batch is refused as a whole and never forwarded: every *request* element gets an error -
    its own denial, or ``reason: batch_denied`` naming the first denied element's rule;
    notifications and responses get none (JSON-RPC 2.0 section 6).
    """
    denied = next((d for d in decisions if not d.allowed), None)
    if denied is None:
        return None
    if not parsed.batch:
        message = parsed.messages[0]
        if message.kind is not Kind.REQUEST:
            return None
        return denial_response(message.id, decisions[0])
    errors: list[dict[str, Any]] = []
    index = decisions.index(denied)
    for message, decision in zip(parsed.messages, decisions, strict=True):
        if message.kind is not Kind.REQUEST:
            continue
        if not decision.allowed:
            errors.append(denial_response(message.id, decision))
        else:
            why = f"rule {denied.rule!r}" if denied.rule else denied.reason
            errors.append(
                _denial_error(
                    message.id,
                    Decision(False, denied.rule, "batch_denied"),
                    f"batch element {index} is denied ({why}); the batch was not forwarded",
                )
            )
    return errors or None


# ------------------------------------------------------------------------------------- parsing

POLICY_KEYS: Final = ("default", "rules", "dry_run")
RULE_KEYS: Final = (
    "name",
    "effect",
    "when",
    "methods",
    "tools",
    "resources",
    "prompts",
    "arguments",
)
WHEN_KEYS: Final = (
    "spiffe_ids",
    "sub",
    "scopes",
    "roles",
    "groups",
    "claims",
    "delegated",
    "actor",
    "actors_outside",
)
CONSTRAINT_KEYS: Final = ("equals", "one_of", "min", "max", "max_length", "regex", "optional")
_RULE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)
_METHOD_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)
_KIND_KEYS: Final[Mapping[TargetKind, str]] = {
    "tool": "tools",
    "resource": "resources",
    "prompt": "prompts",
}


def parse_policy(data: object, *, path: str = "mcp_policy") -> Policy:
    """Validate a policy document (already loaded from YAML/JSON) into a ``Policy``.

    Raises ``sidecar.config.ConfigErrors`` listing every problem, each named by its key path
    below ``path`` (``inbound.mcp_policy.rules[2].when.spiffe_ids[0]``); never anything else.
    """
    problems = Problems()
    policy = _PolicyParser(problems).policy(data, path)
    problems.raise_if_any()
    assert policy is not None
    return policy


def load_policy_file(path: str | Path) -> Policy:
    """Read a YAML file holding only a policy document (``default:`` / ``rules:``). Unreadable
    files and YAML problems (duplicate keys included) are ``ConfigErrors`` naming the file."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise_config_errors([ConfigError(source, f"cannot read the file: {exc.strerror or exc}")])
    return parse_policy(load_yaml(raw, source=source), path=source)


class _PolicyParser:
    def __init__(self, problems: Problems) -> None:
        self.p = problems

    def policy(self, data: object, path: str) -> Policy | None:
        fields = self.p.mapping(data, path, POLICY_KEYS, none_ok=False)
        if fields is None:
            return None
        default: str | None = None
        if "default" not in fields:
            self.p.add(join(path, "default"), "required ('deny' or 'allow')")
        else:
            default = self.p.choice(fields["default"], join(path, "default"), ("deny", "allow"))
        rules: list[Rule] = []
        if "rules" in fields and fields["rules"] is not None:
            rules_path = join(path, "rules")
            items = fields["rules"]
            if isinstance(items, str) or not isinstance(items, list | tuple):
                self.p.add(rules_path, f"expected a list of rules, got {got(items)}")
                items = []
            seen: dict[str, int] = {}
            for index, item in enumerate(items):
                name = item.get("name") if isinstance(item, Mapping) else None
                if isinstance(name, str) and name in seen:
                    self.p.add(
                        f"{rules_path}[{index}].name",
                        f"duplicate rule name {name!r} (also rules[{seen[name]}]);"
                        " names must be unique: denials name the rule",
                    )
                elif isinstance(name, str):
                    seen[name] = index
                rule = self.rule(item, f"{rules_path}[{index}]")
                if rule is not None:
                    rules.append(rule)
        dry_run = False
        if "dry_run" in fields:
            dry_run = bool(self.p.boolean(fields["dry_run"], join(path, "dry_run")))
        if default is None:
            return None
        return Policy(cast(Effect, default), tuple(rules), dry_run)

    def rule(self, data: object, path: str) -> Rule | None:
        fields = self.p.mapping(data, path, RULE_KEYS, none_ok=False)
        if fields is None:
            return None
        before = len(self.p.items)
        name = self.rule_name(fields, path)
        effect = "allow"
        if "effect" in fields:
            effect = self.p.choice(fields["effect"], join(path, "effect"), ("allow", "deny")) or ""
        when = self.when(fields.get("when"), join(path, "when"))
        globs: dict[TargetKind, tuple[Glob, ...] | None] = {}
        for kind, key in _KIND_KEYS.items():
            globs[kind] = None
            if key in fields:
                globs[kind] = self.p.items_of(
                    fields[key], join(path, key), f"{key} names or globs", _glob
                )
        methods = self.methods(fields, path)
        arguments = self.arguments(fields, path, methods)
        if len(self.p.items) > before or name is None or when is None:
            return None
        return Rule(
            name=name,
            effect=cast(Effect, effect),
            when=when,
            methods=methods,
            tools=globs["tool"],
            resources=globs["resource"],
            prompts=globs["prompt"],
            arguments=arguments,
        )

    def rule_name(self, fields: Mapping[str, object], path: str) -> str | None:
        name_path = join(path, "name")
        if "name" not in fields:
            self.p.add(name_path, "required (a unique name; denials and audit logs name it)")
            return None
        name = fields["name"]
        if not isinstance(name, str) or not _RULE_NAME_RE.fullmatch(name):
            self.p.add(
                name_path,
                "expected a name of letters, digits, '_', '.', '-' (starting with a letter or "
                f"digit, at most 64 characters), got {got(name)}",
            )
            return None
        return name

    def when(self, data: object, path: str) -> PrincipalMatch | None:
        fields = self.p.mapping(data, path, WHEN_KEYS)
        if fields is None:
            return None
        strings = non_empty_string
        spiffe_ids = sub = roles = groups = None
        scopes: tuple[str, ...] | None = None
        if "spiffe_ids" in fields:
            spiffe_ids = self.p.items_of(
                fields["spiffe_ids"], join(path, "spiffe_ids"), "SPIFFE ID patterns", _pattern
            )
        if "sub" in fields:
            sub = self.p.items_of(fields["sub"], join(path, "sub"), "subjects", strings("alice"))
        if "scopes" in fields:
            scopes = self.p.items_of(
                fields["scopes"], join(path, "scopes"), "scopes", strings("mcp:tools")
            )
        if "roles" in fields:
            roles = self.p.items_of(fields["roles"], join(path, "roles"), "roles", strings("admin"))
        if "groups" in fields:
            groups = self.p.items_of(
                fields["groups"], join(path, "groups"), "groups", strings("ops")
            )
        claims = (
            self.claims(fields.get("claims"), join(path, "claims")) if "claims" in fields else ()
        )
        delegated: bool | None = None
        if "delegated" in fields:
            delegated = self.p.boolean(fields["delegated"], join(path, "delegated"))
        actor = actors_outside = None
        if "actor" in fields:
            actor = self.p.items_of(
                fields["actor"], join(path, "actor"), "actors (SPIFFE ID patterns)", _actor
            )
        if "actors_outside" in fields:
            actors_outside = self.p.items_of(
                fields["actors_outside"],
                join(path, "actors_outside"),
                "actors (SPIFFE ID patterns)",
                _actor,
            )
        for key, value in (
            ("delegated", delegated),
            ("actor", actor),
            ("actors_outside", actors_outside),
            ("spiffe_ids", spiffe_ids),
            ("sub", sub),
            ("scopes", scopes),
            ("roles", roles),
            ("groups", groups),
            ("claims", claims),
        ):
            if key in fields and value is None:
                return None
        assert claims is not None
        return PrincipalMatch(
            spiffe_ids=spiffe_ids,
            sub=sub,
            scopes=frozenset(scopes) if scopes is not None else None,
            roles=roles,
            groups=groups,
            claims=claims,
            delegated=delegated,
            actor=actor,
            actors_outside=actors_outside,
        )

    def claims(self, data: object, path: str) -> tuple[tuple[str, tuple[Scalar, ...]], ...] | None:
        if not isinstance(data, Mapping) or not data:
            self.p.add(
                path, f"expected a non-empty mapping of claim name to value, got {got(data)}"
            )
            return None
        result: list[tuple[str, tuple[Scalar, ...]]] = []
        failed = False
        for name, value in data.items():
            if not isinstance(name, str) or not name:
                self.p.add(path, f"claim names must be non-empty strings, got {got(name)}")
                failed = True
                continue
            item_path = join(path, name)
            values = value if isinstance(value, list | tuple) else [value]
            if not values:
                self.p.add(item_path, "must not be an empty list")
                failed = True
                continue
            scalars: list[Scalar] = []
            for index, item in enumerate(values):
                where = f"{item_path}[{index}]" if isinstance(value, list | tuple) else item_path
                try:
                    scalars.append(_scalar(item, where))
                except ConfigError as exc:
                    self.p.items.append(exc)
                    failed = True
            result.append((name, tuple(scalars)))
        return None if failed else tuple(result)

    def methods(self, fields: Mapping[str, object], path: str) -> frozenset[str] | None:
        kinds = [kind for kind, key in _KIND_KEYS.items() if key in fields]
        if "methods" not in fields:
            if not kinds:
                return None
            return frozenset().union(*(CALL_METHODS[kind] for kind in kinds))
        methods_path = join(path, "methods")
        methods = self.p.items_of(fields["methods"], methods_path, "MCP method names", _method)
        if methods is None:
            return None
        if kinds:
            for index, method in enumerate(methods):
                kind = TARGET_KINDS.get(method)
                if kind is None:
                    self.p.add(
                        f"{methods_path}[{index}]",
                        f"{method!r} names no tool, resource or prompt, but this rule lists "
                        f"{' and '.join(_KIND_KEYS[k] for k in kinds)}; put it in a rule of its "
                        "own",
                    )
                elif kind not in kinds:
                    self.p.add(
                        f"{methods_path}[{index}]",
                        f"{method!r} names a {kind}, but this rule has no {_KIND_KEYS[kind]} "
                        f"list (add {_KIND_KEYS[kind]}: ['*'] to mean any {kind})",
                    )
        return frozenset(methods)

    def arguments(
        self, fields: Mapping[str, object], path: str, methods: frozenset[str] | None
    ) -> tuple[ArgumentConstraint, ...]:
        if "arguments" not in fields:
            return ()
        args_path = join(path, "arguments")
        if methods is None or not methods <= ARGUMENT_METHODS:
            self.p.add(
                args_path,
                "argument constraints need a rule limited to tools/call and/or prompts/get "
                "(give tools, prompts or methods)",
            )
        data = fields["arguments"]
        if not isinstance(data, Mapping) or not data:
            self.p.add(
                args_path,
                f"expected a non-empty mapping of argument name to checks, got {got(data)}",
            )
            return ()
        result: list[ArgumentConstraint] = []
        for name, checks in data.items():
            if not isinstance(name, str) or not name:
                self.p.add(args_path, f"argument names must be non-empty strings, got {got(name)}")
                continue
            constraint = self.constraint(name, checks, join(args_path, name))
            if constraint is not None:
                result.append(constraint)
        return tuple(result)

    def constraint(self, name: str, data: object, path: str) -> ArgumentConstraint | None:
        fields = self.p.mapping(data, path, CONSTRAINT_KEYS, none_ok=False)
        if fields is None:
            return None
        before = len(self.p.items)
        if not set(fields) - {"optional"}:
            self.p.add(
                path,
                "no check given; expected some of equals, one_of, min, max, max_length, regex",
            )
        optional = False
        if "optional" in fields:
            optional = bool(self.p.boolean(fields["optional"], join(path, "optional")))
        equals: Scalar | None = None
        if "equals" in fields:
            equals = self.attempt(_scalar, fields["equals"], join(path, "equals"))
        one_of: tuple[Scalar, ...] | None = None
        if "one_of" in fields:
            one_of = self.p.items_of(
                fields["one_of"], join(path, "one_of"), "strings, numbers or booleans", _scalar
            )
        minimum = (
            self.attempt(_number, fields["min"], join(path, "min")) if "min" in fields else None
        )
        maximum = (
            self.attempt(_number, fields["max"], join(path, "max")) if "max" in fields else None
        )
        if minimum is not None and maximum is not None and minimum > maximum:
            self.p.add(join(path, "min"), f"min {minimum} is greater than max {maximum}")
        max_length = None
        if "max_length" in fields:
            max_length = self.attempt(_length, fields["max_length"], join(path, "max_length"))
        regex: str | None = None
        compiled: FullMatcher | None = None
        if "regex" in fields:
            compiled = self.attempt(_regex, fields["regex"], join(path, "regex"))
            regex = compiled.pattern if compiled is not None else None
        if len(self.p.items) > before:
            return None
        return ArgumentConstraint(
            name=name,
            optional=optional,
            equals=equals,
            one_of=one_of,
            minimum=minimum,
            maximum=maximum,
            max_length=max_length,
            regex=regex,
            compiled=compiled,
        )

    def attempt(self, parse: Callable[[object, str], Any], value: object, path: str) -> Any:
        try:
            return parse(value, path)
        except ConfigError as exc:
            self.p.items.append(exc)
            return None


def _glob(value: object, path: str) -> Glob:
    text = non_empty_string("get_*")(value, path)
    return Glob.parse(text)


def _pattern(value: object, path: str) -> SpiffeIdPattern:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a SPIFFE ID pattern (string), got {got(value)}")
    try:
        return SpiffeIdPattern.parse(value)
    except PatternError as exc:
        raise ConfigError(path, f"not a SPIFFE ID pattern: {exc.message}") from None


def _actor(value: object, path: str) -> ActorPattern:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            path,
            "expected a SPIFFE ID pattern like spiffe://example.org/ns/agents/** or an exact "
            f"actor name, got {got(value)}",
        )
    if value.startswith("spiffe://"):
        return ActorPattern(value, _pattern(value, path))
    if value.lower().startswith("spiffe:"):
        raise ConfigError(path, f"not a SPIFFE ID pattern: {short(value)}")
    return ActorPattern(value)


def _method(value: object, path: str) -> str:
    if not isinstance(value, str) or not _METHOD_RE.fullmatch(value):
        raise ConfigError(
            path, f"expected an MCP method name like 'tools/call' (no spaces), got {got(value)}"
        )
    if value in ALWAYS_ALLOWED_METHODS or value.startswith(NOTIFICATION_PREFIX):
        raise ConfigError(
            path,
            f"{value!r} is always allowed once the caller is admitted; a rule cannot change "
            "that (remove it)",
        )
    if value in LIST_METHODS:
        raise ConfigError(
            path,
            f"{value!r} is always allowed and its result filtered to what the caller may use; "
            "a rule cannot change that (remove it)",
        )
    imitated = _ambiguous_method(value)
    if imitated is not None:
        raise ConfigError(
            path,
            f"{value!r} is not an MCP method (method names are case-sensitive); did you mean "
            f"{imitated!r}?",
        )
    return value


def _scalar(value: object, path: str) -> Scalar:
    if isinstance(value, str | bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise ConfigError(path, f"expected a string, number or boolean, got {got(value)}")


def _number(value: object, path: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(path, f"expected a number, got {got(value)}")
    return value


def _length(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(path, f"expected a whole number >= 0, got {got(value)}")
    return value


class FullMatcher(Protocol):
    """A compiled ``regex`` constraint (an RE2 regular expression)."""

    @property
    def pattern(self) -> str: ...

    def fullmatch(self, text: str) -> object | None: ...


@functools.cache
def _re2_options() -> re2.Options:
    import re2  # loaded only by policies with a regex (about 3 MiB)

    options = re2.Options()
    options.log_errors = False  # a bad pattern is reported as a config error, not on stderr
    return options


def _regex(value: object, path: str) -> FullMatcher:
    """An RE2 pattern: matching is linear in the input (no catastrophic backtracking)."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a regular expression (string), got {got(value)}")
    import re2  # see _re2_options

    try:
        return re2.compile(value, _re2_options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ConfigError(
            path,
            f"invalid regular expression {short(value)}: {detail} (RE2 syntax: no "
            "backreferences, lookaround, atomic groups or possessive quantifiers)",
        ) from None


# ------------------------------------------------------------------------------------ helpers


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "other"


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _equals_any(value: object, accepted: Sequence[Scalar]) -> bool | None:
    """Type-strict equality with any accepted value (``1 == 1.0``, but ``true != 1`` and
    ``"1" != 1``); None if ``value`` is of another JSON type than every accepted value."""
    kind = _json_kind(value)
    if kind not in {_json_kind(a) for a in accepted}:
        return None
    return any(_json_kind(a) == kind and a == value for a in accepted)
