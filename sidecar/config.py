"""The sidecar's YAML configuration, parsed once into frozen dataclasses.

Each key is defined once, on the dataclass field it fills (``sidecar.schema.key``): its kind of
value (``sidecar.config_values``), default, whether it is required, and its documentation. The
``Section`` of each mapping is made of those keys, and from the sections come the reader of each
mapping, ``SCHEMA``, ``check-config``, the key tables of docs/configuration.md and
docs/config.schema.json (``python -m sidecar.config_docs``). What is not a key definition stays
explicit code in each section's parser below: rules between keys (``upstream`` or ``targets``,
``mtls: off`` needs a token layer, ``token_exchange`` excludes ``jwt_svid_audience``...).

Validation collects **every** problem instead of stopping at the first, and names each one by its
key path (``inbound.allow_spiffe_ids[2]``, ``outbound.routes[0].upstream``) with what is wrong and
what was expected; read from YAML (``sidecar.strict_yaml``), each also carries its line. A
security configuration must never be ambiguous or partly ignored, so:

* unknown keys are errors (with a "did you mean" suggestion), and so are duplicate YAML keys;
* keys of features this version does not implement yet (``UNSUPPORTED_KEYS``) are errors, because
  an ignored policy would be a silent allow;
* scalars are typed strictly: a boolean is ``true``/``false`` (``yes``/``no``/``on``/``off`` are
  plain strings here, as in YAML 1.2), a number is never a string and a string never a number.

Pure: no I/O apart from reading the files it names (``load_config``, a policy or API key file, a
CA file); never imports aiohttp.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from sidecar import strict_yaml
from sidecar.config_values import (
    ALGORITHMS,
    ALLOWLIST,
    AUDIENCES,
    AUTHORIZATION_SERVERS,
    CA_FILE,
    DURATION,
    GIB,
    HEADER_NAME,
    ISSUER_URL,
    JWKS_URI,
    JWT_ALGORITHMS,
    JWT_SVID_AUDIENCE,
    KIB,
    LEEWAY,
    LOCAL_UPSTREAM,
    MAX_SESSIONS,
    MIB,
    MTLS,
    ORIGINS,
    PATH_PREFIX,
    PREFIX_MODE,
    PUBLIC_URL,
    RESOURCE_URL,
    ROUTE_HOST,
    ROUTE_NAME,
    SCOPES,
    SERVER_SPIFFE_ID,
    SIDECAR_URL,
    SNI,
    SUBJECT_TOKEN_TYPE,
    TARGET_NAME,
    TIMEOUT,
    TOKEN_ENDPOINT,
    TRUST_DOMAIN,
    TYP,
    WORKLOAD_API,
    ListenAddress,
    MtlsMode,
    claim_name,
    default_sni,
    file_path,
    listen,
    origin_of,
    parse_duration,
    parse_size,
    size,
    valid_or_none,
)
from sidecar.errors import ConfigError, ConfigErrors
from sidecar.mcp.mux.names import Naming, PrefixMode, pattern_problem
from sidecar.mcp.policy import POLICY_SECTION, Policy, load_policy_file, parse_policy
from sidecar.mcp.ratelimit import RATE_LIMITS, RateLimit
from sidecar.schema import (
    BOOLEAN,
    ROOT,
    Fields,
    Key,
    Schema,
    Section,
    Value,
    as_string,
    choice,
    definition_name,
    got,
    key,
    keys_of,
    non_empty_string,
    parse_items,
    read,
    repeated,
    section_value,
    short,
    whole_number,
)
from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist
from sidecar.tokens.apikeys import ApiKeys, load_api_key_file
from sidecar.tokens.exchange import TOKEN_TYPES
from sidecar.tracing.config import TRACING, TracingConfig

__all__ = [
    "JWT_ALGORITHMS",
    "LOG_LEVELS",
    "PLACES",
    "ROOT",
    "SCHEMA",
    "TOP",
    "UNSUPPORTED_KEYS",
    "AdminConfig",
    "ApiKeysConfig",
    "CircuitBreakers",
    "Config",
    "InboundConfig",
    "JwtSvidConfig",
    "Limits",
    "ListenAddress",
    "LogConfig",
    "McpPolicyConfig",
    "MuxConfig",
    "OAuthConfig",
    "OutboundConfig",
    "ProcessConfig",
    "RouteConfig",
    "Scheduler",
    "TargetConfig",
    "TokenExchangeConfig",
    "load_config",
    "load_config_text",
    "parse_config",
    "parse_duration",
    "parse_size",
]

UNSUPPORTED_KEYS: Mapping[str, str] = {}
"""Keys of features that are designed but not built yet -> what they would do. Using one is an
error, never silently ignored (an ignored security policy is a silent allow). Remove a key from
here, and define it on its dataclass, when its feature lands."""

MAX_CIRCUIT_BREAKER = 1_000_000
"""Upper bound of every circuit-breaker threshold (more would exhaust file descriptors first)."""
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
"""RFC 9728 protected resource metadata; the resource's path is appended (section 3.1)."""

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LogFormat = Literal["text", "json"]
Scheduler = Literal["normal", "batch"]
ClientAuth = Literal["jwt_svid", "client_secret"]

_SEE_BELOW = "see below"
_ABSENT = "absent"


def _read(section: Section, value: object, path: str) -> Fields:
    """Open ``value`` as ``section`` of the configuration (``UNSUPPORTED_KEYS`` as it is now)."""
    return read(section, value, path, schema=Schema(PLACES, UNSUPPORTED_KEYS))


# ----------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Sizes (bytes) and timeouts (seconds) of one listener; see docs/configuration.md#timeouts."""

    max_request_body: int = key(
        size(1, GIB, "1 byte", "1GiB"),
        "Largest request body accepted (1 byte .. 1GiB); a bigger one is answered 413.",
        default=4 * MIB,
    )
    max_header_size: int = key(
        size(KIB, MIB, "1KiB", "1MiB"),
        "Largest request line and largest single header line (1KiB .. 1MiB).",
        default=16 * KIB,
    )
    header_timeout: float = key(
        TIMEOUT,
        "The whole request head (request line + headers) must arrive within this of its first "
        "byte (or of the connection's start); a request body may not go quiet for longer than "
        "this either. Defeats slowloris clients. On a TLS inbound it also bounds the TLS "
        "handshake, from accept.",
        default=10.0,
    )
    keepalive_timeout: float = key(
        TIMEOUT,
        "How long an idle downstream connection is kept open between requests.",
        default=75.0,
    )
    connect_timeout: float = key(
        TIMEOUT,
        "Upstream TCP connect (and, on the outbound side, the TLS handshake). Timeout → 504; "
        "refusal → 502.",
        default=5.0,
    )
    idle_timeout: float = key(
        TIMEOUT,
        "Longest silence from upstream while waiting for the response head, or between bytes "
        "of a non-SSE response body. Before the head: 504; inside a body the stream is cut. "
        "Does not apply inside an SSE stream.",
        default=60.0,
    )
    total_timeout: float = key(
        TIMEOUT,
        "Upper bound for a whole non-SSE exchange; 504 if the response has not started. SSE "
        "streams are exempt.",
        default=300.0,
    )
    sse_heartbeat: float = key(
        DURATION,
        "While an SSE stream from upstream is quiet, send an SSE comment line (`: keepalive`) "
        "downstream this often. `0` = off.",
        default=15.0,
    )


LIMITS = Section("limits", keys_of(Limits), shared=True)


def _limits(value: object, path: str) -> Limits:
    return _read(LIMITS, value, path).build(Limits)


LIMITS_VALUE = section_value(LIMITS, _limits)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakers:
    """Envoy's cluster circuit breakers for one upstream (an outbound route, the inbound's
    local server): past a threshold a request is answered 503 ``upstream_overflow`` at once
    instead of piling onto a saturated upstream. Defaults are Envoy's."""

    max_connections: int = key(
        whole_number(1, MAX_CIRCUIT_BREAKER),
        "Connections open to the upstream at once: busy, idle in the pool, or being opened. A "
        "request that finds all of them busy waits for one (`max_pending_requests`). Each "
        "open SSE stream holds one.",
        default=1024,
    )
    max_pending_requests: int = key(
        whole_number(0, MAX_CIRCUIT_BREAKER),
        "Requests waiting for a connection while `max_connections` are busy; each waits at "
        "most `connect_timeout`, first come first served. `0`: no waiting, such a request "
        "overflows at once.",
        default=1024,
    )
    max_requests: int = key(
        whole_number(1, MAX_CIRCUIT_BREAKER),
        "Requests in flight to the upstream at once, waiting ones included, each from the "
        "moment it is sent on until the last byte of its answer: an SSE stream counts for as "
        "long as it is open.",
        default=1024,
    )


CIRCUIT_BREAKERS = Section("circuit_breakers", keys_of(CircuitBreakers), shared=True)


def _circuit_breakers(
    value: object, path: str, base: CircuitBreakers = CircuitBreakers()
) -> CircuitBreakers:
    """The thresholds given, the others from ``base`` (the outbound's for a route)."""
    f = _read(CIRCUIT_BREAKERS, value, path)
    given = f.values(CircuitBreakers)
    f.check()
    return dataclasses.replace(base, **given)


CIRCUIT_BREAKERS_VALUE = section_value(CIRCUIT_BREAKERS, _circuit_breakers)
_SEE_LIMITS = "see [limits](#limits)"
_SEE_BREAKERS = "see [circuit_breakers](#circuit_breakers)"


