"""``mcp-sidecar explain``: what the inbound sidecar would decide for an MCP request, and why.

Reads the configuration file, builds the caller (``--spiffe-id``, and a token from ``--sub`` /
``--claims`` the way the token layer would read it) and the exact request body the sidecar would
receive - from ``--method``, ``--tool`` / ``--resource`` / ``--prompt``, ``--args`` (embedded as
written, so numbers such as ``-1e400`` reach the policy as the sidecar reads them) and ``--id``
(none for ``notifications/...`` methods: a notification), or given whole with ``--body`` (a
batch, say) - and runs it through ``sidecar.mcp.judge``, the function the proxy's MCP guard
calls. Prints ``ALLOW`` or ``DENY`` with the rule and the reason (per element for a batch); a
policy in dry run says so (``DENY (dry run: would be allowed through)``).
Before the policy it applies the admission checks the proxy makes first (SPIFFE-ID allowlist,
JWT-SVID peer binding, OAuth required scopes), so a caller those refuse is a DENY too. Token
signatures, audiences and lifetimes are not simulated: the token is taken as valid.

Exit status: 0 allow, 3 deny (the verdict, also in dry run), 1 bad input or configuration (the
message names the flag or key), including a body the sidecar would refuse as invalid JSON-RPC
(it answers 400).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sidecar.config import Config, InboundConfig, load_config
from sidecar.errors import ConfigErrors
from sidecar.mcp.jsonrpc import JsonRpcError, Kind, Message, parse_body
from sidecar.mcp.judge import judge
from sidecar.mcp.mux.names import Naming
from sidecar.mcp.policy import (
    ARGUMENT_METHODS,
    NOTIFICATION_PREFIX,
    TARGET_KINDS,
    Decision,
    Policy,
    summarise,
)
from sidecar.spiffe.ids import SpiffeId, SpiffeIdError
from sidecar.tokens.claims import (
    Principal,
    VerifiedToken,
    claim_strings,
    delegation_chain,
    freeze,
    parse_scopes,
)
from sidecar.tokens.errors import TokenError, TokenLayer

EXIT_ALLOW: Final = 0
EXIT_DENY: Final = 3
EXIT_ERROR: Final = 1

_TARGET_FLAGS: Final = {"tool": "--tool", "resource": "--resource", "prompt": "--prompt"}


class ExplainError(Exception):
    """Bad input: the message names the flag (or the configuration key) at fault."""


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    """The verdict on the whole body (a batch is denied if any element is)."""
    stage: str
    """``mcp_policy``, or the admission check that refused: ``inbound.allow_spiffe_ids``,
    ``inbound.jwt_svid.bind_to_peer``, ``inbound.oauth.required_scopes``."""
    notes: tuple[str, ...] = ()
    principal: Principal | None = None
    """Who the call was judged as (user = ``sub``, agent = ``actor``)."""
    elements: tuple[tuple[Message, Decision], ...] = ()
    """Each message of the body with its own decision (the admission check's, if one refused)."""
    batch: bool = False
    dry_run: bool = False
    """The policy is in dry run: its denials are logged, and the call forwarded."""

    @property
    def forwarded(self) -> bool:
        """What the sidecar does: a policy in dry run forwards what it denies (an admission
        check that refused is enforced all the same)."""
        return self.decision.allowed or (self.dry_run and self.stage == "mcp_policy")


# ------------------------------------------------------------------------------ configuration


def load(path: str | Path) -> tuple[Config, Policy]:
    """The configuration and its ``inbound.mcp_policy``; ``ConfigErrors`` or ``ExplainError``."""
    config = load_config(path)
    if config.inbound is None:
        raise ExplainError(f"{path}: no inbound section (the MCP policy is inbound.mcp_policy)")
    configured = config.inbound.mcp_policy
    if configured is None:
        raise ExplainError(
            f"{path}: no inbound.mcp_policy (without one every admitted call is forwarded)"
        )
    return config, configured.policy


# ---------------------------------------------------------------------------------- the caller


def build_principal(
    inbound: InboundConfig,
    spiffe_id: str | None,
    sub: str | None,
    claims: Mapping[str, Any] | None,
) -> tuple[Principal, Decision | None, str, list[str]]:
    """(principal, admission denial or None, the stage that refused, notes)."""
    notes: list[str] = []
    sid: SpiffeId | None = None
    if inbound.mtls == "required":
        if spiffe_id is None:
            raise ExplainError(
                "--spiffe-id is required: inbound.mtls is 'required', every caller presents one"
            )
        try:
            sid = SpiffeId.parse(spiffe_id)
        except SpiffeIdError as exc:
            raise ExplainError(f"--spiffe-id: {exc.message}") from None
    elif spiffe_id is not None:
        notes.append("--spiffe-id ignored: inbound.mtls is 'off' (no client certificates)")

    token = _token(inbound, sid, sub, claims, notes)
    principal = Principal(spiffe_id=sid, token=token)
    if sid is not None and not inbound.allow_spiffe_ids.allows(sid):
        denial = Decision(False, None, "SPIFFE ID not in inbound.allow_spiffe_ids")
        return principal, denial, "inbound.allow_spiffe_ids", notes
    bind = bool(inbound.jwt_svid and inbound.jwt_svid.bind_to_peer)
    if token is not None and token.layer == "jwt_svid" and bind and token.subject != str(sid):
        denial = Decision(False, None, "token sub is not the mTLS peer's SPIFFE ID")
        return principal, denial, "inbound.jwt_svid.bind_to_peer", notes
    oauth = inbound.oauth
    if (
        token is not None
        and token.actors
        and token.layer == "oauth"
        and oauth is not None
        and oauth.bind_actor_to_peer
        and token.actors[0] != str(sid)
    ):
        denial = Decision(False, None, "token's current actor (act.sub) is not the mTLS peer")
        return principal, denial, "inbound.oauth.bind_actor_to_peer", notes
    if token is not None and token.layer == "oauth" and oauth is not None:
        missing = [s for s in oauth.required_scopes if s not in token.scopes]
        if missing:
            denial = Decision(False, None, f"insufficient_scope: missing {' '.join(missing)}")
            return principal, denial, "inbound.oauth.required_scopes", notes
    return principal, None, "mcp_policy", notes


def _token(
    inbound: InboundConfig,
    sid: SpiffeId | None,
    sub: str | None,
    claims: Mapping[str, Any] | None,
    notes: list[str],
) -> VerifiedToken | None:
    jwt_svid, oauth = inbound.jwt_svid, inbound.oauth
    if jwt_svid is None and oauth is None and inbound.api_keys is not None and sub is not None:
        key_claims = dict(claims or {})
        try:
            return VerifiedToken(
                layer="api_key",
                subject=sub,
                issuer=None,
                audience=(),
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
                scopes=parse_scopes(key_claims, "api_key"),
                roles=claim_strings(key_claims, "roles", "api_key"),
                claims=freeze(key_claims),
            )
        except TokenError as exc:
            raise ExplainError(f"--claims: {exc.message}") from None
    if jwt_svid is None and oauth is None:
        if sub is not None or claims is not None:
            notes.append("--sub/--claims ignored: inbound has no token layer (jwt_svid / oauth)")
        return None
    if sub is None and claims is None:
        layers = " and ".join(
            name for name, cfg in (("jwt_svid", jwt_svid), ("oauth", oauth)) if cfg
        )
        raise ExplainError(
            f"--sub or --claims is required: inbound.{layers} makes every call carry a token"
        )
    claims = dict(claims or {})
    if sub is not None:
        if "sub" in claims and claims["sub"] != sub:
            raise ExplainError("--sub and the 'sub' of --claims differ")
        claims["sub"] = sub
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise ExplainError("--claims has no string 'sub'; give --sub")
    layer: TokenLayer
    if oauth is not None and (jwt_svid is None or claims.get("iss") == oauth.issuer):
        layer = "oauth"
    else:
        layer = "jwt_svid"
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    if layer == "jwt_svid":
        if any(name in claims for name in ("scope", "scp", "roles", "groups")):
            notes.append(
                "token read as a JWT-SVID: scopes, roles and groups are not taken from JWT-SVIDs"
            )
        return VerifiedToken(
            layer=layer,
            subject=subject,
            issuer=claims.get("iss") if isinstance(claims.get("iss"), str) else None,
            audience=(),
            expires_at=expires,
            claims=freeze(claims),
        )
    assert oauth is not None
    try:
        return VerifiedToken(
            layer=layer,
            subject=subject,
            issuer=oauth.issuer,
            audience=(oauth.audience,),
            expires_at=expires,
            scopes=parse_scopes(claims, layer),
            roles=claim_strings(claims, oauth.roles_claim, layer),
            groups=claim_strings(claims, oauth.groups_claim, layer),
            claims=freeze(claims),
            actors=delegation_chain(claims, layer),
        )
    except TokenError as exc:
        raise ExplainError(f"--claims: {exc.message}") from None


# ---------------------------------------------------------------------------------- the request


def build_body(
    method: str,
    *,
    tool: str | None = None,
    resource: str | None = None,
    prompt: str | None = None,
    arguments: str | None = None,
    request_id: str | None = None,
    notification: bool | None = None,
) -> bytes:
    """The JSON-RPC request the flags describe (checked: each flag must fit ``--method``).

    ``arguments`` and ``request_id`` are JSON texts, embedded as written. Without
    ``request_id`` the message is a notification if ``notification`` says so - by default when
    ``method`` starts with ``notifications/`` - else a request with id ``1``.
    """
    if not method:
        raise ExplainError("--method must not be empty")
    given = {k: v for k, v in (("tool", tool), ("resource", resource), ("prompt", prompt)) if v}
    kind = TARGET_KINDS.get(method)
    for flag_kind in given:
        if flag_kind != kind:
            fits = [m for m, k in TARGET_KINDS.items() if k == flag_kind]
            raise ExplainError(
                f"{_TARGET_FLAGS[flag_kind]} only applies to --method {' / '.join(fits)}"
            )
    if kind is not None and kind not in given:
        raise ExplainError(f"--method {method} needs {_TARGET_FLAGS[kind]}")
    if arguments is not None and method not in ARGUMENT_METHODS:
        raise ExplainError(
            f"--args only applies to --method {' / '.join(sorted(ARGUMENT_METHODS))}"
        )
    if request_id is not None and notification:
        raise ExplainError("--id and --notification exclude each other")
    params: list[str] = []
    if kind is not None:
        name_key = "uri" if kind == "resource" else "name"
        params.append(f"{json.dumps(name_key)}:{json.dumps(given[kind])}")
    if arguments is not None:
        params.append(f'"arguments":{_one_json_value(arguments, "--args")}')
    parts = ['"jsonrpc":"2.0"']
    if notification is None:
        notification = request_id is None and method.startswith(NOTIFICATION_PREFIX)
    if not notification:
        parts.append(f'"id":{_one_json_value(request_id or "1", "--id")}')
    parts.append(f'"method":{json.dumps(method)}')
    if params:
        parts.append('"params":{' + ",".join(params) + "}")
    return ("{" + ",".join(parts) + "}").encode()


def _one_json_value(text: str, flag: str) -> str:
    """``text`` if it holds exactly one JSON value (so embedding it cannot change the rest of
    the message); whether the sidecar accepts that value is for ``parse_body`` to say."""
    try:
        _, end = json.JSONDecoder().raw_decode(text.strip())
    except (ValueError, RecursionError) as exc:
        raise ExplainError(f"{flag}: not valid JSON: {exc}") from None
    if end != len(text.strip()):
        raise ExplainError(f"{flag}: text after the JSON value")
    return text.strip()


def explain(
    config: Config,
    policy: Policy,
    body: bytes,
    *,
    spiffe_id: str | None,
    sub: str | None = None,
    claims: Mapping[str, Any] | None = None,
    blame: str = "--body",
) -> Explanation:
    """Admission checks, then ``judge`` on the body: what the proxy does. A body the sidecar
    refuses as invalid is an ``ExplainError`` naming ``blame`` (the flag that made it) - even
    for a caller the admission checks refuse, whose body the proxy would not read."""
    if config.inbound is None:
        raise ExplainError("the configuration has no inbound section")
    principal, denial, stage, notes = build_principal(config.inbound, spiffe_id, sub, claims)
    judgement = judge(policy, principal, body)
    if judgement.invalid is not None:
        raise ExplainError(
            f"{blame}: the sidecar refuses this request with HTTP 400 and JSON-RPC error "
            f"{judgement.invalid.code}: {judgement.invalid.message}"
        )
    parsed = judgement.parsed
    assert parsed is not None and judgement.decisions is not None
    for message in parsed.messages:
        if message.target is not None:
            by_uri = (message.method or "").startswith("resources/")
            notes += _gateway_notes(
                config.inbound,
                None if by_uri else message.target,
                message.target if by_uri else None,
            )
    if denial is not None:
        elements = tuple((m, denial) for m in parsed.messages)
        return Explanation(denial, stage, tuple(notes), principal, elements, parsed.batch)
    elements = tuple(zip(parsed.messages, judgement.decisions, strict=True))
    decision = summarise(judgement.decisions)
    return Explanation(
        decision, "mcp_policy", tuple(notes), principal, elements, parsed.batch, policy.dry_run
    )


def _gateway_notes(inbound: InboundConfig, name: str | None, uri: str | None) -> list[str]:
    """At an edge gateway (``inbound.targets``): which target a name or URI reaches, with its
    own name there. Rules match the names as the client sees them (``math__add``)."""
    mux = inbound.mux
    if mux is None or (name is None and uri is None):
        return []
    naming = Naming.of([t.name for t in mux.targets], mux.prefix_mode)
    upstreams = {t.name: t.upstream for t in mux.targets}
    if name is not None:
        split = naming.split_name(name)
        if split is None and naming.needs_owner_table:
            return [
                f"{name!r}: prefix_mode never: the gateway routes it to the one target "
                "that lists it"
            ]
    else:
        assert uri is not None
        split = naming.split_uri(uri)
    shown = name if name is not None else uri
    if split is None:
        return [
            f"{shown!r} names no target of this gateway ({', '.join(upstreams)}): the "
            "gateway refuses it as unknown whatever the policy says"
        ]
    target, own = split
    return [f"{shown!r} is {own!r} of target {target} ({upstreams[target]})"]


# ---------------------------------------------------------------------------------------- CLI


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, metavar="FILE", help="configuration")
    parser.add_argument("--spiffe-id", metavar="ID", help="the caller's mTLS SPIFFE ID")
    parser.add_argument("--sub", metavar="S", help="the token subject")
    parser.add_argument(
        "--claims",
        metavar="JSON",
        help='token claims as a JSON object, e.g. \'{"roles": ["admin"], "scope": "mcp:tools"}\'',
    )
    parser.add_argument(
        "--actor",
        action="append",
        metavar="ID",
        help="a delegated token's actor (RFC 8693 act.sub), e.g. the agent's SPIFFE ID; repeat "
        "for a chain, current actor first",
    )
    parser.add_argument("--method", metavar="M", help="JSON-RPC method, e.g. tools/call")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--tool", metavar="NAME", help="tool name (tools/call)")
    target.add_argument("--resource", metavar="URI", help="resource URI (resources/read...)")
    target.add_argument("--prompt", metavar="NAME", help="prompt name (prompts/get)")
    parser.add_argument("--args", metavar="JSON", help="call arguments as a JSON object")
    ident = parser.add_mutually_exclusive_group()
    ident.add_argument(
        "--id", metavar="JSON", help="the request id as JSON, e.g. 7 or '\"a\"' (default 1)"
    )
    ident.add_argument(
        "--notification",
        action="store_true",
        default=None,
        help="send no id (the default for notifications/... methods)",
    )
    parser.add_argument(
        "--body",
        metavar="JSON|@FILE",
        help="the whole request body instead of --method...: a message or a batch",
    )


