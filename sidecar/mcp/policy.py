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
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol
from urllib.parse import unquote

from sidecar.errors import ConfigError, ConfigErrors
from sidecar.mcp.jsonrpc import Kind, Message, Parsed
from sidecar.schema import (
    BOOLEAN,
    NOT_EMPTY,
    Section,
    Value,
    choice,
    definition_name,
    got,
    join,
    key,
    keys_of,
    list_of,
    non_empty_string,
    parse_each,
    read,
    section_value,
    short,
)
from sidecar.spiffe.ids import SpiffeId, SpiffeIdError
from sidecar.spiffe.match import PatternError, SpiffeIdPattern
from sidecar.strict_yaml import parse_file
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


def _strings(like: str, what: str) -> Value[tuple[str, ...]]:
    return list_of(non_empty_string(like), what, empty=NOT_EMPTY, label="list of strings")


def _globs(kind: str) -> Value[tuple[Glob, ...]]:
    glob = Value(lambda v, p: _glob(v, p), "glob", {"type": "string", "minLength": 1})
    return list_of(glob, f"{kind} names or globs", empty=NOT_EMPTY, label="list of globs")


_ACTORS = list_of(
    Value(lambda v, p: _actor(v, p), "actor pattern", {"type": "string", "minLength": 1}),
    "actors (SPIFFE ID patterns)",
    empty=NOT_EMPTY,
    label="list of actor patterns",
)
_SCALAR = Value(
    lambda v, p: _scalar(v, p),
    "string, number or boolean",
    {"type": ["string", "number", "boolean"]},
)
_NUMBER = Value(lambda v, p: _number(v, p), "number", {"type": "number"})
_RULE_NAME = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


@dataclass(frozen=True, slots=True)
class PrincipalMatch:
    """``when``: every field that is not None must match (AND); within a field, any of."""

    spiffe_ids: tuple[SpiffeIdPattern, ...] | None = key(
        list_of(
            Value(lambda v, p: _pattern(v, p), "SPIFFE ID pattern", {"type": "string"}),
            "SPIFFE ID patterns",
            empty=NOT_EMPTY,
        ),
        "The mTLS peer's SPIFFE ID matches any of them (same patterns as `allow_spiffe_ids`; "
        "`spiffe://example.org/ns/agents/**`). Never matches without mTLS.",
        default=None,
    )
    sub: tuple[str, ...] | None = key(
        _strings("alice", "subjects"),
        "The token's `sub` is any of them. Never matches without a token.",
        default=None,
    )
    scopes: frozenset[str] | None = key(
        _strings("mcp:tools", "scopes"),
        "The token's `scope` holds **all** of them (OAuth access tokens).",
        default=None,
    )
    roles: tuple[str, ...] | None = key(
        _strings("admin", "roles"),
        "The token's roles (the claim named by `oauth.roles_claim`, default `roles`; a string "
        "or a list of strings) include any of them (OAuth access tokens).",
        default=None,
    )
    groups: tuple[str, ...] | None = key(
        _strings("ops", "groups"),
        "The token's groups (`oauth.groups_claim`, default `groups`) include any of them "
        "(OAuth access tokens).",
        default=None,
    )
    claims: tuple[tuple[str, tuple[Scalar, ...]], ...] = key(
        Value(
            lambda v, p: _claims(v, p),
            "mapping",
            {"type": "object", "minProperties": 1},
        ),
        "Claim name → value (string, number or boolean; a list = any of): the token's "
        'top-level claim equals it. Type-strict: `1` is not `"1"`, `true` is not `1`.',
        default=(),
    )
    """(claim name, accepted values): the claim must equal one of them."""
    delegated: bool | None = key(
        BOOLEAN,
        "`true`: the token is delegated (it carries an RFC 8693 `act` claim: someone acts for "
        "its `sub`); `false`: it is not. Use `delegated: false` to keep a user's own rights "
        "away from agents acting for that user: a rule on `sub` alone matches delegated "
        "tokens of that user too.",
        default=None,
    )
    actor: tuple[ActorPattern, ...] | None = key(
        _ACTORS,
        "The **current** actor of a delegated token (`act.sub`) matches any of them. An actor "
        "pattern is a SPIFFE ID pattern (starts with `spiffe://`, same wildcards as "
        "`allow_spiffe_ids`) or an exact actor name (e.g. an OAuth client id). Never matches "
        "an undelegated token.",
        default=None,
    )
    actors_outside: tuple[ActorPattern, ...] | None = key(
        _ACTORS,
        "**Some** actor of the delegation chain (current or prior) matches none of them. "
        "Meant for deny rules: `{effect: deny, when: {actors_outside: "
        '["spiffe://example.org"]}}` refuses every token on which a workload outside '
        "`example.org` acted. Never matches an undelegated token.",
        default=None,
    )

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