# ---------------------------------------------------------------------------- token layer


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSvidConfig:
    """``inbound.jwt_svid``: every request must carry a JWT-SVID (``Authorization: Bearer``)."""

    audiences: tuple[str, ...] = key(
        AUDIENCES,
        "Non-empty; each entry a non-empty string, usually this server's own SPIFFE ID "
        "(`spiffe://example.org/ns/mcp/sa/math`) or URL. A JWT-SVID is accepted only if its "
        "`aud` contains at least one of them. Duplicates are dropped.",
        required="the audiences a JWT-SVID must name, e.g. [spiffe://example.org/ns/mcp/sa/math]",
    )
    bind_to_peer: bool = key(
        BOOLEAN,
        "The token's `sub` must equal the SPIFFE ID of the mTLS peer, so a JWT-SVID cannot be "
        "relayed by another workload. `true` is an error with `mtls: off` (there is no peer).",
        shown="`true` with `mtls: required`, `false` with `mtls: off`",
    )
    leeway: float = key(
        LEEWAY,
        "Clock skew tolerated when checking `exp`, `nbf` and `iat`; `0` to `5m`.",
        default=30.0,
    )
    algorithms: tuple[str, ...] = key(
        ALGORITHMS,
        "The accepted JWS `alg` values: a non-empty subset of that list (case-sensitive). "
        "Anything else is an error naming its index; `none` (unsigned) and "
        "`HS256`/`HS384`/`HS512` (shared-secret) are refused outright.",
        default=JWT_ALGORITHMS,
        shown="all of " + ", ".join(f"`{alg}`" for alg in JWT_ALGORITHMS),
    )


JWT_SVID = Section("inbound.jwt_svid", keys_of(JwtSvidConfig))


def _jwt_svid(value: object, path: str, mtls: MtlsMode = "required") -> JwtSvidConfig:
    f = _read(JWT_SVID, value, path)
    bind_to_peer = f.get("bind_to_peer", default=mtls == "required")
    if mtls == "off" and bind_to_peer and "bind_to_peer" in f:
        f.error(
            "cannot be true with inbound.mtls: 'off': there is no mTLS peer whose SPIFFE ID "
            "the token's sub could be bound to; set it to false",
            "bind_to_peer",
        )
    return f.build(JwtSvidConfig, bind_to_peer=bind_to_peer)