_MESSAGE_FLAGS: Final = ("method", "tool", "resource", "prompt", "args", "id", "notification")


def _body_from_args(args: argparse.Namespace) -> tuple[bytes, str]:
    """The request body the flags describe, and the flag to blame if the sidecar refuses it."""
    if args.body is not None:
        used = [f"--{name}" for name in _MESSAGE_FLAGS if getattr(args, name) is not None]
        if used:
            raise ExplainError(f"--body excludes {' / '.join(used)}")
        text: str = args.body
        if text.startswith("@"):
            try:
                return Path(text[1:]).read_bytes(), "--body"
            except OSError as exc:
                raise ExplainError(f"--body: {text[1:]}: {exc.strerror or exc}") from None
        return text.encode("utf-8", "surrogateescape"), "--body"
    if args.method is None:
        raise ExplainError("--method (or --body) is required")
    body = build_body(
        args.method,
        tool=args.tool,
        resource=args.resource,
        prompt=args.prompt,
        arguments=args.args,
        request_id=args.id,
        notification=args.notification,
    )
    if args.id is not None:
        probe = f'{{"jsonrpc":"2.0","id":{_one_json_value(args.id, "--id")},"method":"ping"}}'
        try:
            parse_body(probe.encode())
        except JsonRpcError as exc:
            raise ExplainError(f"--id: {exc.message}") from None
    return body, "--args" if args.args is not None else "--method"