WHEN_SECTION = Section("inbound.mcp_policy.rules[].when", keys_of(PrincipalMatch), defaults=False)


@dataclass(frozen=True, slots=True)
class ArgumentConstraint:
    """Checks on one named argument; see the module docstring for the three-valued logic."""

    name: str
    """The argument's name (the key above the checks, not a check)."""
    optional: bool = key(
        BOOLEAN,
        "`false` (default): a missing argument fails the constraint. `true`: a missing "
        "argument satisfies it (the checks apply only when it is present).",
        default=False,
    )
    equals: Scalar | None = key(
        _SCALAR,
        'The argument equals this value (JSON types are not mixed: `1` is not `"1"`).',
        default=None,
    )
    one_of: tuple[Scalar, ...] | None = key(
        list_of(_SCALAR, "strings, numbers or booleans", empty=NOT_EMPTY),
        "The argument equals one of them.",
        default=None,
    )
    minimum: int | float | None = key(
        _NUMBER, "The argument is a number (not a boolean) `>= min`.", default=None, name="min"
    )
    maximum: int | float | None = key(
        _NUMBER,
        "The argument is a number (not a boolean) `<= max`; `min` may not be greater.",
        default=None,
        name="max",
    )
    max_length: int | None = key(
        Value(lambda v, p: _length(v, p), "integer >= 0", {"type": "integer", "minimum": 0}),
        "The argument is a string of at most this many characters.",
        default=None,
    )
    regex: str | None = key(
        Value(lambda v, p: _regex(v, p), "string", {"type": "string"}),
        "The argument is a string that **fully** matches this regular expression, in [RE2 "
        "syntax](https://github.com/google/re2/wiki/Syntax) (`google-re2`, as in Envoy): "
        "matching takes time linear in the input, so no pattern can backtrack "
        "catastrophically. Compiled at load time; what RE2 cannot compile — backreferences "
        "(`\\1`), lookaround (`(?=`, `(?<!`), atomic groups, possessive quantifiers, `\\Z` "
        "(write `\\z`) — is a configuration error naming the key. `\\d`, `\\w`, `\\s` are "
        "ASCII-only (use `\\pN`, `\\pL` for Unicode classes). Evaluated on at most `max_length` "
        "characters (default 4096): a longer string is undecidable.",
        default=None,
    )
    """The pattern as written; the key's parser compiles it (``compiled``)."""
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


ARGUMENTS_SECTION = Section(
    "inbound.mcp_policy.rules[].arguments.NAME",
    keys_of(
        ArgumentConstraint,
        "equals",
        "one_of",
        "regex",
        "minimum",
        "maximum",
        "max_length",
        "optional",
    ),
    defaults=False,
)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str = key(
        Value(lambda v, p: _rule_name(v, p), "string", {"type": "string", "pattern": _RULE_NAME}),
        "Unique within the policy; letters, digits, `_`, `.`, `-`, starting with a letter or "
        "digit, at most 64 characters. Denials, `explain` and the audit log name it.",
        required="a unique name; denials and audit logs name it",
    )
    effect: Effect = key(
        choice("allow", "deny"),
        "What the rule does when it matches. A matching `deny` always wins over any `allow`.",
        default="allow",
    )
    when: PrincipalMatch = key(
        section_value(WHEN_SECTION, lambda v, p: _when(v, p)),
        "Who the rule is about, see [`when`](#inboundmcp_policyrulesiwhen). Every key given "
        "must match (AND); omitted = every admitted caller.",
        default_factory=PrincipalMatch,
        shown="anyone",
    )
    methods: frozenset[str] | None = key(
        list_of(
            Value(lambda v, p: _method(v, p), "string", {"type": "string"}),
            "MCP method names",
            empty=NOT_EMPTY,
            label="list of strings",
        ),
        "Exact, case-sensitive JSON-RPC method names (`tools/call`, `resources/read`, "
        "`completion/complete`, `logging/setLevel`...). Always-allowed methods (`initialize`, "
        "`ping`, `notifications/...`, the `*/list` methods) cannot be listed; a case or "
        "whitespace variant of an MCP method (`Tools/Call`) is an error naming the real one.",
        default=None,
        shown="derived, see [which methods a rule covers](#which-methods-a-rule-covers)",
    )
    """The methods covered (explicit or derived from the name lists); None = every method."""
    tools: tuple[Glob, ...] | None = key(
        _globs("tools"),
        "Tool names the rule is about (`tools/call`); globs with `*`, `?`, `[seq]`, "
        "case-sensitive (`get_*`, `*`).",
        default=None,
    )
    resources: tuple[Glob, ...] | None = key(
        _globs("resources"),
        "Resource URIs (`resources/read`, `resources/subscribe`, `resources/unsubscribe`), "
        "e.g. `file:///docs/*`.",
        default=None,
    )
    prompts: tuple[Glob, ...] | None = key(
        _globs("prompts"), "Prompt names (`prompts/get`).", default=None
    )
    arguments: tuple[ArgumentConstraint, ...] = key(
        Value(
            lambda v, p: _arguments(v, p),
            "mapping",
            {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"$ref": f"#/$defs/{definition_name(ARGUMENTS_SECTION)}"},
            },
            sections=(ARGUMENTS_SECTION,),
        ),
        "Argument name → [constraints](#inboundmcp_policyrulesiargumentsname) on that "
        "top-level argument of a `tools/call` or `prompts/get`; all must hold. Only in a rule "
        "limited to those methods (one with `tools` and/or `prompts`, or `methods` naming "
        "only them).",
        default=(),
        shown="none",
    )

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