def _inline_jwks(value: object, path: str) -> str:
    """A JWKS written as YAML -> canonical JSON text (the dataclass stays hashable)."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            path,
            "expected a JWKS: a mapping with a 'keys' list, e.g. {keys: [{kty: RSA, kid: k1, "
            f"n: ..., e: AQAB}}]}}; got {got(value)}",
        )
    keys_path = f"{path}.keys"
    if "keys" not in value:
        raise ConfigError(keys_path, "required (the JWKS 'keys' list)")
    items = value["keys"]
    if isinstance(items, str) or not isinstance(items, list | tuple):
        raise ConfigError(
            keys_path, f"expected a list of JWKs (mappings with kty and kid), got {got(items)}"
        )
    if not items:
        raise ConfigError(keys_path, "must not be empty: with no keys no token can be valid")
    problems: list[ConfigError] = []
    kids: dict[str, int] = {}
    for index, item in enumerate(items):
        item_path = f"{keys_path}[{index}]"
        if not isinstance(item, Mapping):
            problems.append(
                ConfigError(
                    item_path, f"expected a JWK (a mapping with kty and kid), got {got(item)}"
                )
            )
            continue
        for member in ("kty", "kid"):
            if member not in item:
                problems.append(
                    ConfigError(f"{item_path}.{member}", "required in every inline key")
                )
            elif not isinstance(item[member], str) or not item[member]:
                problems.append(
                    ConfigError(
                        f"{item_path}.{member}",
                        f"expected a non-empty string, got {got(item[member])}",
                    )
                )
        kty, kid = item.get("kty"), item.get("kid")
        if kty == "oct":
            problems.append(
                ConfigError(
                    f"{item_path}.kty",
                    "'oct' (symmetric) keys are refused: a shared secret lets whoever holds it "
                    "mint tokens; give the issuer's public keys (RSA or EC)",
                )
            )
        private = [member for member in ("d", "p", "q", "dp", "dq", "qi", "k") if member in item]
        if private and kty != "oct":
            problems.append(
                ConfigError(
                    item_path,
                    f"contains private key material ({', '.join(private)}); give only the "
                    "public key",
                )
            )
        if isinstance(kid, str) and kid:
            if kid in kids:
                problems.append(
                    ConfigError(
                        f"{item_path}.kid",
                        f"duplicate kid {short(kid)} (also keys[{kids[kid]}]); which key "
                        "verifies a token would be ambiguous",
                    )
                )
            kids.setdefault(kid, index)
    if problems:
        raise ConfigErrors(problems)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
        plain = json.loads(text) == value
    except (TypeError, ValueError, RecursionError):
        plain = False
    if not plain:
        raise ConfigError(
            path,
            "must be plain JSON data: string keys; strings, finite numbers, booleans, null, "
            "lists and mappings (quote dates and other YAML-typed values)",
        )
    return text


_JWKS = Value(_inline_jwks, "mapping", {"type": "object", "required": ["keys"]})
_SAME_LEEWAY = "Clock skew tolerated when checking `exp`, `nbf` and `iat`; `0` to `5m`."


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthConfig:
    """``inbound.oauth``: OAuth 2.1 resource server (MCP authorization) for JWT access tokens.
    ``issuer`` and ``audience`` are kept exactly as configured (token claims are compared byte
    for byte); exactly one key source (``jwks_uri``, ``jwks`` as canonical JSON text, or
    ``discovery``) is set."""

    issuer: str = key(
        ISSUER_URL,
        "The authorization server's issuer identifier, e.g. "
        "`https://auth.example.com/realms/mcp`. `https://` (`http://` only for a loopback "
        "host: `127.0.0.1`, `[::1]`, `localhost`), no query, fragment or user info, printable "
        "ASCII. **Kept exactly as written**: a token's `iss` must equal it byte for byte (a "
        "trailing `/` matters).",
        required="the authorization server's issuer identifier, e.g. https://auth.example.com",
    )
    audience: str = key(
        RESOURCE_URL,
        "This MCP server's resource URL (RFC 8707 resource indicator), e.g. "
        "`https://mcp.example.com/mcp`: what clients send as `resource` to the authorization "
        "server. Same URL rules as `issuer`; kept exactly. A token's `aud` must contain it; "
        "it is the `resource` of the protected resource metadata, and its path is the suffix "
        "of the metadata URL.",
        required="this MCP server's resource URL (RFC 8707), e.g. https://mcp.example.com/mcp",
    )
    jwks_uri: str | None = key(
        JWKS_URI,
        "Where the issuer's signing keys (a JWKS) are fetched. `https://` (`http://` only on "
        "loopback); a query is allowed, a fragment is not.",
        default=None,
    )
    jwks: str | None = key(
        _JWKS,
        "An inline JWKS, written as YAML (or JSON, which is YAML): a mapping with a non-empty "
        "`keys` list; every key a mapping with a non-empty `kty` and `kid` (kids unique). "
        "`kty: oct` (symmetric) keys and private key members (`d`, `p`, `q`, `dp`, `dq`, "
        "`qi`) are errors. Values must be plain JSON data (quote anything YAML would read as "
        "a date). Kept as canonical JSON text (keys sorted).",
        default=None,
    )
    discovery: bool = key(
        BOOLEAN,
        "Find the `jwks_uri` in the issuer's authorization server metadata (OpenID Connect "
        "`/.well-known/openid-configuration` or RFC 8414 "
        "`/.well-known/oauth-authorization-server`) derived from `issuer`. Exactly one source "
        "of signing keys: at most one of `jwks_uri`, `jwks`, `discovery: true` may be given, "
        "and `discovery: false` needs one of the other two.",
        shown="`true` when neither `jwks_uri` nor `jwks` is given, else `false`",
    )
    required_scopes: tuple[str, ...] = key(
        SCOPES,
        "Every one must be in the token's `scope` claim; otherwise 403 `insufficient_scope` "
        'naming them (step-up). Each entry one scope token (printable ASCII, no spaces, `"` '
        "or `\\`); duplicates dropped.",
        default=(),
    )
    scopes_supported: tuple[str, ...] = key(
        SCOPES,
        "Advertised in the protected resource metadata. Must include every required scope.",
        default=(),
        shown="`required_scopes`",
    )
    authorization_servers: tuple[str, ...] = key(
        AUTHORIZATION_SERVERS,
        "Advertised in the protected resource metadata: where MCP clients go to obtain a "
        "token. Same URL rules as `issuer`; not empty if given.",
        default=(),
        shown="`[issuer]`",
    )
    typ: str | None = key(
        TYP,
        "If set, the JWT `typ` header the token must carry, e.g. `at+jwt` (RFC 9068 JWT "
        "access tokens), which keeps ID tokens and other JWTs from the same issuer out.",
        default=None,
    )
    leeway: float = key(LEEWAY, _SAME_LEEWAY, default=30.0)
    algorithms: tuple[str, ...] = key(
        ALGORITHMS,
        "As for `jwt_svid.algorithms`.",
        default=JWT_ALGORITHMS,
        shown=f"all of `{JWT_ALGORITHMS[0]}` … `{JWT_ALGORITHMS[-1]}`",
    )
    jwks_cache_ttl: float = key(
        TIMEOUT,
        "How long fetched signing keys are used before they are fetched again.",
        default=300.0,
    )
    jwks_refresh_interval: float = key(
        TIMEOUT,
        "A token naming an unknown `kid` triggers a refetch (key rotation), but at most once "
        "per this interval, so garbage tokens cannot make the sidecar hammer the issuer.",
        default=30.0,
    )
    require_cnf: bool = key(
        BOOLEAN,
        "RFC 8705 certificate-bound access tokens: every token must carry `cnf.x5t#S256` "
        "equal to the SHA-256 thumbprint of the client certificate of this mTLS connection. "
        "An error with `mtls: off`.",
        default=False,
    )
    bind_actor_to_peer: bool = key(
        BOOLEAN,
        "A **delegated** token (RFC 8693 `act` claim, see "
        "[Delegation](#delegation-token-exchange-on-behalf-of-a-user)) is accepted only from "
        "its current actor: `act.sub` must equal the mTLS peer's SPIFFE ID, so an exchanged "
        "token copied off the agent that obtained it is refused (`401`, reason "
        "`actor_mismatch`) over any other workload's connection. Tokens without `act` are not "
        "affected. `true` is an error with `mtls: off`.",
        default=False,
        shown="`true` with `mtls: required`, `false` with `mtls: off`",
    )
    roles_claim: str = key(
        claim_name("roles"), "Name of the claim that holds the caller's roles.", default="roles"
    )
    groups_claim: str = key(
        claim_name("groups"), "Name of the claim that holds the caller's groups.", default="groups"
    )

    @property
    def resource_metadata_path(self) -> str:
        """RFC 9728 section 3.1: ``/.well-known/oauth-protected-resource`` followed by the path
        of ``audience`` (``https://mcp.example.com/mcp`` ->
        ``/.well-known/oauth-protected-resource/mcp``; a bare ``/`` adds nothing)."""
        path = urlsplit(self.audience).path
        return RESOURCE_METADATA_PATH + ("" if path in ("", "/") else path)


OAUTH = Section("inbound.oauth", keys_of(OAuthConfig))


def _oauth(value: object, path: str, mtls: MtlsMode = "required") -> OAuthConfig:
    f = _read(OAUTH, value, path)
    issuer = f.get("issuer")
    required_scopes = f.get("required_scopes")
    scopes_supported = f.get("scopes_supported", default=None)
    discovery = f.get("discovery", default="jwks_uri" not in f and "jwks" not in f)
    require_cnf = f.get("require_cnf")
    bind_actor = f.get("bind_actor_to_peer", default=mtls == "required")
    sources = [name for name in ("jwks_uri", "jwks") if name in f]
    if discovery and "discovery" in f:
        sources.append("discovery: true")
    if len(sources) > 1:
        f.error(
            f"give one source of signing keys, not {' and '.join(sources)}: jwks_uri, jwks "
            "and discovery: true are alternatives"
        )
    elif not sources and not discovery:
        f.error(
            "no source of signing keys: give jwks_uri or jwks, or leave discovery true "
            "(the issuer's metadata names its jwks_uri)"
        )
    if scopes_supported is not None:
        missing = [scope for scope in required_scopes if scope not in scopes_supported]
        if missing:
            f.error(
                f"must include every required scope (missing: {', '.join(missing)}); "
                "clients learn what to ask for from it",
                "scopes_supported",
            )
    if mtls == "off" and require_cnf:
        f.error(
            "cannot be true with inbound.mtls: 'off': there is no client certificate to "
            "match the token's cnf.x5t#S256 against; set it to false",
            "require_cnf",
        )
    if mtls == "off" and bind_actor and "bind_actor_to_peer" in f:
        f.error(
            "cannot be true with inbound.mtls: 'off': there is no mTLS peer the actor of a "
            "delegated token could be bound to; set it to false",
            "bind_actor_to_peer",
        )
    return f.build(
        OAuthConfig,
        discovery=discovery,
        scopes_supported=required_scopes if scopes_supported is None else scopes_supported,
        authorization_servers=f.get("authorization_servers", default=(issuer,)),
        bind_actor_to_peer=bind_actor,
    )


# --------------------------------------------------------------- MCP policy, API keys


@dataclass(frozen=True, slots=True, kw_only=True)
class McpPolicyConfig:
    """``inbound.mcp_policy``: the policy inline, or loaded from ``file`` (a mounted ConfigMap)
    and reloaded when the file changes (polled every ``reload_interval``)."""

    policy: Policy
    file: str | None = key(
        Value(
            lambda v, p: as_string(v, p, "/etc/mcp-sidecar/policy.yaml"),
            "string",
            {"type": "string", "minLength": 1},
        ),
        "Path of a YAML file holding a policy document (`default:` / `rules:` / `dry_run:`, "
        "nothing else), e.g. `/etc/mcp-sidecar/policy.yaml`. Use an absolute path: a relative "
        "one is resolved against the sidecar's working directory, not against this file. Read "
        "and validated at start-up (and by `check-config`): a missing or invalid file is a "
        "configuration error, reported as `inbound.mcp_policy.file: <path>: <problem>`. "
        "Afterwards it is watched and reloaded, see [Policy file and hot "
        "reload](#policy-file-and-hot-reload).",
        default=None,
        required="path of the policy YAML file",
        shown="**required** (file form)",
    )
    reload_interval: float = key(
        TIMEOUT, "How often the file is checked for changes (file form only).", default=2.0
    )


POLICY_FILE = Section("inbound.mcp_policy.file", keys_of(McpPolicyConfig))


def _file_problems(f: Fields, name: str, file: str, exc: ConfigErrors) -> None:
    """The problems of a file named by key ``name``, reported under that key."""
    for problem in exc.problems:
        f.error(f"{file}: {problem}", name)


def _mcp_policy(value: object, path: str) -> McpPolicyConfig:
    """Inline (``default:``/``rules:``) or ``{file: PATH, reload_interval: 2s}``."""
    if value is None:  # "mcp_policy:" with everything under it commented out
        raise ConfigError(
            path,
            "empty: give a policy (default: deny, rules: [...]) or {file: PATH}; an empty "
            "policy would silently allow every call",
        )
    if not (isinstance(value, Mapping) and "file" in value):
        return McpPolicyConfig(policy=parse_policy(value, path=path))
    dry_run = "dry_run" in value
    if dry_run:  # one place, reloaded with the rules it is about
        value = {name: item for name, item in value.items() if name != "dry_run"}
    f = _read(POLICY_FILE, value, path)
    if dry_run:
        f.error(
            "belongs in the policy file, next to default and rules (it is reloaded with them)",
            "dry_run",
        )
    values = f.values(McpPolicyConfig, policy=None)
    if "file" in values:  # read even if other keys are wrong: every problem at once
        try:
            values["policy"] = load_policy_file(values["file"])
        except ConfigErrors as exc:
            _file_problems(f, "file", values["file"], exc)
    f.check()
    return McpPolicyConfig(**values)


_MCP_POLICY = Value(
    _mcp_policy,
    "mapping",
    {
        "oneOf": [
            {"$ref": f"#/$defs/{definition_name(POLICY_SECTION)}"},
            {"$ref": f"#/$defs/{definition_name(POLICY_FILE)}"},
        ]
    },
    sections=(POLICY_SECTION, POLICY_FILE),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeysConfig:
    """``inbound.api_keys``: static keys, stored as salted hashes in ``file`` (a mounted
    Secret), reloaded when it changes (polled every ``reload_interval``)."""

    keys: ApiKeys = field(compare=False)
    """The key set read at start-up (and by ``check-config``)."""
    file: str = key(
        file_path("/etc/mcp-sidecar/api-keys/keys.yaml"),
        "The key file: a YAML document `keys: [...]` holding only salted **hashes** of the "
        "keys (see [API keys](#api-keys)), normally a mounted Kubernetes Secret, e.g. "
        "`/etc/mcp-sidecar/api-keys/keys.yaml`. Read and validated at start-up (and by "
        "`check-config`): a missing or invalid file is a configuration error, reported as "
        "`inbound.api_keys.file: <path>: <problem>`. Afterwards reloaded when it changes.",
        required="path of the key file (hashes only, see mcp-sidecar api-key create)",
    )
    header: str = key(
        HEADER_NAME,
        "Where clients send the key: `Authorization: Bearer mcpk_...` (then a bearer token "
        "without the `mcpk_` prefix goes to the other token layers), or any other header "
        "holding the bare key, e.g. `X-API-Key`. The header is never forwarded upstream.",
        default="Authorization",
    )
    reload_interval: float = key(
        TIMEOUT,
        "How often the file is checked for changes. A removed or replaced key is refused from "
        "the first check after the change on.",
        default=2.0,
    )


API_KEYS = Section("inbound.api_keys", keys_of(ApiKeysConfig))


def _api_keys(value: object, path: str) -> ApiKeysConfig:
    f = _read(API_KEYS, value, path)
    values = f.values(ApiKeysConfig, keys=None)
    if "file" in values:  # read even if other keys are wrong: every problem at once
        try:
            values["keys"] = load_api_key_file(values["file"])
        except ConfigErrors as exc:
            _file_problems(f, "file", values["file"], exc)
    f.check()
    return ApiKeysConfig(**values)


# ------------------------------------------------------------------------ multiplexing


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    """One MCP server behind a multiplexing endpoint, reached over mTLS. ``upstream`` is
    normalised (explicit port); ``sni`` is its host when that is a name (not a key)."""

    name: str = key(
        TARGET_NAME,
        "A lowercase letter, then lowercase letters, digits and `-`, at most 32 characters; "
        "unique. Prefixes the target's tool and prompt names (`math__add`) and resource URIs "
        "(`math+file:///a`). It may not contain `_`: names are joined with the separator "
        "`__`.",
        required="a short unique name, e.g. math",
    )
    upstream: str = key(
        SIDECAR_URL,
        "The server's inbound sidecar, `https://host[:port]` as for a route's `upstream`: the "
        "target is always reached over mTLS, with the host as SNI when it is a name (as a "
        "route without `sni`).",
        required="the server sidecar's URL, e.g. https://math.mcp.svc:8443",
    )
    server_spiffe_id: SpiffeId = key(
        SERVER_SPIFFE_ID,
        "The exact SPIFFE ID this target must present (each target has its own).",
        required="the exact SPIFFE ID the server must present, e.g. "
        "spiffe://example.org/ns/mcp/sa/math",
    )
    path: str | None = key(
        PATH_PREFIX,
        "The target's MCP endpoint path, e.g. `/mcp`. By default the path of the client's "
        "request (after `strip_prefix`) is used for every target.",
        default=None,
        shown="the request's path",
    )
    jwt_svid_audience: str | None = key(
        JWT_SVID_AUDIENCE,
        "Attach a JWT-SVID for this audience to every request to this target.",
        default=None,
    )
    sni: str | None = None
    """The TLS server name sent to this target: its upstream's host when it is a name."""