def run_from_args(args: argparse.Namespace) -> int:
    try:
        claims = _json_object(args.claims, "--claims")
        if args.actor:
            claims = _with_actors(claims, args.actor)
        body, blame = _body_from_args(args)
        config, policy = load(args.config)
        result = explain(
            config, policy, body, spiffe_id=args.spiffe_id, sub=args.sub, claims=claims, blame=blame
        )
    except ConfigErrors as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_ERROR
    except ExplainError as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(f"{args.config}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    for line in render(result):
        print(line)
    return EXIT_ALLOW if result.decision.allowed else EXIT_DENY


def render(result: Explanation) -> list[str]:
    """The report: the verdict, the call (or each element of a batch), rule, reason, stage."""
    decision = result.decision
    lines = ["ALLOW" if decision.allowed else "DENY"]
    if not decision.allowed and result.forwarded:
        lines[0] += " (dry run: would be allowed through)"
    if result.dry_run:
        lines.append("  mode:   dry run (denials are logged as would_deny, not enforced)")
    if result.batch:
        count = len(result.elements)
        rule = (
            "forwarded whatever the verdict"
            if result.dry_run
            else "forwarded only if every one is allowed"
        )
        lines.append(f"  batch:  {count} messages, {rule}")
        for index, (message, own) in enumerate(result.elements):
            verdict = "ALLOW" if own.allowed else "DENY "
            lines.append(
                f"  [{index}]    {verdict} {_call(message)}: rule {own.rule or '-'}, "
                f"reason {own.reason}"
            )
    elif result.elements:
        lines.append(f"  call:   {_call(result.elements[0][0])}")
    who = result.principal
    if who is not None:
        caller = [f"spiffe_id={who.spiffe_id}"] if who.spiffe_id is not None else []
        if who.sub is not None:
            caller.append(f"sub={who.sub}")
        caller += [f"actor={who.actor}"] if who.actor is not None else []
        caller += [f"prior_actors={','.join(who.actors[1:])}"] if len(who.actors) > 1 else []
        lines.append(f"  caller: {' '.join(caller) or '-'}")
    lines.append(f"  rule:   {decision.rule or '-'}")
    lines.append(f"  reason: {decision.reason}")
    lines.append(f"  stage:  {result.stage}")
    lines.extend(f"  note:   {note}" for note in result.notes)
    return lines


def _call(message: Message) -> str:
    text = message.method or "(response)"
    if message.target is not None:
        text += f" {message.target!r}"
    if message.kind is Kind.NOTIFICATION:
        text += " (notification)"
    return text


def _with_actors(claims: dict[str, Any] | None, actors: list[str]) -> dict[str, Any]:
    """``--actor`` flags as a nested RFC 8693 ``act`` claim (current actor outermost)."""
    claims = dict(claims or {})
    if "act" in claims:
        raise ExplainError("give the actors either with --actor or as 'act' in --claims")
    act: dict[str, Any] | None = None
    for actor in reversed(actors):
        act = {"sub": actor, **({"act": act} if act is not None else {})}
    claims["act"] = act
    return claims


def _json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {key!r}")
            result[key] = value
        return result

    try:
        value = json.loads(text, object_pairs_hook=unique)
    except (ValueError, RecursionError) as exc:
        raise ExplainError(f"{flag}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ExplainError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value