RULE_SECTION = Section("inbound.mcp_policy.rules[]", keys_of(Rule))


@dataclass(frozen=True, slots=True)
class Policy:
    default: Effect = key(
        choice("deny", "allow"),
        "What happens to a call that no rule decides. `deny` (allow-list) is the recommended form.",
        required="'deny' or 'allow'",
        shown="**required** (inline form)",
    )
    rules: tuple[Rule, ...] = key(
        section_value(RULE_SECTION, lambda v, p: _rules(v, p), many="list of rules"),
        "See [`inbound.mcp_policy.rules[i]`](#inboundmcp_policyrulesi). Every rule is "
        "evaluated; an explicit deny wins.",
        default=(),
    )
    dry_run: bool = key(
        BOOLEAN,
        "`true`: every decision is made, audited and counted, but none is enforced — a call "
        "the policy denies is forwarded and logged as `would_deny`, list answers are not "
        "filtered (what would be hidden is logged). For trying a new rule set on production "
        "traffic, see [Dry run](#dry-run). In the file form it belongs in the file (reloaded "
        "with the rules).",
        default=False,
    )
    """Decide and report, enforce nothing (``would_deny``)."""


POLICY_SECTION = Section("inbound.mcp_policy", keys_of(Policy))


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

POLICY_KEYS: Final = POLICY_SECTION.names
RULE_KEYS: Final = RULE_SECTION.names
WHEN_KEYS: Final = WHEN_SECTION.names
CONSTRAINT_KEYS: Final = ARGUMENTS_SECTION.names
_RULE_NAME_RE = re.compile(_RULE_NAME.strip("^$"), re.ASCII)
_METHOD_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)
_KIND_KEYS: Final[Mapping[TargetKind, str]] = {
    "tool": "tools",
    "resource": "resources",
    "prompt": "prompts",
}


def parse_policy(data: object, *, path: str = "mcp_policy") -> Policy:
    """Validate a policy document (already loaded from YAML/JSON) into a ``Policy``.

    Raises ``ConfigErrors`` listing every problem, each named by its key path below ``path``
    (``inbound.mcp_policy.rules[2].when.spiffe_ids[0]``); never anything else.
    """
    return read(POLICY_SECTION, data, path, none_ok=False).build(Policy)


def load_policy_file(path: str | Path) -> Policy:
    """Read a YAML file holding only a policy document (``default:`` / ``rules:``). Unreadable
    files and YAML problems (duplicate keys included) are ``ConfigErrors`` naming the file;
    every problem carries its line."""
    return parse_file(path, lambda data, source: parse_policy(data, path=source))


def _rules(value: object, path: str) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(path, f"expected a list of rules, got {got(value)}")
    problems: list[ConfigError] = []
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(value):
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and name in seen:
            problems.append(
                ConfigError(
                    f"{path}[{index}].name",
                    f"duplicate rule name {name!r} (also rules[{seen[name]}]);"
                    " names must be unique: denials name the rule",
                )
            )
        elif isinstance(name, str):
            seen[name] = index
        try:
            rules.append(_rule(item, f"{path}[{index}]"))
        except ConfigErrors as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigErrors(problems)
    return tuple(rules)