TARGET = Section("targets[]", keys_of(TargetConfig))


def _target(value: object, path: str) -> TargetConfig:
    f = _read(TARGET, value, path)
    upstream = f.get("upstream")
    return f.build(TargetConfig, sni=default_sni(upstream) if upstream else None)


def _targets(value: object, path: str) -> tuple[TargetConfig, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(
            path, f"expected a list of targets (name, upstream, server_spiffe_id), got {got(value)}"
        )
    if not value:
        raise ConfigError(path, "at least one target is required")
    problems: list[ConfigError] = []
    targets = parse_items(value, path, _target, problems)
    for index, target, first in repeated(targets, lambda target: target.name):
        problems.append(
            ConfigError(
                f"{path}[{index}].name",
                f"duplicate target name {target.name!r} (also {path}[{first}])",
            )
        )
    for index, target, first in repeated(targets, lambda target: (target.upstream, target.path)):
        problems.append(
            ConfigError(
                f"{path}[{index}].upstream",
                f"the same server as {path}[{first}] ({target.upstream}{target.path or ''}): "
                "every one of its names would be served twice",
            )
        )
    if problems:
        raise ConfigErrors(problems)
    return tuple(target for _, target in targets)


TARGETS = section_value(TARGET, _targets, many="list of targets")


@dataclass(frozen=True, slots=True, kw_only=True)
class MuxConfig:
    """A multiplexing endpoint: several MCP servers presented as one (``sidecar.mcp.mux``).
    Its keys sit in the route (or edge-gateway inbound) that has ``targets``."""

    targets: tuple[TargetConfig, ...]
    prefix_mode: PrefixMode = key(
        PREFIX_MODE,
        "Only with `targets`: when tool and prompt names carry their target (`math__add`), "
        "see [Names](#names-and-resource-uris).",
        default="multiple",
    )
    session_idle: float = key(
        TIMEOUT,
        "Only with `targets`: a client session unused this long is ended (and its targets' "
        "sessions deleted).",
        default=1800.0,
    )
    max_sessions: int = key(
        MAX_SESSIONS,
        "Only with `targets`: most client sessions kept; beyond it the least recently used "
        "one is ended.",
        default=1000,
    )
    target_wait: float = key(
        TIMEOUT,
        "Only with `targets`: how long `initialize` and the list methods wait for one target "
        "before answering without it (it is then reported unavailable for that answer).",
        default=10.0,
    )


def _targets_key(doc: str) -> Key:
    """``targets`` of a route or an edge-gateway inbound (the same key, told apart in docs)."""
    return Key(
        name="targets", value=TARGETS, doc=doc, attr="targets", owner=MuxConfig, shown=_ABSENT
    )


MUX_OPTIONS = keys_of(MuxConfig)
MUX_KEYS = ("targets", *(k.name for k in MUX_OPTIONS))
"""The keys of a multiplexing route (and of an edge gateway's inbound), besides ``targets``
only meaningful with it."""


def _mux(f: Fields) -> MuxConfig | None:
    """The ``MUX_KEYS`` of a route or an inbound section: None without ``targets`` (the other
    keys are then errors) or when they have problems (recorded)."""
    if "targets" not in f:
        for name in MUX_KEYS[1:]:
            if name in f:
                f.error(
                    "only used with targets (an endpoint multiplexing several MCP servers)", name
                )
        return None
    values = f.values(MuxConfig)
    return MuxConfig(**values) if "targets" in values else None


def _check_rule_names(f: Fields, mux: MuxConfig, policy: Policy, path: str) -> None:
    """An edge gateway's rules see multiplexed names (``math__add``): a rule naming a bare
    tool, or a target that does not exist, could never match - for a deny rule, a silent
    allow. Known at start-up, so refused here."""
    naming = Naming.of([t.name for t in mux.targets], mux.prefix_mode)
    for index, rule in enumerate(policy.rules):
        for name, globs in (("tools", rule.tools), ("prompts", rule.prompts)):
            for glob in globs or ():
                problem = pattern_problem(naming, glob.text)
                if problem is not None:
                    f.problems.add(f"{path}.rules[{index}].{name}", problem)


# ------------------------------------------------------------------------------ inbound


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundConfig:
    """The MCP server side: mTLS (or, OAuth-only, plain HTTP) in, plain HTTP to the server.
    ``upstream`` is normalised (lowercase host, explicit port) and None for an edge gateway,
    which has ``mux`` instead; ``public_url`` is set iff ``oauth`` is."""

    listen: ListenAddress = key(
        listen("0.0.0.0:8443"),
        "Where clients connect: other sidecars with mTLS (e.g. `0.0.0.0:8443`), or, with "
        "`mtls: off`, the ingress in plain HTTP.",
        required="the mTLS listen address, e.g. 0.0.0.0:8443",
    )
    upstream: str | None = key(
        LOCAL_UPSTREAM,
        "The local MCP server, `http://host[:port]` (plain HTTP, normally loopback), no path: "
        "the request path is forwarded as received once [normalised](#paths) (the query "
        "unchanged). Normalised to an explicit port (`http://127.0.0.1:8000`).",
        required="the local MCP server's URL, e.g. http://127.0.0.1:8000, or targets: the MCP "
        "servers an edge gateway multiplexes",
        when="unless `targets`",
    )
    public_url: str | None = key(
        PUBLIC_URL,
        "Only with `oauth`. The externally visible origin of this listener, "
        "`https://host[:port]` without a path (not even `/`), query or user info, e.g. "
        "`https://mcp.example.com`; normalised like `allowed_origins`. `http://` only for a "
        "loopback host (`127.0.0.1`, `[::1]`, `localhost`). Used to build the RFC 9728 "
        "`resource_metadata` URL of 401 answers: `public_url` + "
        "`/.well-known/oauth-protected-resource` + the path of `oauth.audience`. Set it when "
        "clients reach this server under another origin than the one in `oauth.audience`.",
        default=None,
        shown="the origin of `oauth.audience`",
    )
    mtls: MtlsMode = key(
        MTLS,
        "`required`: every client must present an X.509-SVID whose SPIFFE ID matches "
        "`allow_spiffe_ids`. `off`: an **OAuth-only (or API-key) ingress** — allowed only "
        "together with `oauth` or `api_keys` (otherwise: `'off' requires inbound.oauth or "
        "inbound.api_keys (an unauthenticated ingress is refused)`). The listener then speaks "
        "**plain HTTP**: it is meant to sit behind an ingress/gateway that terminates public "
        "TLS, or to listen on loopback for desktop MCP clients. With `off`, "
        "`allow_spiffe_ids` must be absent or empty, and `jwt_svid.bind_to_peer` and "
        "`oauth.require_cnf` cannot be `true` (there is no peer certificate). `off` is a "
        'plain string in this file; quote it (`mtls: "off"`) if the file also passes through '
        "YAML 1.1 tools, which read a bare `off` as `false`.",
        default="required",
    )
    allow_spiffe_ids: Allowlist = key(
        ALLOWLIST,
        "Who may connect. With `mtls: required` it is required and must not be empty (an "
        "empty list would admit nobody). With `mtls: off` it must be absent or empty (there "
        "are no peer IDs; a list would be silently ignored). Entries may name federated trust "
        'domains. Example: `["spiffe://example.org/ns/agents/sa/*"]`.',
        default_factory=Allowlist,
        shown="**required** with `mtls: required`",
    )
    jwt_svid: JwtSvidConfig | None = key(
        section_value(JWT_SVID, _jwt_svid),
        "Require a JWT-SVID on every request, see [`inbound.jwt_svid`](#inboundjwt_svid) and "
        "[Token layer](#token-layer).",
        default=None,
        shown=_ABSENT,
    )
    oauth: OAuthConfig | None = key(
        section_value(OAUTH, _oauth),
        "Act as an OAuth 2.1 resource server (MCP authorization), see "
        "[`inbound.oauth`](#inboundoauth) and [Token layer](#token-layer).",
        default=None,
        shown=_ABSENT,
    )
    allowed_origins: tuple[str, ...] = key(
        ORIGINS,
        "If not empty, a request carrying an `Origin` header not in this list is refused with "
        "403 (DNS-rebinding protection for browser clients), and `OPTIONS` requests (CORS "
        "preflight) are accepted, see [methods](#methods). Entries are `scheme://host[:port]` "
        "without a path, e.g. `https://app.example.com`; scheme and host are lowercased and a "
        "default port (`:443`, `:80`) dropped. Empty = no Origin check.",
        default=(),
    )
    forward_authorization: bool = key(
        BOOLEAN,
        "Pass the client's `Authorization` header to the MCP server. Off by default: a token "
        "addressed to this sidecar must not be replayed upstream. **Must be `false` when "
        "`jwt_svid` or `oauth` is configured** (MCP authorization forbids token passthrough).",
        default=False,
    )
    limits: Limits = key(
        LIMITS_VALUE,
        "Sizes and timeouts of this listener.",
        default_factory=Limits,
        shown=_SEE_LIMITS,
    )
    mcp_policy: McpPolicyConfig | None = key(
        _MCP_POLICY,
        "Per-tool MCP authorization: which caller may call which method, tool, resource or "
        "prompt, with which arguments. Inline (`default:` / `rules:`) or loaded from a file "
        "that is reloaded when it changes (`file:` / `reload_interval:`), see "
        "[`inbound.mcp_policy`](#inboundmcp_policy) and [MCP policy and rate "
        "limits](#mcp-policy-and-rate-limits).",
        default=None,
        shown="absent (every admitted call is forwarded)",
    )
    rate_limits: tuple[RateLimit, ...] = key(
        RATE_LIMITS,
        "Token-bucket limits per caller and per (caller, tool), see "
        "[`inbound.rate_limits[i]`](#inboundrate_limitsi) and [Rate limits](#rate-limits).",
        default=(),
        shown="`[]` (no limit)",
    )
    api_keys: ApiKeysConfig | None = key(
        section_value(API_KEYS, _api_keys),
        "Accept static API keys (hashed in a hot-reloaded file), see "
        "[`inbound.api_keys`](#inboundapi_keys) and [API keys](#api-keys). The simple option; "
        "OAuth is the recommended one.",
        default=None,
        shown=_ABSENT,
    )
    circuit_breakers: CircuitBreakers = key(
        CIRCUIT_BREAKERS_VALUE,
        "Connection and request limits towards the local MCP server, see [Circuit "
        "breaking](#circuit-breaking).",
        default_factory=CircuitBreakers,
        shown=_SEE_BREAKERS,
    )
    mux: MuxConfig | None = None
    """Edge-gateway mode: the MCP servers this listener multiplexes, instead of ``upstream``."""

    @property
    def resource_metadata_url(self) -> str | None:
        """The RFC 9728 metadata URL named in ``WWW-Authenticate: Bearer resource_metadata``;
        None without ``oauth``."""
        if self.oauth is None or self.public_url is None:
            return None
        return self.public_url + self.oauth.resource_metadata_path


INBOUND = Section(
    "inbound",
    (
        *keys_of(InboundConfig),
        _targets_key(
            "**Edge-gateway mode**: instead of `upstream`, the MCP servers this listener presents "
            "as one endpoint, each reached over mTLS with this sidecar's own SVID (see "
            "[`targets[i]`](#targetsi) and [Multiplexing](#multiplexing-several-mcp-servers)). "
            "Give `upstream` or `targets`, not both. `forward_authorization` must then be "
            "`false`."
        ),
        *MUX_OPTIONS,
    ),
)


def _inbound(value: object, path: str) -> InboundConfig:
    f = _read(INBOUND, value, path)
    f.get("listen")
    mux = _mux(f)
    upstream: str | None = None
    if "targets" not in f:
        upstream = f.get("upstream")
    elif "upstream" in f:
        f.error(
            "give either upstream (the local MCP server) or targets (the MCP servers an edge "
            "gateway multiplexes), not both",
            "upstream",
        )
    mtls: MtlsMode = f.get("mtls")
    allow: Allowlist = f.get("allow_spiffe_ids")
    f.get("jwt_svid", lambda v, p: _jwt_svid(v, p, mtls))
    oauth: OAuthConfig | None = f.get("oauth", lambda v, p: _oauth(v, p, mtls))
    forward_authorization = f.get("forward_authorization")
    mcp_policy: McpPolicyConfig | None = f.get("mcp_policy")
    values = f.values(InboundConfig, upstream=upstream, mux=mux)
    if "public_url" in f and "oauth" not in f:
        f.error(
            "only used with inbound.oauth (it builds the resource_metadata URL of the "
            "OAuth 401 answer); remove it or configure oauth",
            "public_url",
        )
    if forward_authorization and "targets" in f:
        f.error(
            "must be false with targets: an edge gateway authenticates to its targets with "
            "its own SPIFFE identity and never passes the client's token on",
            "forward_authorization",
        )
    elif forward_authorization and ("jwt_svid" in f or "oauth" in f or "api_keys" in f):
        f.error(
            "must be false with a token layer (jwt_svid, oauth or api_keys): the bearer "
            "token is addressed to this sidecar and must never be passed upstream (MCP "
            "authorization forbids token passthrough)",
            "forward_authorization",
        )
    if mtls == "off":
        allow_given = f.raw("allow_spiffe_ids")
        if "oauth" not in f and "api_keys" not in f:
            f.error(
                "'off' requires inbound.oauth or inbound.api_keys (an unauthenticated "
                "ingress is refused)",
                "mtls",
            )
        if allow_given is not None and allow_given != []:
            f.error(
                "must be empty or absent with mtls: 'off': without mTLS there is no peer "
                "SPIFFE ID to check, so the allowlist would be silently ignored",
                "allow_spiffe_ids",
            )
    elif "allow_spiffe_ids" not in f or (not f.bad("allow_spiffe_ids") and len(allow) == 0):
        f.error(
            ("empty" if "allow_spiffe_ids" in f else "required")
            + ": with mtls: required only peers whose SPIFFE ID matches one of these patterns "
            "may connect, so nobody could; list at least one, e.g. "
            "spiffe://example.org/ns/agents/sa/*",
            "allow_spiffe_ids",
        )
    if mux is not None and mcp_policy is not None:
        _check_rule_names(f, mux, mcp_policy.policy, f.at("mcp_policy"))
    if oauth is not None and "public_url" not in f:
        values["public_url"] = origin_of(oauth.audience)
    f.check()
    return InboundConfig(**values)


# ----------------------------------------------------------------------------- outbound


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenExchangeConfig:
    """``outbound.routes[i].token_exchange``: trade the user's token from the agent's request
    for one addressed to this route's server at an RFC 8693 security token service (STS)."""

    token_endpoint: str | None = key(
        TOKEN_ENDPOINT,
        "The STS's token endpoint, e.g. `https://sts.example.com/oauth2/token`. `https://` "
        "(`http://` only for a loopback host). Exactly one of `token_endpoint` and `issuer`.",
        default=None,
        shown="—",
    )
    issuer: str | None = key(
        ISSUER_URL,
        "The STS's issuer identifier: the token endpoint is discovered from its metadata "
        "(OIDC `/.well-known/openid-configuration`, then RFC 8414 "
        "`/.well-known/oauth-authorization-server`; the metadata's `issuer` must be this one "
        "exactly, and a discovered plain-`http` endpoint is refused unless on loopback). "
        "Discovered on the first exchange and again after a failed one.",
        default=None,
        shown="—",
    )
    ca_file: str | None = key(
        CA_FILE,
        "PEM file of the CA certificates that verify the STS's TLS certificate (hostname and "
        "chain are always checked). With it, only these CAs are trusted for the STS.",
        default=None,
        shown="the system's CAs",
    )
    client_auth: ClientAuth = key(
        choice("jwt_svid", "client_secret"),
        "How the sidecar authenticates to the STS. `jwt_svid`: its JWT-SVID (audience "
        "`sts_audience`) as `client_assertion` with "
        "`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` (RFC "
        "7523): no secret to distribute. `client_secret`: HTTP Basic (`client_secret_basic`) "
        "with `client_id` and the secret from `client_secret_file`.",
        default="jwt_svid",
    )
    client_id: str | None = key(
        non_empty_string("mcp-agent"),
        "The sidecar's client id at the STS. Required with `client_secret`; with `jwt_svid` "
        "sent as `client_id` if given (the JWT-SVID's `sub` identifies the client).",
        default=None,
    )
    client_secret_file: str | None = key(
        file_path("/var/run/secrets/sts/client-secret"),
        "`client_secret` only (required there): the file holding the client secret (a mounted "
        "Kubernetes Secret). Never inline. Read at the first exchange and again whenever the "
        "file changes (rotation without restart); an unreadable or empty file fails the "
        "exchange (502 `sts_client_secret_unavailable`).",
        default=None,
    )
    sts_audience: str = key(
        non_empty_string("https://sts.example.com"),
        "The audience of the JWT-SVID the sidecar fetches for the STS (used as "
        "`client_assertion` and `actor_token`).",
        shown="`issuer`, else `token_endpoint`",
    )
    subject_token_header: str = key(
        HEADER_NAME,
        "The request header in which the agent sends the user's token: `Authorization: Bearer "
        "<token>`, or any other header name holding the bare token (e.g. `X-User-Token`). It "
        "is **never forwarded**; `Authorization` upstream always carries the exchanged token. "
        "A request without it is answered `401` (`missing_subject_token`).",
        default="Authorization",
    )
    subject_token_type: str = key(
        SUBJECT_TOKEN_TYPE,
        "The RFC 8693 type of the user's token: `access_token`, `refresh_token`, `id_token`, "
        "`jwt`, `saml1`, `saml2` (short for `urn:ietf:params:oauth:token-type:…`) or another "
        "`urn:` URI.",
        default=TOKEN_TYPES["access_token"],
        shown="`access_token`",
    )
    actor_token: bool = key(
        BOOLEAN,
        "Send the sidecar's JWT-SVID as `actor_token` "
        "(`actor_token_type=urn:ietf:params:oauth:token-type:jwt`), so the STS names this "
        "workload in the new token's `act` claim (delegation). `false`: impersonation, the "
        "server cannot tell which agent acts.",
        default=True,
    )
    resource: str | None = key(
        RESOURCE_URL,
        "RFC 8707 resource indicator of the target server: its URL, which its sidecar has as "
        "`inbound.oauth.audience` (e.g. `https://math.example.com/mcp`). At least one of "
        "`resource` and `audience`.",
        default=None,
    )
    audience: str | None = key(
        non_empty_string("spiffe://example.org/ns/mcp/sa/x"),
        "RFC 8693 `audience` of the new token (a logical name of the server at the STS).",
        default=None,
    )
    scopes: tuple[str, ...] = key(
        SCOPES,
        "Scopes requested for the new token (`scope`, space-separated). Empty: the STS decides.",
        default=(),
    )
    timeout: float = key(
        TIMEOUT,
        "Bound on one STS request (discovery included). Exceeded: 502 `sts_unavailable`.",
        default=5.0,
    )
    refresh_before: float = key(
        DURATION,
        "An exchanged token is reused for the same user token, target and scopes until this "
        "long before it expires (at most half its lifetime earlier), then exchanged again.",
        default=30.0,
    )

    @property
    def target(self) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
        """What an exchanged token is for: the cache key next to the user's token hash."""
        return (self.token_endpoint or self.issuer, self.resource, self.audience, self.scopes)


TOKEN_EXCHANGE = Section("outbound.routes[].token_exchange", keys_of(TokenExchangeConfig))


def _token_exchange(value: object, path: str) -> TokenExchangeConfig:
    f = _read(TOKEN_EXCHANGE, value, path)
    token_endpoint = f.get("token_endpoint")
    issuer = f.get("issuer")
    client_auth: ClientAuth = f.get("client_auth")
    if ("token_endpoint" in f) == ("issuer" in f):
        f.error(
            "give exactly one of token_endpoint (the STS's token URL) and issuer (its token "
            "endpoint is then discovered from the issuer's metadata)"
        )
    if "resource" not in f and "audience" not in f:
        f.error(
            "give resource (the server's URL, RFC 8707: what its inbound.oauth.audience is) "
            "and/or audience: an exchanged token must be addressed to exactly this server"
        )
    if client_auth == "client_secret":
        for name in ("client_id", "client_secret_file"):
            if name not in f:
                f.error("required with client_auth: client_secret", name)
    elif "client_secret_file" in f:
        f.error(
            "only used with client_auth: client_secret (with jwt_svid the JWT-SVID "
            "authenticates this workload)",
            "client_secret_file",
        )
    sts_audience = f.get("sts_audience") or issuer or token_endpoint or ""
    return f.build(TokenExchangeConfig, sts_audience=sts_audience)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """One outbound route: requests matching (host, path_prefix) go to ``upstream`` over mTLS.
    ``upstream`` (normalised, explicit port) and ``server_spiffe_id`` are None for a
    multiplexing route, which has ``mux`` instead; ``sni`` is the ``sni`` key, else the
    upstream's host when it is a name."""

    name: str = key(
        ROUTE_NAME,
        "Unique, `[a-z0-9][a-z0-9_-]*` (at most 63 characters); used in metrics and logs.",
        required="a short unique name, e.g. math",
    )
    path_prefix: str = key(
        PATH_PREFIX,
        "Path prefix this route serves, starting with `/`, without a trailing `/` (except `/` "
        "itself), no `.`/`..` segments, `%`, `?` or `#`. `/math` matches `/math` and "
        "`/math/...`, not `/mathematics`. Overlapping prefixes are fine (longest wins), but "
        "two routes with the same `host` and `path_prefix` are an error.",
        default="/",
    )
    host: str | None = key(
        ROUTE_HOST,
        "Optional host this route is limited to: `math.local` or `math.local:15001` "
        "(lowercased; a port only if given). Compared case-insensitively with the request's "
        "`Host` header (or, in [proxy mode](#http-proxy-mode-outbound), the host of the "
        "requested URL); without a port it matches any port.",
        default=None,
    )
    upstream: str | None = key(
        SIDECAR_URL,
        "The server's inbound sidecar: `https://host[:port]` (default port 443), no path. "
        "Must be https: routes always originate mTLS. Normalised with an explicit port.",
        default=None,
        required="the server sidecar's URL, e.g. https://math.mcp.svc:8443, or targets: the MCP "
        "servers this route multiplexes",
        when="unless `targets`",
    )
    server_spiffe_id: SpiffeId | None = key(
        SERVER_SPIFFE_ID,
        "The exact SPIFFE ID the server must present (no wildcards, not a bare trust domain). "
        "May be in a federated trust domain; the server's chain is verified against that "
        "trust domain's bundle.",
        default=None,
        required="the exact SPIFFE ID the server must present, e.g. "
        "spiffe://example.org/ns/mcp/sa/math",
        when="unless `targets`",
    )
    strip_prefix: bool = key(
        BOOLEAN,
        "Remove `path_prefix` from the [normalised path](#paths) before forwarding: "
        "`/math/mcp` via prefix `/math` goes upstream as `/mcp`. With `false` it goes as "
        "`/math/mcp`.",
        default=True,
    )
    jwt_svid_audience: str | None = key(
        JWT_SVID_AUDIENCE,
        "Non-empty. Attach a JWT-SVID for this audience (normally the server's SPIFFE ID, "
        "i.e. what its `inbound.jwt_svid.audiences` lists) to every request of this route, "
        "see [outbound JWT-SVIDs](#outbound-jwt-svids).",
        default=None,
    )
    sni: str | None = key(
        SNI,
        "The TLS server name (SNI) sent when connecting to `upstream`, e.g. `math.mcp.svc` "
        "for a server-side gateway that picks its listener by SNI (Envoy "
        "`filter_chain_match.server_names`) while `upstream` is an IP or another name. A DNS "
        "name (lowercased), not an IP address, no port, no trailing dot. It only lets the "
        "server side choose a listener: the server is identified by `server_spiffe_id` alone "
        "— never by this name, which is not checked against its certificate.",
        default=None,
        shown="the `upstream` host when it is a name; none for an IP literal",
    )
    token_exchange: TokenExchangeConfig | None = key(
        section_value(TOKEN_EXCHANGE, _token_exchange),
        "Exchange the user's token from the agent's request at a security token service (RFC "
        "8693) for a token addressed to this server, sent upstream as `Authorization: "
        "Bearer`, see [`outbound.routes[i].token_exchange`](#outboundroutesitoken_exchange) "
        "and [Delegation](#delegation-token-exchange-on-behalf-of-a-user). Cannot be combined "
        "with `jwt_svid_audience`.",
        default=None,
    )
    circuit_breakers: CircuitBreakers = key(
        CIRCUIT_BREAKERS_VALUE,
        "This route's thresholds: the keys given here, the others from "
        "`outbound.circuit_breakers` (or the defaults), see "
        "[circuit_breakers](#circuit_breakers).",
        default_factory=CircuitBreakers,
        shown="`outbound.circuit_breakers`",
    )
    mux: MuxConfig | None = None
    """A multiplexing route: the MCP servers it presents as one, instead of ``upstream``."""


ROUTE = Section(
    "outbound.routes[]",
    (
        *keys_of(RouteConfig),
        _targets_key(
            "A **multiplexing route**: instead of `upstream` and `server_spiffe_id` (and "
            "`jwt_svid_audience`, which each target has its own), the MCP servers this route "
            "presents to the agent as one MCP server, see [`targets[i]`](#targetsi) and "
            "[Multiplexing](#multiplexing-several-mcp-servers)."
        ),
        *MUX_OPTIONS,
    ),
)


def _route(value: object, path: str, defaults: CircuitBreakers = CircuitBreakers()) -> RouteConfig:
    f = _read(ROUTE, value, path)
    f.get("name")
    mux = _mux(f)
    upstream: str | None = None
    server_spiffe_id: SpiffeId | None = None
    if "targets" not in f:
        upstream = f.get("upstream")
        server_spiffe_id = f.get("server_spiffe_id")
    else:
        for name, why in (
            ("upstream", "give either upstream (one server) or targets (several), not both"),
            ("server_spiffe_id", "with targets, each target has its own server_spiffe_id"),
            ("jwt_svid_audience", "with targets, each target has its own jwt_svid_audience"),
        ):
            if name in f:
                f.error(why, name)
    sni = f.get("sni")
    if "sni" in f and "targets" in f:
        f.error(
            "not used with targets: each target is reached by its own upstream's host name", "sni"
        )
    breakers = f.get(
        "circuit_breakers", lambda v, p: _circuit_breakers(v, p, defaults), default=defaults
    )
    if "token_exchange" in f and "jwt_svid_audience" in f:
        f.error(
            "cannot be combined with jwt_svid_audience: both would send the Authorization "
            "header upstream (the server's sidecar validates the exchanged token with "
            "inbound.oauth)",
            "token_exchange",
        )
    if "token_exchange" in f and "targets" in f:
        f.error(
            "not supported with targets: a token is exchanged for exactly one server "
            "(its resource/audience); give the route one upstream",
            "token_exchange",
        )
    return f.build(
        RouteConfig,
        upstream=upstream,
        server_spiffe_id=server_spiffe_id,
        mux=mux,
        sni=sni if sni is not None else default_sni(upstream) if upstream else None,
        circuit_breakers=breakers,
    )


def _routes(
    value: object, path: str, breakers: CircuitBreakers = CircuitBreakers()
) -> tuple[RouteConfig, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(path, f"expected a list of routes, got {got(value)}")
    if not value:
        raise ConfigError(path, "at least one route is required")
    problems: list[ConfigError] = []
    routes: list[RouteConfig] = []
    names: dict[str, int] = {}
    matches: dict[tuple[str | None, str], int] = {}
    for index, item in enumerate(value):
        item_path = f"{path}[{index}]"
        try:
            routes.append(_route(item, item_path, breakers))
        except ConfigErrors as exc:
            problems.extend(exc.problems)
        # Uniqueness is checked on the fields that are valid, even if others are not.
        raw: Mapping[object, object] = item if isinstance(item, Mapping) else {}
        name = valid_or_none(ROUTE_NAME.parse, raw.get("name"))
        if name is not None:
            if name in names:
                problems.append(
                    ConfigError(
                        f"{item_path}.name",
                        f"duplicate route name {name!r} (also routes[{names[name]}])",
                    )
                )
            names.setdefault(name, index)
        prefix = valid_or_none(PATH_PREFIX.parse, raw.get("path_prefix", "/"))
        host = valid_or_none(ROUTE_HOST.parse, raw.get("host"))
        if prefix is not None and (host is not None or raw.get("host") is None):
            if (host, prefix) in matches:
                on_host = f" and host {host!r}" if host else ""
                problems.append(
                    ConfigError(
                        f"{item_path}.path_prefix",
                        f"routes[{matches[host, prefix]}] already has path_prefix {prefix!r}"
                        f"{on_host}; which route serves a request would be ambiguous",
                    )
                )
            matches.setdefault((host, prefix), index)
    if problems:
        raise ConfigErrors(problems)
    return tuple(routes)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig:
    """The agent side: plain HTTP in on loopback, mTLS out to the routes' servers."""

    listen: ListenAddress = key(
        listen("127.0.0.1:15001"),
        "Where the agent's MCP client connects in plain HTTP, e.g. `127.0.0.1:15001`. **Must "
        "be a loopback address** (`127.0.0.0/8`, `[::1]`, `localhost`): whoever can connect "
        "here acts with this workload's SPIFFE identity.",
        required="a loopback address, e.g. 127.0.0.1:15001",
    )
    allow_non_loopback: bool = key(
        BOOLEAN,
        "Permit a non-loopback `listen`. Only for a network in front that is itself trusted "
        "(e.g. a pod-private bridge).",
        default=False,
    )
    allowed_origins: tuple[str, ...] = key(
        ORIGINS, "As for `inbound` (browser-based agents).", default=()
    )
    limits: Limits = key(
        LIMITS_VALUE,
        "Sizes and timeouts of this listener.",
        default_factory=Limits,
        shown=_SEE_LIMITS,
    )
    circuit_breakers: CircuitBreakers = key(
        CIRCUIT_BREAKERS_VALUE,
        "The circuit breakers of every route (each route counts on its own); a route's own "
        "`circuit_breakers` keys override these, see [Circuit breaking](#circuit-breaking).",
        default_factory=CircuitBreakers,
        shown=_SEE_BREAKERS,
    )
    routes: tuple[RouteConfig, ...] = key(
        section_value(ROUTE, _routes, many="list of routes"),
        "At least one. A request goes to the route whose `host` matches the request's host (a "
        "`host` with a port first, then one without, then routes without `host`), and among "
        "those to the one with the longest `path_prefix` matching the [normalised "
        "path](#paths). The request's host is its `Host` header or, when the agent uses the "
        "outbound as its [HTTP proxy](#http-proxy-mode-outbound), the host of the URL it asks "
        "for.",
        required="at least one route",
    )


OUTBOUND = Section("outbound", keys_of(OutboundConfig))


def _outbound(value: object, path: str) -> OutboundConfig:
    f = _read(OUTBOUND, value, path)
    address: ListenAddress | None = f.get("listen")
    allow_non_loopback = f.get("allow_non_loopback")
    breakers = f.get("circuit_breakers")
    f.get("routes", lambda v, p: _routes(v, p, breakers))
    if address is not None and not address.is_loopback and not allow_non_loopback:
        f.error(
            f"{address} is not a loopback address: the outbound side is plain HTTP and lends "
            "this workload's SPIFFE identity to whoever connects; listen on 127.0.0.1, [::1] "
            "or localhost, or set allow_non_loopback: true if the network in front is trusted",
            "listen",
        )
    return f.build(OutboundConfig)


# -------------------------------------------------------------------------- the rest


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """``/metrics``, ``/healthz``, ``/readyz``, ``/certs``, ``/config_dump``, ``/logging``."""

    listen: ListenAddress = key(
        listen("127.0.0.1:15000"),
        "The admin listener (endpoints below). Loopback by default: keep it there unless "
        "Prometheus must scrape the pod IP, and read the warning below first.",
        default_factory=lambda: ListenAddress("127.0.0.1", 15000),
    )


ADMIN = Section("admin", keys_of(AdminConfig))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: LogLevel = key(
        choice(*LOG_LEVELS, fold=str.lower),
        "Minimum level of the process log (case-insensitive). `run --log-level` overrides it "
        "at start; `POST /logging?level=` on the admin listener changes it while running.",
        default="info",
    )
    access_log: bool = key(
        BOOLEAN,
        "Log one JSON line per request (and the MCP audit lines) on stdout. Lines are written "
        "in batches, at most 50 ms after they were logged (or once 64 are waiting), like "
        "Envoy's file access log with its flush interval: one write per batch, not per line. "
        "A sidecar killed outright can lose that last batch; a normal stop writes it.",
        default=True,
    )
    format: LogFormat = key(
        choice("text", "json"),
        "The process log on stderr (start-up, reloads, warnings): `text` lines (`time LEVEL "
        'logger: message`) or one JSON object per line (`{"time", "kind": "log", "level", '
        '"logger", "message", "x_request_id", "trace_id", "span_id"}`, plus `exception` with '
        "a traceback), so one pipeline parses it together with the access and audit lines, "
        "which are JSON either way. See [observability.md](observability.md#logs).",
        default="text",
    )


LOG = Section("log", keys_of(LogConfig))


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    scheduler: Scheduler = key(
        choice("normal", "batch"),
        "Linux CPU scheduling policy of the sidecar's threads. `batch` (`SCHED_BATCH`, no "
        "privilege needed) tells the kernel the sidecar is throughput work: it is no longer "
        "preempted by every task that wakes up on its core, so it serves the requests it has "
        "already read before yielding; its CPU share over time is unchanged. Set at start-up, "
        "before any thread exists (all threads inherit it). On other platforms, or if the "
        "kernel refuses, the sidecar logs a warning and runs as `normal`. See "
        "`bench/RESULTS.md` for what it measured, with and without a CPU-busy application on "
        "the same core.",
        default="normal",
    )


PROCESS = Section("process", keys_of(ProcessConfig))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole, validated configuration."""

    trust_domain: str = key(
        TRUST_DOMAIN,
        "This workload's trust domain, bare (`example.org`, not `spiffe://example.org`). "
        "Peers and servers may belong to other (federated) trust domains.",
        required="the trust domain, e.g. example.org",
    )
    workload_api: str | None = key(
        WORKLOAD_API,
        "SPIFFE Workload API endpoint: `unix:///absolute/path` or `tcp://IP:PORT`. If absent, "
        "the environment variable is read at start-up.",
        default=None,
        shown="`$SPIFFE_ENDPOINT_SOCKET`",
    )
    admin: AdminConfig = key(
        section_value(ADMIN, lambda v, p: _read(ADMIN, v, p).build(AdminConfig)),
        "The admin listener.",
        default_factory=AdminConfig,
        shown=_SEE_BELOW,
    )
    inbound: InboundConfig | None = key(
        section_value(INBOUND, _inbound),
        "The MCP-server side (mTLS in — or, for an OAuth-only ingress, plain HTTP in — and "
        "plain HTTP to the local server).",
        default=None,
        shown=_ABSENT,
    )
    outbound: OutboundConfig | None = key(
        section_value(OUTBOUND, _outbound),
        "The agent side (plain HTTP in on loopback, mTLS out).",
        default=None,
        shown=_ABSENT,
    )
    log: LogConfig = key(
        section_value(LOG, lambda v, p: _read(LOG, v, p).build(LogConfig)),
        "Logging.",
        default_factory=LogConfig,
        shown=_SEE_BELOW,
    )
    drain_timeout: float = key(
        DURATION,
        "On SIGTERM, stop accepting connections and give in-flight requests this long to "
        "finish; open SSE streams are then closed. Idle connections and connections still in "
        "their TLS handshake are closed at once, so an idle sidecar stops immediately. `0` "
        "closes at once.",
        default=10.0,
    )
    """``shutdown.drain_timeout``."""
    process: ProcessConfig = key(
        section_value(PROCESS, lambda v, p: _read(PROCESS, v, p).build(ProcessConfig)),
        "Process-wide settings (CPU scheduling).",
        default_factory=ProcessConfig,
        shown=_SEE_BELOW,
    )
    tracing: TracingConfig = key(
        TRACING,
        "OpenTelemetry traces, see [`tracing`](#tracing).",
        default_factory=TracingConfig,
        shown="off unless `OTEL_*` asks for traces",
    )

    def summary(self) -> list[str]:
        """A few human-readable lines: listeners, routes, allowlist size, token layers."""
        lines = [
            f"trust domain: {self.trust_domain}",
            "workload API: " + (self.workload_api or "$SPIFFE_ENDPOINT_SOCKET (read at start-up)"),
            f"admin: {self.admin.listen}",
        ]
        if self.inbound is not None:
            inbound = self.inbound
            count = len(inbound.allow_spiffe_ids)
            peers = (
                f"mTLS required; {count} allowed SPIFFE ID pattern{'' if count == 1 else 's'}"
                if inbound.mtls == "required"
                else "mTLS off (plain HTTP, no peer identity)"
            )
            lines.append(
                f"inbound: {inbound.listen} -> "
                f"{inbound.upstream or 'edge gateway, ' + _mux_summary(inbound.mux)}; {peers}; "
                f"origins: {', '.join(inbound.allowed_origins) or 'not checked'}"
            )
            lines.extend(_token_summary(inbound))
            if inbound.mux is not None:
                lines.extend(_targets_summary(inbound.mux))
        if self.outbound is not None:
            outbound = self.outbound
            count = len(outbound.routes)
            lines.append(
                f"outbound: {outbound.listen}; {count} route{'' if count == 1 else 's'}; "
                f"origins: {', '.join(outbound.allowed_origins) or 'not checked'}"
            )
            for route in outbound.routes:
                where = f"{route.host}{route.path_prefix}" if route.host else route.path_prefix
                token = (
                    f"; sends a JWT-SVID for {route.jwt_svid_audience}"
                    if route.jwt_svid_audience is not None
                    else ""
                )
                if route.mux is not None:
                    lines.append(f"  route {route.name}: {where} -> {_mux_summary(route.mux)}")
                    lines.extend(_targets_summary(route.mux, indent="    "))
                    continue
                exchange = route.token_exchange
                if exchange is not None:
                    sts = exchange.token_endpoint or f"{exchange.issuer} (discovered)"
                    token = (
                        f"; exchanges the user's token ({exchange.subject_token_header}) at "
                        f"{sts} for {exchange.resource or exchange.audience}"
                    )
                lines.append(
                    f"  route {route.name}: {where} -> {route.upstream} "
                    f"(server {route.server_spiffe_id}){token}"
                )
        return lines


SHUTDOWN = Section("shutdown", keys_of(Config, "drain_timeout"))


def _shutdown(value: object, path: str) -> float:
    f = _read(SHUTDOWN, value, path)
    drain_timeout: float = f.get("drain_timeout")
    f.check()
    return drain_timeout


TOP = Section(
    "",
    (
        *keys_of(Config, "trust_domain", "workload_api", "admin", "inbound", "outbound", "log"),
        Key(
            name="shutdown",
            value=section_value(SHUTDOWN, _shutdown),
            doc="Graceful shutdown.",
            shown=_SEE_BELOW,
        ),
        *keys_of(Config, "process", "tracing"),
    ),
)
"""The top level of the configuration."""

PLACES: Mapping[str, Section] = {
    "": TOP,
    "admin": ADMIN,
    "inbound": INBOUND,
    "inbound.mcp_policy.file": POLICY_FILE,
    "inbound.api_keys": API_KEYS,
    "inbound.jwt_svid": JWT_SVID,
    "inbound.oauth": OAUTH,
    "inbound.limits": LIMITS,
    "inbound.circuit_breakers": CIRCUIT_BREAKERS,
    "outbound": OUTBOUND,
    "outbound.limits": LIMITS,
    "outbound.circuit_breakers": CIRCUIT_BREAKERS,
    "outbound.routes[].circuit_breakers": CIRCUIT_BREAKERS,
    "outbound.routes[]": ROUTE,
    "outbound.routes[].token_exchange": TOKEN_EXCHANGE,
    "targets[]": TARGET,
    "log": LOG,
    "shutdown": SHUTDOWN,
    "process": PROCESS,
}
"""Where each section of this module sits in a configuration file (``""`` is the top level;
list items ``[]``; a section at several places is one ``Section``). The sections of the MCP
policy, the rate limits and ``tracing`` are their modules' own (parsed there, with messages of
their own): reachable from ``TOP`` for the docs and the JSON Schema, not listed here."""

SCHEMA: Mapping[str, tuple[str, ...]] = Schema(PLACES).names()
"""Every key this version understands, by section (``""`` is the top level; list items ``[]``)."""


def _mux_summary(mux: MuxConfig | None) -> str:
    if mux is None:  # pragma: no cover - an inbound has upstream or targets
        return "nothing"
    count = len(mux.targets)
    return f"{count} target{'' if count == 1 else 's'} multiplexed (prefix_mode {mux.prefix_mode})"


def _targets_summary(mux: MuxConfig, indent: str = "  ") -> list[str]:
    lines: list[str] = []
    for target in mux.targets:
        token = (
            f"; sends a JWT-SVID for {target.jwt_svid_audience}"
            if target.jwt_svid_audience is not None
            else ""
        )
        lines.append(
            f"{indent}target {target.name}: {target.upstream}{target.path or ''} "
            f"(server {target.server_spiffe_id}){token}"
        )
    return lines


def _token_summary(inbound: InboundConfig) -> list[str]:
    if inbound.jwt_svid is None and inbound.oauth is None:
        return ["  token layer: none (the mTLS peer identity alone admits)"]
    lines: list[str] = []
    if inbound.jwt_svid is not None:
        jwt = inbound.jwt_svid
        lines.append(
            f"  token layer: JWT-SVID, audience {' or '.join(jwt.audiences)}"
            + ("; sub must be the mTLS peer" if jwt.bind_to_peer else "")
            + _algorithms_summary(jwt.algorithms)
        )
    if inbound.oauth is not None:
        oauth = inbound.oauth
        if oauth.jwks_uri is not None:
            keys = f"keys from {oauth.jwks_uri}"
        elif oauth.jwks is not None:
            count = len(json.loads(oauth.jwks)["keys"])
            keys = f"{count} inline key{'' if count == 1 else 's'}"
        else:
            keys = "keys by discovery"
        scopes = " ".join(oauth.required_scopes) or "none"
        lines.append(
            f"  token layer: OAuth, issuer {oauth.issuer} ({keys}), audience {oauth.audience}; "
            f"required scopes: {scopes}"
            + ("; cnf bound to the client certificate" if oauth.require_cnf else "")
            + _algorithms_summary(oauth.algorithms)
        )
        lines.append(f"  resource metadata: {inbound.resource_metadata_url}")
    return lines


def _algorithms_summary(algorithms: tuple[str, ...]) -> str:
    return "" if algorithms == JWT_ALGORITHMS else f"; algorithms {', '.join(algorithms)}"


# -------------------------------------------------------------------------------- entry


def _check_listeners(f: Fields, listeners: list[tuple[str, ListenAddress | None]]) -> None:
    seen: list[tuple[str, ListenAddress]] = []
    for path, address in listeners:
        if address is None:
            continue
        for other_path, other in seen:
            if address.port == other.port != 0 and (
                address.host == other.host or address.is_wildcard or other.is_wildcard
            ):
                f.problems.add(path, f"{address} conflicts with {other_path} ({other})")
        seen.append((path, address))


def parse_config(data: object) -> Config:
    """Validate already-loaded data (e.g. ``yaml.safe_load`` output) into a ``Config``.

    Raises ``ConfigErrors`` listing every problem found; never any other exception.
    """
    if data is None:
        raise ConfigErrors(
            [
                ConfigError(
                    ROOT,
                    "the configuration is empty; expected a mapping with trust_domain and "
                    "inbound and/or outbound",
                )
            ]
        )
    f = _read(TOP, data, "")
    admin: AdminConfig = f.get("admin")
    inbound: InboundConfig | None = f.get("inbound")
    outbound: OutboundConfig | None = f.get("outbound")
    given = {"drain_timeout": f.get("shutdown")} if "shutdown" in f else {}
    values = f.values(Config, **given)
    if "inbound" not in f and "outbound" not in f:
        f.error(
            "at least one of 'inbound' (MCP server side) or 'outbound' (agent side) is required"
        )
    _check_listeners(
        f,
        [
            ("admin.listen", admin.listen),
            ("inbound.listen", inbound.listen if inbound else None),
            ("outbound.listen", outbound.listen if outbound else None),
        ],
    )
    f.check()
    return Config(**values)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file. Unreadable files and YAML syntax errors are
    ``ConfigErrors`` too (path = the file name); other problems carry their line number."""
    return strict_yaml.parse_file(path, lambda data, _source: parse_config(data), root="")


def load_config_text(text: str | bytes, *, source: str = "<config>") -> Config:
    """Like ``load_config`` for YAML already in memory; ``source`` names it in errors."""
    return strict_yaml.parse_document(text, parse_config, source=source)