def _rule(value: object, path: str) -> Rule:
    f = read(RULE_SECTION, value, path, none_ok=False)
    values = f.values(Rule)
    kinds = [kind for kind, name in _KIND_KEYS.items() if name in f]
    methods: frozenset[str] | None = None
    if "methods" not in f:
        if kinds:
            methods = frozenset().union(*(CALL_METHODS[kind] for kind in kinds))
    elif "methods" in values:
        methods = frozenset(values["methods"])
        for index, method in enumerate(values["methods"]):
            kind = TARGET_KINDS.get(method)
            if not kinds:
                continue
            if kind is None:
                f.problems.add(
                    f"{f.at('methods')}[{index}]",
                    f"{method!r} names no tool, resource or prompt, but this rule lists "
                    f"{' and '.join(_KIND_KEYS[k] for k in kinds)}; put it in a rule of its "
                    "own",
                )
            elif kind not in kinds:
                f.problems.add(
                    f"{f.at('methods')}[{index}]",
                    f"{method!r} names a {kind}, but this rule has no {_KIND_KEYS[kind]} "
                    f"list (add {_KIND_KEYS[kind]}: ['*'] to mean any {kind})",
                )
    if "arguments" in f and (methods is None or not methods <= ARGUMENT_METHODS):
        f.error(
            "argument constraints need a rule limited to tools/call and/or prompts/get "
            "(give tools, prompts or methods)",
            "arguments",
        )
    f.check()
    return Rule(**{**values, "methods": methods})


def _rule_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _RULE_NAME_RE.fullmatch(value):
        raise ConfigError(
            path,
            "expected a name of letters, digits, '_', '.', '-' (starting with a letter or "
            f"digit, at most 64 characters), got {got(value)}",
        )
    return value


def _when(value: object, path: str) -> PrincipalMatch:
    f = read(WHEN_SECTION, value, path)
    scopes = f.get("scopes")
    return f.build(PrincipalMatch, scopes=frozenset(scopes) if scopes is not None else None)


def _claims(value: object, path: str) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            path, f"expected a non-empty mapping of claim name to value, got {got(value)}"
        )
    problems: list[ConfigError] = []
    result: list[tuple[str, tuple[Scalar, ...]]] = []
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            problems.append(
                ConfigError(path, f"claim names must be non-empty strings, got {got(name)}")
            )
            continue
        item_path = join(path, name)
        if not isinstance(item, list | tuple):
            try:
                result.append((name, (_scalar(item, item_path),)))
            except ConfigError as exc:
                problems.append(exc)
            continue
        if not item:
            problems.append(ConfigError(item_path, "must not be an empty list"))
            continue
        scalars = parse_each(item, item_path, _scalar, problems)
        if scalars is not None:
            result.append((name, scalars))
    if problems:
        raise ConfigErrors(problems)
    return tuple(result)


def _arguments(value: object, path: str) -> tuple[ArgumentConstraint, ...]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(
            path, f"expected a non-empty mapping of argument name to checks, got {got(value)}"
        )
    problems: list[ConfigError] = []
    result: list[ArgumentConstraint] = []
    for name, checks in value.items():
        if not isinstance(name, str) or not name:
            problems.append(
                ConfigError(path, f"argument names must be non-empty strings, got {got(name)}")
            )
            continue
        try:
            result.append(_constraint(name, checks, join(path, name)))
        except ConfigErrors as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigErrors(problems)
    return tuple(result)


def _constraint(name: str, value: object, path: str) -> ArgumentConstraint:
    f = read(ARGUMENTS_SECTION, value, path, none_ok=False)
    if not set(f.data) - {"optional"}:
        f.error("no check given; expected some of equals, one_of, min, max, max_length, regex")
    values = f.values(ArgumentConstraint, name=name)
    minimum, maximum = values.get("minimum"), values.get("maximum")
    if minimum is not None and maximum is not None and minimum > maximum:
        f.error(f"min {minimum} is greater than max {maximum}", "min")
    compiled: FullMatcher | None = values.get("regex")
    f.check()
    regex = compiled.pattern if compiled is not None else None
    return ArgumentConstraint(**{**values, "regex": regex, "compiled": compiled})


def _glob(value: object, path: str) -> Glob:
    return Glob.parse(non_empty_string("get_*").parse(value, path))


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
