"""The sidecar's YAML configuration, parsed once into frozen dataclasses.

Validation collects **every** problem instead of stopping at the first, and names each one by its
key path (``inbound.allow_spiffe_ids[2]``, ``outbound.routes[0].upstream``) with what is wrong and
what was expected. A security configuration must never be ambiguous or partly ignored, so:

* unknown keys are errors (with a "did you mean" suggestion), and so are duplicate YAML keys;
* keys of features this version does not implement yet (``UNSUPPORTED_KEYS``) are errors, because
  an ignored policy would be a silent allow;
* scalars are typed strictly: a boolean is ``true``/``false`` (``yes``/``no``/``on``/``off`` are
  plain strings here, as in YAML 1.2), a number is never a string and a string never a number.

Pure: no I/O apart from reading the file in ``load_config``; never imports aiohttp. Every key is
documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import ssl
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sidecar.errors import ConfigError, SidecarError
from sidecar.identity.endpoint import grpc_target
from sidecar.mcp.mux.names import (
    PREFIX_MODES,
    Naming,
    PrefixMode,
    pattern_problem,
    target_name_problem,
)
from sidecar.mcp.policy import Policy, load_policy_file, parse_policy
from sidecar.mcp.ratelimit import RateLimit, parse_rate_limits
from sidecar.schema import got as _got
from sidecar.schema import join as _join
from sidecar.schema import parse_each
from sidecar.schema import short as _short
from sidecar.spiffe.ids import SCHEME_PREFIX, SpiffeId, SpiffeIdError, validate_trust_domain
from sidecar.spiffe.match import Allowlist, PatternError, SpiffeIdPattern
from sidecar.tokens.apikeys import ApiKeys, load_api_key_file
from sidecar.tokens.exchange import TOKEN_TYPES
from sidecar.tokens.jose import ALLOWED_ALGORITHMS
from sidecar.tracing.config import TracingConfig, parse_tracing

__all__ = [
    "JWT_ALGORITHMS",
    "ROOT",
    "SCHEMA",
    "UNSUPPORTED_KEYS",
    "AdminConfig",
    "ApiKeysConfig",
    "CircuitBreakers",
    "Config",
    "ConfigErrors",
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
    "TargetConfig",
    "TokenExchangeConfig",
    "load_config",
    "load_config_text",
    "parse_config",
    "parse_duration",
    "parse_size",
    "problem_detail",
]

ROOT = "<root>"
"""The path of problems that concern the document as a whole."""

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MAX_DURATION = 24 * 3600.0
"""Upper bound for every duration (seconds): anything longer is a typo, not a timeout."""
MAX_SIZE = 1024 * GIB
"""Upper bound for ``parse_size`` itself; each size key has its own, smaller, range."""

LIMIT_KEYS = (
    "max_request_body",
    "max_header_size",
    "header_timeout",
    "keepalive_timeout",
    "connect_timeout",
    "idle_timeout",
    "total_timeout",
    "sse_heartbeat",
)
CIRCUIT_BREAKER_KEYS = ("max_connections", "max_pending_requests", "max_requests")
MAX_CIRCUIT_BREAKER = 1_000_000
"""Upper bound of every circuit-breaker threshold (more would exhaust file descriptors first)."""
ROUTE_SCHEMA = "outbound.routes[]"
EXCHANGE_SCHEMA = "outbound.routes[].token_exchange"
TARGET_SCHEMA = "targets[]"
MUX_KEYS = ("targets", "prefix_mode", "session_idle", "max_sessions", "target_wait")
"""The keys of a multiplexing route (and of an edge gateway's inbound), besides ``targets``
only meaningful with it."""

JWT_ALGORITHMS: tuple[str, ...] = ALLOWED_ALGORITHMS
"""The JWS algorithms a token may be signed with: the token layer's own list (asymmetric only,
never ``none`` or HS*), so config and validators cannot disagree."""
MAX_LEEWAY = 300.0
"""Upper bound of ``leeway`` (seconds): clock skew beyond 5 minutes is a broken clock."""
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
"""RFC 9728 protected resource metadata; the resource's path is appended (section 3.1)."""

SCHEMA: Mapping[str, tuple[str, ...]] = {
    "": (
        "trust_domain",
        "workload_api",
        "admin",
        "inbound",
        "outbound",
        "log",
        "shutdown",
        "process",
        "tracing",
    ),
    "admin": ("listen",),
    "inbound": (
        "listen",
        "upstream",
        "public_url",
        "mtls",
        "allow_spiffe_ids",
        "jwt_svid",
        "oauth",
        "allowed_origins",
        "forward_authorization",
        "limits",
        "mcp_policy",
        "rate_limits",
        "api_keys",
        "circuit_breakers",
        *MUX_KEYS,
    ),
    "inbound.mcp_policy.file": ("file", "reload_interval"),
    "inbound.api_keys": ("file", "header", "reload_interval"),
    "inbound.jwt_svid": ("audiences", "bind_to_peer", "leeway", "algorithms"),
    "inbound.oauth": (
        "issuer",
        "audience",
        "jwks_uri",
        "jwks",
        "discovery",
        "required_scopes",
        "scopes_supported",
        "authorization_servers",
        "typ",
        "leeway",
        "algorithms",
        "jwks_cache_ttl",
        "jwks_refresh_interval",
        "require_cnf",
        "bind_actor_to_peer",
        "roles_claim",
        "groups_claim",
    ),
    "inbound.limits": LIMIT_KEYS,
    "inbound.circuit_breakers": CIRCUIT_BREAKER_KEYS,
    "outbound": (
        "listen",
        "allow_non_loopback",
        "allowed_origins",
        "limits",
        "routes",
        "circuit_breakers",
    ),
    "outbound.limits": LIMIT_KEYS,
    "outbound.circuit_breakers": CIRCUIT_BREAKER_KEYS,
    f"{ROUTE_SCHEMA}.circuit_breakers": CIRCUIT_BREAKER_KEYS,
    ROUTE_SCHEMA: (
        "name",
        "path_prefix",
        "host",
        "upstream",
        "server_spiffe_id",
        "strip_prefix",
        "jwt_svid_audience",
        "token_exchange",
        "sni",
        "circuit_breakers",
        *MUX_KEYS,
    ),
    EXCHANGE_SCHEMA: (
        "token_endpoint",
        "issuer",
        "ca_file",
        "client_auth",
        "client_id",
        "client_secret_file",
        "sts_audience",
        "subject_token_header",
        "subject_token_type",
        "actor_token",
        "resource",
        "audience",
        "scopes",
        "timeout",
        "refresh_before",
    ),
    TARGET_SCHEMA: ("name", "upstream", "server_spiffe_id", "path", "jwt_svid_audience"),
    "log": ("level", "access_log", "format"),
    "shutdown": ("drain_timeout",),
    "process": ("scheduler",),
}
"""Every key this version understands, by section (``""`` is the top level; list items ``[]``)."""

UNSUPPORTED_KEYS: Mapping[str, str] = {}
"""Keys of features that are designed but not built yet -> what they would do. Using one is an
error, never silently ignored (an ignored security policy is a silent allow). Remove a key from
here, and add it to ``SCHEMA``, when its feature lands."""

MtlsMode = Literal["required", "off"]
LogLevel = Literal["debug", "info", "warning", "error"]
Scheduler = Literal["normal", "batch"]
SCHEDULERS: tuple[Scheduler, ...] = ("normal", "batch")
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
MTLS_MODES: tuple[MtlsMode, ...] = ("required", "off")
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")

_T = TypeVar("_T")
_Parse = Callable[[object, str], _T]


# ----------------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP address to listen on. ``host`` is an IP literal (IPv6 without brackets) or a
    lowercase host name; port 0 asks the OS for a free port (tests)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, path: str = "listen") -> ListenAddress:
        """Parse ``127.0.0.1:15001``, ``0.0.0.0:8443``, ``[::1]:8443`` or ``localhost:8080``."""
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise _not_listen(path, text, "expected [IPv6]:port")
            host_text, port_text = text[1:end], text[end + 2 :]
            try:
                host = str(ipaddress.IPv6Address(host_text))
            except ValueError:
                raise _not_listen(path, text, "brackets must hold an IPv6 address") from None
        else:
            host_text, colon, port_text = text.rpartition(":")
            if not colon:
                raise _not_listen(path, text, "no ':port'")
            if ":" in host_text:
                raise _not_listen(path, text, "write an IPv6 address in brackets, e.g. [::1]:8443")
            if not host_text:
                raise _not_listen(path, text, "the host is empty (use 0.0.0.0 for all interfaces)")
            try:
                host = _host(host_text)
            except ValueError as exc:
                raise _not_listen(path, text, str(exc)) from None
        if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or int(port_text) > 65535:
            raise _not_listen(path, text, "the port must be a number from 0 to 65535")
        return cls(host, int(port_text))

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and ``localhost``: reachable from this pod/host only."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def is_wildcard(self) -> bool:
        """True for 0.0.0.0 and ``::`` (all interfaces)."""
        return self.host in ("0.0.0.0", "::")  # noqa: S104 -- a comparison, not a bind

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _not_listen(path: str, text: str, why: str) -> ConfigError:
    return ConfigError(path, f"not a host:port address: {why} (got {_short(text)})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Sizes (bytes) and timeouts (seconds) of one listener; see docs/configuration.md#timeouts."""

    max_request_body: int = 4 * MIB
    """Largest request body accepted; a bigger one is answered 413."""
    max_header_size: int = 16 * KIB
    """Largest request line or single header line."""
    header_timeout: float = 10.0
    """The whole request head must arrive within this (slowloris)."""
    keepalive_timeout: float = 75.0
    """How long an idle downstream connection is kept open between requests."""
    connect_timeout: float = 5.0
    """Upstream TCP (+TLS) connect; 504 on timeout, 502 on refusal."""
    idle_timeout: float = 60.0
    """Longest silence from upstream while waiting for the response head or inside a non-SSE
    body; 504 (or the stream is cut) when exceeded."""
    total_timeout: float = 300.0
    """Whole exchange for non-SSE responses; 504. SSE streams are exempt."""
    sse_heartbeat: float = 15.0
    """Interval of the SSE comment line sent downstream while upstream is quiet; 0 = off."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakers:
    """Envoy's cluster circuit breakers for one upstream (an outbound route, the inbound's
    local server): past a threshold a request is answered 503 ``upstream_overflow`` at once
    instead of piling onto a saturated upstream. Defaults are Envoy's."""

    max_connections: int = 1024
    """Connections open to the upstream at once (busy, idle or being opened); each SSE stream
    holds one for its whole life."""
    max_pending_requests: int = 1024
    """Requests waiting for a connection while ``max_connections`` are busy; each waits at
    most ``connect_timeout``. 0: no waiting, overflow at once."""
    max_requests: int = 1024
    """Requests in flight to the upstream at once, waiting ones included (until the answer's
    last byte: an SSE stream counts for its whole life)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JwtSvidConfig:
    """``inbound.jwt_svid``: every request must carry a JWT-SVID (``Authorization: Bearer``)."""

    audiences: tuple[str, ...]
    """The token's ``aud`` must contain at least one of these (usually our own SPIFFE ID)."""
    bind_to_peer: bool
    """The token's ``sub`` must equal the mTLS peer's SPIFFE ID (parser default: true with
    ``mtls: required``; never true with ``mtls: off``, where there is no peer)."""
    leeway: float = 30.0
    """Clock skew tolerated on ``exp`` / ``nbf`` / ``iat`` (seconds, 0..300)."""
    algorithms: tuple[str, ...] = JWT_ALGORITHMS
    """Accepted JWS ``alg`` values: a non-empty subset of ``JWT_ALGORITHMS``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthConfig:
    """``inbound.oauth``: OAuth 2.1 resource server (MCP authorization) for JWT access tokens."""

    issuer: str
    """The authorization server's issuer identifier, exactly as configured: ``iss`` must match
    it byte for byte (no normalisation, a trailing slash matters)."""
    audience: str
    """This MCP server's RFC 8707 resource URL (``https://mcp.example.com/mcp``), exactly as
    configured: ``aud`` must contain it; it is also the metadata's ``resource``."""
    jwks_uri: str | None = None
    """Where the signing keys are fetched (exact URL), or None."""
    jwks: str | None = None
    """An inline JWKS as canonical JSON text (``json.dumps(..., sort_keys=True)``), or None."""
    discovery: bool
    """Find ``jwks_uri`` in the issuer's metadata (parser default: true when neither
    ``jwks_uri`` nor ``jwks`` is given). Exactly one key source is set."""
    required_scopes: tuple[str, ...] = ()
    """Every one must be in the token's ``scope``; otherwise 403 insufficient_scope."""
    scopes_supported: tuple[str, ...] = ()
    """Advertised in the RFC 9728 metadata (parser default: ``required_scopes``)."""
    authorization_servers: tuple[str, ...] = ()
    """Advertised in the RFC 9728 metadata (parser default: ``(issuer,)``)."""
    typ: str | None = None
    """If set, the JWT ``typ`` header required (e.g. ``at+jwt``, RFC 9068)."""
    leeway: float = 30.0
    """Clock skew tolerated on ``exp`` / ``nbf`` / ``iat`` (seconds, 0..300)."""
    algorithms: tuple[str, ...] = JWT_ALGORITHMS
    """Accepted JWS ``alg`` values: a non-empty subset of ``JWT_ALGORITHMS``."""
    jwks_cache_ttl: float = 300.0
    """How long fetched keys are used before they are fetched again (seconds, > 0)."""
    jwks_refresh_interval: float = 30.0
    """Minimum time between two refreshes triggered by an unknown ``kid`` (seconds, > 0)."""
    require_cnf: bool = False
    """RFC 8705: the token's ``cnf.x5t#S256`` must match the mTLS client certificate."""
    bind_actor_to_peer: bool = False
    """A delegated token's current actor (RFC 8693 ``act.sub``) must be the mTLS peer's SPIFFE
    ID (parser default: true with ``mtls: required``; never true with ``mtls: off``)."""
    roles_claim: str = "roles"
    """Claim read as the caller's roles."""
    groups_claim: str = "groups"
    """Claim read as the caller's groups."""

    @property
    def resource_metadata_path(self) -> str:
        """RFC 9728 section 3.1: ``/.well-known/oauth-protected-resource`` followed by the path
        of ``audience`` (``https://mcp.example.com/mcp`` ->
        ``/.well-known/oauth-protected-resource/mcp``; a bare ``/`` adds nothing)."""
        path = urlsplit(self.audience).path
        return RESOURCE_METADATA_PATH + ("" if path in ("", "/") else path)


@dataclass(frozen=True, slots=True, kw_only=True)
class McpPolicyConfig:
    """``inbound.mcp_policy``: the policy inline, or loaded from ``file`` (a mounted ConfigMap)
    and reloaded when the file changes (polled every ``reload_interval``)."""

    policy: Policy
    file: str | None = None
    reload_interval: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeysConfig:
    """``inbound.api_keys``: static keys, stored as salted hashes in ``file`` (a mounted
    Secret), reloaded when it changes (polled every ``reload_interval``)."""

    keys: ApiKeys = field(compare=False)
    """The key set read at start-up (and by ``check-config``)."""
    file: str
    header: str = "Authorization"
    reload_interval: float = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetConfig:
    """One MCP server behind a multiplexing endpoint, reached over mTLS."""

    name: str
    """Unique within its endpoint; prefixes the target's names (``math__add``)."""
    upstream: str
    """``https://host:port`` of the server's inbound sidecar, normalised (explicit port)."""
    server_spiffe_id: SpiffeId
    """The exact SPIFFE ID the server must present."""
    path: str | None = None
    """The server's MCP endpoint path; None = the path of the client's request (after
    ``strip_prefix``)."""
    jwt_svid_audience: str | None = None
    """If set, a JWT-SVID for this audience is sent to this target as ``Authorization``."""
    sni: str | None = None
    """The TLS server name sent to this target: its upstream's host when it is a name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MuxConfig:
    """A multiplexing endpoint: several MCP servers presented as one (``sidecar.mcp.mux``)."""

    targets: tuple[TargetConfig, ...]
    prefix_mode: PrefixMode = "multiple"
    """When tool and prompt names carry their target (``sidecar.mcp.mux.names``)."""
    session_idle: float = 1800.0
    """A client session unused this long is ended (its targets' sessions are deleted)."""
    max_sessions: int = 1000
    """Most client sessions kept; beyond it the least recently used one is ended."""
    target_wait: float = 10.0
    """How long a fan-out (initialize, lists) waits for one target before answering without
    it (the target counts as unavailable for that answer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InboundConfig:
    """The MCP server side: mTLS (or, OAuth-only, plain HTTP) in, plain HTTP to the server."""

    listen: ListenAddress
    upstream: str | None
    """``http://host:port`` of the MCP server, normalised (lowercase host, explicit port);
    None for an edge gateway (``mux``)."""
    mux: MuxConfig | None = None
    """Edge-gateway mode: the MCP servers this listener multiplexes, instead of ``upstream``."""
    mtls: MtlsMode = "required"
    """``off`` only together with ``oauth``: the listener then speaks plain HTTP."""
    allow_spiffe_ids: Allowlist = field(default_factory=Allowlist)
    """Non-empty with ``mtls: required``; empty with ``mtls: off``."""
    allowed_origins: tuple[str, ...] = ()
    """Normalised origins (``https://app.example.com``); empty = no Origin check."""
    forward_authorization: bool = False
    """Never true when a token layer (``jwt_svid`` / ``oauth``) is configured."""
    limits: Limits = field(default_factory=Limits)
    jwt_svid: JwtSvidConfig | None = None
    oauth: OAuthConfig | None = None
    mcp_policy: McpPolicyConfig | None = None
    rate_limits: tuple[RateLimit, ...] = ()
    api_keys: ApiKeysConfig | None = None
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    """Of the pool to the local MCP server."""
    public_url: str | None = None
    """The listener's externally visible origin (``https://mcp.example.com``), normalised like
    ``allowed_origins``; set (by default to the origin of ``oauth.audience``) iff ``oauth``
    is."""

    @property
    def resource_metadata_url(self) -> str | None:
        """The RFC 9728 metadata URL named in ``WWW-Authenticate: Bearer resource_metadata``;
        None without ``oauth``."""
        if self.oauth is None or self.public_url is None:
            return None
        return self.public_url + self.oauth.resource_metadata_path


ClientAuth = Literal["jwt_svid", "client_secret"]
CLIENT_AUTH_METHODS: tuple[ClientAuth, ...] = ("jwt_svid", "client_secret")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenExchangeConfig:
    """``outbound.routes[i].token_exchange``: trade the user's token from the agent's request
    for one addressed to this route's server at an RFC 8693 security token service (STS)."""

    token_endpoint: str | None = None
    """The STS's token endpoint; exactly one of it and ``issuer`` is set."""
    issuer: str | None = None
    """The STS's issuer: the token endpoint is discovered from its metadata (RFC 8414 / OIDC)."""
    ca_file: str | None = None
    """PEM file of the CAs that verify the STS's certificate; None = the system's CAs."""
    client_auth: ClientAuth = "jwt_svid"
    """``jwt_svid``: our JWT-SVID as RFC 7523 ``client_assertion``; ``client_secret``: HTTP
    Basic with ``client_id`` and the secret read from ``client_secret_file``."""
    client_id: str | None = None
    client_secret_file: str | None = None
    sts_audience: str
    """Audience of the JWT-SVID sent to the STS (parser default: ``issuer``, else
    ``token_endpoint``)."""
    subject_token_header: str = "Authorization"  # noqa: S105 (a header name)
    """Where the agent puts the user's token (``Bearer`` in Authorization; bare elsewhere)."""
    subject_token_type: str = TOKEN_TYPES["access_token"]
    actor_token: bool = True
    """Send our JWT-SVID as ``actor_token``: the STS names us in the new token's ``act``."""
    resource: str | None = None
    """RFC 8707 resource: the server's URL, what its ``inbound.oauth.audience`` is."""
    audience: str | None = None
    """RFC 8693 ``audience``; at least one of ``resource`` and ``audience`` is set."""
    scopes: tuple[str, ...] = ()
    timeout: float = 5.0
    refresh_before: float = 30.0
    """An exchanged token is reused until this long before it expires."""

    @property
    def target(self) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
        """What an exchanged token is for: the cache key next to the user's token hash."""
        return (self.token_endpoint or self.issuer, self.resource, self.audience, self.scopes)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteConfig:
    """One outbound route: requests matching (host, path_prefix) go to ``upstream`` over mTLS."""

    name: str
    upstream: str | None = None
    """``https://host:port`` of the server's inbound sidecar, normalised (explicit port); None
    for a multiplexing route (``mux``)."""
    server_spiffe_id: SpiffeId | None = None
    """The exact SPIFFE ID the server must present (may be in a federated trust domain); None
    for a multiplexing route."""
    mux: MuxConfig | None = None
    """A multiplexing route: the MCP servers it presents as one, instead of ``upstream``."""
    path_prefix: str = "/"
    host: str | None = None
    """Optional Host header to match: lowercase, with ``:port`` only if configured with one."""
    strip_prefix: bool = True
    """``/math/mcp`` via prefix ``/math`` goes upstream as ``/mcp``."""
    jwt_svid_audience: str | None = None
    """If set, a JWT-SVID for this audience (from the Workload API) is sent upstream as
    ``Authorization: Bearer``, replacing any Authorization header from the agent."""
    token_exchange: TokenExchangeConfig | None = None
    """If set, the user's token from the agent's request is exchanged (RFC 8693) and the
    result sent upstream as ``Authorization: Bearer``; excludes ``jwt_svid_audience``."""
    sni: str | None = None
    """The TLS server name sent to the upstream: the ``sni`` key, else the upstream URL's host
    when it is a name; ``None`` (no SNI) for an IP literal. Routing help for the server side
    only: the server is still identified by ``server_spiffe_id``, never by this name."""
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    """This route's own thresholds and counters (``outbound.circuit_breakers``, with the
    route's keys over them)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundConfig:
    """The agent side: plain HTTP in on loopback, mTLS out to the routes' servers."""

    listen: ListenAddress
    routes: tuple[RouteConfig, ...]
    allow_non_loopback: bool = False
    allowed_origins: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    circuit_breakers: CircuitBreakers = field(default_factory=CircuitBreakers)
    """The defaults of every route (each route still counts on its own)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """``/metrics``, ``/healthz``, ``/readyz``."""

    listen: ListenAddress = field(default_factory=lambda: ListenAddress("127.0.0.1", 15000))


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: LogLevel = "info"
    access_log: bool = True
    format: LogFormat = "text"
    """Of the process log on stderr (the access and audit lines are always JSON)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessConfig:
    scheduler: Scheduler = "normal"
    """Linux CPU scheduling policy of the whole process (``sidecar.process``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole, validated configuration."""

    trust_domain: str
    workload_api: str | None = None
    """Workload API URL as configured; None = ``$SPIFFE_ENDPOINT_SOCKET`` at run time."""
    admin: AdminConfig = field(default_factory=AdminConfig)
    inbound: InboundConfig | None = None
    outbound: OutboundConfig | None = None
    log: LogConfig = field(default_factory=LogConfig)
    drain_timeout: float = 10.0
    """``shutdown.drain_timeout``: how long in-flight requests may finish on SIGTERM."""
    process: ProcessConfig = field(default_factory=ProcessConfig)
    tracing: TracingConfig = field(default_factory=TracingConfig)

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


class ConfigErrors(SidecarError):
    """The configuration has problems; ``problems`` lists every one (each with ``.path``)."""

    status = 500
    reason = "config_error"

    def __init__(self, problems: Iterable[ConfigError]) -> None:
        self.problems: tuple[ConfigError, ...] = tuple(problems)
        count = len(self.problems)
        super().__init__(
            f"{count} configuration problem{'' if count == 1 else 's'}:\n"
            + "\n".join(f"  {problem}" for problem in self.problems)
        )


def problem_detail(problem: ConfigError) -> str:
    """The message of ``problem`` without its ``path: `` prefix."""
    prefix = f"{problem.path}: "
    return problem.message[len(prefix) :] if problem.message.startswith(prefix) else problem.message


# --------------------------------------------------------------------------- scalar parsers


_DURATION_RE = re.compile(r"(-?)([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m|h)", re.ASCII)
_DURATION_UNITS = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_DURATION_LIKE = "a duration like 250ms, 10s, 5m, 1h or a number of seconds"

_SIZE_RE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,9})?) ?([kmg]i?b|b)?", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
}
_SIZE_LIKE = "a size like 512KiB, 4MiB, 1MB or a number of bytes"


def parse_duration(value: object, path: str = "duration") -> float:
    """Seconds from a number (seconds) or a string ``250ms`` / ``10s`` / ``1.5m`` / ``1h``.

    Never negative, never more than ``MAX_DURATION``; raises only ``ConfigError``.
    """
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise ConfigError(
                path,
                f"not a duration: {_short(value)}; expected {_DURATION_LIKE} (units: ms, s, m, h)",
            )
        if match[1]:
            raise ConfigError(path, f"must not be negative (got {_short(value)})")
        exact = Fraction(match[2]) * _DURATION_UNITS[match[3]]
        if exact > MAX_DURATION:
            raise ConfigError(path, f"must be at most 24h (got {_short(value)})")
        return float(exact)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected {_DURATION_LIKE}, got {_got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"expected {_DURATION_LIKE}, got {_got(value)}")
    if value < 0:
        raise ConfigError(path, f"must not be negative (got {_got(value)})")
    if value > MAX_DURATION:
        raise ConfigError(path, f"must be at most 24h = 86400 seconds (got {_got(value)})")
    return float(value)


def parse_size(value: object, path: str = "size") -> int:
    """Bytes from an integer or a string ``512KiB`` / ``4MiB`` / ``1MB`` (decimal) / ``1.5GiB``.

    KiB/MiB/GiB are powers of 1024, KB/MB/GB powers of 1000 (units are case-insensitive); the
    result must be a whole number of bytes from 0 to ``MAX_SIZE``. Raises only ``ConfigError``.
    """
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match is None:
            raise ConfigError(
                path,
                f"not a size: {_short(value)}; expected {_SIZE_LIKE}"
                " (units: B, KB, MB, GB, KiB, MiB, GiB)",
            )
        exact = Fraction(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
        if exact.denominator != 1:
            raise ConfigError(path, f"{_short(value)} is not a whole number of bytes")
        if exact > MAX_SIZE:
            raise ConfigError(path, f"{_short(value)} is too large (at most 1024GiB)")
        return int(exact)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected {_SIZE_LIKE}, got {_got(value)}")
    if value < 0:
        raise ConfigError(path, f"must not be negative (got {_got(value)})")
    if value > MAX_SIZE:
        raise ConfigError(path, f"{_got(value)} is too large (at most 1024GiB)")
    return value


def _string(value: object, path: str, like: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string like {like}, got {_got(value)}")
    return value


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        hint = ""
        if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
            hint = " (write true or false; yes/no/on/off are strings in this file)"
        raise ConfigError(path, f"expected true or false, got {_got(value)}{hint}")
    return value


def _choice(value: object, path: str, choices: Sequence[_T]) -> _T:
    listed = " or ".join(repr(choice) for choice in choices)
    for choice in choices:
        if value == choice and type(value) is type(choice):
            return choice
    message = f"expected {listed}, got {_got(value)}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [str(c) for c in choices], n=1)
        if close:
            message += f"; did you mean {close[0]!r}?"
    raise ConfigError(path, message)


def _timeout(value: object, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds <= 0:
        raise ConfigError(path, "must be greater than 0")
    return seconds


def _size_between(low: int, high: int, low_text: str, high_text: str) -> _Parse[int]:
    def parse(value: object, path: str) -> int:
        size = parse_size(value, path)
        if not low <= size <= high:
            raise ConfigError(path, f"must be from {low_text} to {high_text} (got {size} bytes)")
        return size

    return parse


def _integer_between(low: int, high: int) -> _Parse[int]:
    def parse(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                path, f"expected a whole number from {low} to {high}, got {_got(value)}"
            )
        if not low <= value <= high:
            raise ConfigError(path, f"must be from {low} to {high} (got {value})")
        return value

    return parse


_HOST_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)


def _host(text: str) -> str:
    """Normalise an IP literal (no brackets) or a DNS name; ValueError says what is wrong."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    if len(name) > 253:
        raise ValueError("the host name is longer than 253 characters")
    labels = name.split(".")
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{_short(text)} is neither an IP address nor a valid host name")
    if labels[-1].isdigit():
        raise ValueError(f"{_short(text)} is not a valid IPv4 address")
    return name


def _host_port(host: str, port: int | None, default: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None or port == default else f"{shown}:{port}"


def _url(value: object, path: str, scheme: str, like: str, why_scheme: str) -> str:
    """An ``http(s)://host[:port]`` URL with no path; normalised with an explicit port."""
    text = _string(value, path, like)
    default_port = {"http": 80, "https": 443}[scheme]
    if "://" not in text:
        raise ConfigError(path, f"not a URL: {_short(text)}; expected {like}")
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ConfigError(
            path, f"not a valid URL ({exc}): {_short(text)}; expected {like}"
        ) from None
    if url.scheme.lower() != scheme:
        got = f"{url.scheme}://" if url.scheme else "no scheme"
        raise ConfigError(path, f"must be an {scheme}:// URL ({why_scheme}), got {got}")
    if url.username is not None or url.password is not None:
        raise ConfigError(path, "must not contain user info (user:password@)")
    if url.path not in ("", "/") or url.query or url.fragment or "?" in text or "#" in text:
        raise ConfigError(
            path,
            f"must be {like} without a path, query or fragment "
            f"(the request path is forwarded as is), got {_short(text)}",
        )
    if not url.hostname:
        raise ConfigError(path, f"has no host; expected {like}")
    try:
        host = _host(url.hostname)
    except ValueError as exc:
        raise ConfigError(path, f"bad host: {exc}") from None
    if port == 0:
        raise ConfigError(path, "port 0 is not a valid destination")
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{default_port if port is None else port}"


def _origin(value: object, path: str) -> str:
    like = "https://app.example.com"
    text = _string(value, path, like)
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ConfigError(path, f"not a valid origin ({exc}): {_short(text)}") from None
    scheme = url.scheme.lower()
    if text == "*":
        raise ConfigError(path, "'*' is not an origin; leave the list empty to skip the check")
    if scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(path, f"not an origin: {_short(text)}; expected an origin like {like}")
    if (
        url.path
        or url.query
        or url.fragment
        or "?" in text
        or "#" in text
        or url.username is not None
        or url.password is not None
    ):
        raise ConfigError(
            path,
            f"an origin is scheme://host[:port] only, without path (not even '/'), query or "
            f"user info; got {_short(text)}",
        )
    try:
        host = _host(url.hostname)
    except ValueError as exc:
        raise ConfigError(path, f"bad host: {exc}") from None
    return f"{scheme}://{_host_port(host, port, {'http': 80, 'https': 443}[scheme])}"


def _route_host(value: object, path: str) -> str | None:
    if value is None:
        return None
    text = _string(value, path, "math.example.com or math.example.com:8080")
    if text.startswith("["):
        end = text.find("]")
        host_text, rest = (text[1:end], text[end + 1 :]) if end > 0 else (text, "")
        if end < 0 or ":" not in host_text:
            raise ConfigError(path, f"not a host name: {_short(text)}")
    else:
        host_text, colon, port_text = text.partition(":")
        rest = colon + port_text
    if rest and not re.fullmatch(r":[0-9]{1,5}", rest, re.ASCII):
        raise ConfigError(path, f"expected host or host:port, got {_short(text)}")
    if rest and not 0 < int(rest[1:]) <= 65535:
        raise ConfigError(path, f"the port must be from 1 to 65535, got {_short(text)}")
    try:
        host = _host(host_text)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
    return f"[{host}]{rest}" if ":" in host else f"{host}{rest}"


_PCHARS = r"[A-Za-z0-9._~!$&'()*+,;=:@-]"
_PATH_PREFIX_RE = re.compile(rf"/|(/{_PCHARS}+)+", re.ASCII)
_ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)


def _path_prefix(value: object, path: str) -> str:
    text = _string(value, path, "/math")
    if not text.startswith("/"):
        raise ConfigError(path, f"must start with '/', got {_short(text)}")
    if text != "/" and text.endswith("/"):
        raise ConfigError(path, f"must not end with '/' (write {_short(text.rstrip('/'))})")
    if not _PATH_PREFIX_RE.fullmatch(text):
        raise ConfigError(
            path,
            f"{_short(text)} is not a plain URL path: use '/'-separated segments of letters, "
            "digits and -._~!$&'()*+,;=:@ (no '//', '%', '?', '#' or spaces)",
        )
    if any(segment in (".", "..") for segment in text.split("/")):
        raise ConfigError(path, f"{_short(text)} must not contain '.' or '..' segments")
    return text


def _sni(value: object, path: str) -> str:
    text = _string(value, path, "math.mcp.svc")
    try:
        host = _host(text)
    except ValueError as exc:
        raise ConfigError(path, f"not a DNS name: {exc}") from None
    if _is_ip_literal(host):
        raise ConfigError(path, f"must be a DNS name, not an IP address (got {_short(text)})")
    return host


def _default_sni(upstream: str) -> str | None:
    """The upstream URL's host when it is a name (TLS sends no IP literal as SNI)."""
    host = urlsplit(upstream).hostname
    return None if not host or _is_ip_literal(host) else host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _route_name(value: object, path: str) -> str:
    text = _string(value, path, "math")
    if not _ROUTE_NAME_RE.fullmatch(text):
        raise ConfigError(
            path,
            f"{_short(text)} is not a route name: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters",
        )
    return text


def _server_spiffe_id(value: object, path: str) -> SpiffeId:
    text = _string(value, path, "spiffe://example.org/ns/mcp/sa/math")
    if "*" in text:
        raise ConfigError(
            path, "wildcards are not allowed: give the exact SPIFFE ID of the server workload"
        )
    try:
        return SpiffeId.parse_workload(text)
    except SpiffeIdError as exc:
        raise ConfigError(path, f"not a SPIFFE ID: {exc.message}") from None


def _trust_domain(value: object, path: str) -> str:
    text = _string(value, path, "example.org")
    if text.startswith(SCHEME_PREFIX):
        raise ConfigError(
            path, f"expected a bare trust domain name like example.org, without {SCHEME_PREFIX!r}"
        )
    try:
        return validate_trust_domain(text)
    except SpiffeIdError as exc:
        raise ConfigError(path, f"not a valid trust domain: {exc.message}") from None


def _workload_api(value: object, path: str) -> str | None:
    if value is None:
        return None
    text = _string(value, path, "unix:///run/spire/sockets/agent.sock")
    grpc_target(text, field=path)  # raises ConfigError naming ``path``
    return text


def _listen(like: str) -> _Parse[ListenAddress]:
    def parse(value: object, path: str) -> ListenAddress:
        return ListenAddress.parse(_string(value, path, like), path)

    return parse


# ---------------------------------------------------------------------------- token layer values

_SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")
_LOOPBACK_ONLY_HTTP = "http:// is allowed only for a loopback host: 127.0.0.1, [::1] or localhost"
_URL_TEXT_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)
_SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+", re.ASCII)  # RFC 6749 scope-token
_TYP_RE = re.compile(r"[A-Za-z0-9!#$&^_.+/-]+", re.ASCII)
_CLAIM_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)


def _leeway(value: object, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds > MAX_LEEWAY:
        raise ConfigError(path, f"must be from 0 to 5m (got {seconds:g} seconds)")
    return seconds


def _algorithm(value: object, path: str) -> str:
    listed = ", ".join(JWT_ALGORITHMS)
    if isinstance(value, str):
        if value in JWT_ALGORITHMS:
            return value
        if value.lower() == "none":
            raise ConfigError(
                path, f"'none' (unsigned tokens) is never accepted; expected one of {listed}"
            )
        if value.upper() in _SYMMETRIC_ALGORITHMS:
            raise ConfigError(
                path,
                f"{_short(value)} is refused: HMAC algorithms need a shared secret, and whoever "
                f"holds it can mint tokens; expected one of {listed}",
            )
        close = difflib.get_close_matches(value.upper(), JWT_ALGORITHMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(path, f"expected one of {listed}, got {_got(value)}{hint}")
    raise ConfigError(path, f"expected one of {listed}, got {_got(value)}")


def _non_empty_string(like: str) -> _Parse[str]:
    def parse(value: object, path: str) -> str:
        text = _string(value, path, like)
        if not text:
            raise ConfigError(path, f"must not be empty; expected a string like {like}")
        return text

    return parse


def _jwt_svid_audience(value: object, path: str) -> str:
    return _non_empty_string("spiffe://example.org/ns/mcp/sa/math")(value, path)


def _scope(value: object, path: str) -> str:
    text = _string(value, path, "mcp:tools")
    if not _SCOPE_RE.fullmatch(text):
        raise ConfigError(
            path,
            f"{_short(text)} is not a scope: a scope is one non-empty word of printable ASCII "
            "without spaces, '\"' or '\\' (list several scopes as separate items)",
        )
    return text


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _token_url(like: str, *, query: bool = False) -> _Parse[str]:
    """An ``https://`` URL (``http://`` only on loopback), kept exactly as written: token
    claims (``iss``, ``aud``) are compared byte for byte, so nothing is normalised."""

    def parse(value: object, path: str) -> str:
        text = _string(value, path, like)
        if "://" not in text:
            raise ConfigError(path, f"not a URL: {_short(text)}; expected {like}")
        if not _URL_TEXT_RE.fullmatch(text):
            raise ConfigError(
                path,
                f"must be printable ASCII without spaces (percent-encode anything else), "
                f"got {_short(text)}",
            )
        try:
            url = urlsplit(text)
            port = url.port
        except ValueError as exc:
            raise ConfigError(
                path, f"not a valid URL ({exc}): {_short(text)}; expected {like}"
            ) from None
        scheme = url.scheme.lower()
        if scheme not in ("https", "http"):
            raise ConfigError(path, f"must be an https:// URL, got {_short(url.scheme)}://")
        if url.username is not None or url.password is not None:
            raise ConfigError(path, "must not contain user info (user:password@)")
        if url.fragment or "#" in text:
            raise ConfigError(path, f"must not contain a fragment ('#'), got {_short(text)}")
        if not query and (url.query or "?" in text):
            raise ConfigError(path, f"must not contain a query ('?'), got {_short(text)}")
        if not url.hostname:
            raise ConfigError(path, f"has no host; expected {like}")
        try:
            host = _host(url.hostname)
        except ValueError as exc:
            raise ConfigError(path, f"bad host: {exc}") from None
        if port == 0:
            raise ConfigError(path, "port 0 is not a valid destination")
        if scheme == "http" and not _is_loopback_host(host):
            raise ConfigError(
                path, f"must be an https:// URL ({_LOOPBACK_ONLY_HTTP}), got {_short(text)}"
            )
        return text

    return parse


_issuer_url = _token_url("https://auth.example.com")
_resource_url = _token_url("https://mcp.example.com/mcp")
_jwks_uri = _token_url("https://auth.example.com/.well-known/jwks.json", query=True)
_token_endpoint = _token_url("https://sts.example.com/oauth2/token", query=True)


def _public_url(value: object, path: str) -> str:
    origin = _origin(value, path)
    url = urlsplit(origin)
    if url.scheme == "http" and not _is_loopback_host(url.hostname or ""):
        raise ConfigError(
            path, f"must be an https:// origin ({_LOOPBACK_ONLY_HTTP}), got {_short(origin)}"
        )
    return origin


def _origin_of(url_text: str) -> str:
    """The normalised origin of an already validated URL (the default ``public_url``)."""
    url = urlsplit(url_text)
    return _origin(f"{url.scheme}://{url.netloc}", "")


def _typ(value: object, path: str) -> str:
    text = _string(value, path, "at+jwt")
    if not _TYP_RE.fullmatch(text):
        raise ConfigError(path, f"not a media type like at+jwt: {_short(text)}")
    return text


def _claim_name(like: str) -> _Parse[str]:
    def parse(value: object, path: str) -> str:
        text = _string(value, path, like)
        if not _CLAIM_RE.fullmatch(text):
            raise ConfigError(
                path, f"expected a claim name like {like} (no spaces), got {_short(text)}"
            )
        return text

    return parse


# ------------------------------------------------------------------------------------ sections


class _Failed(Exception):
    """A section had problems (already recorded); its dataclass cannot be built."""


class _Fields:
    """Reads the known keys of one mapping, recording problems instead of stopping."""

    def __init__(self, problems: list[ConfigError], data: Mapping[str, object], path: str) -> None:
        self._problems = problems
        self._data = data
        self._path = path
        self.failed = False

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> object:
        """The value of ``key`` as written (None if absent), for cross-field checks."""
        return self._data.get(key)

    def optional(self, key: str, parse: _Parse[_T], default: _T) -> _T:
        if key not in self._data:
            return default
        try:
            return parse(self._data[key], _join(self._path, key))
        except ConfigError as exc:
            self._problems.append(exc)
        except _Failed:
            pass
        self.failed = True
        return default

    def required(self, key: str, parse: _Parse[_T], hint: str) -> _T | None:
        if key not in self._data:
            self._problems.append(ConfigError(_join(self._path, key), f"required ({hint})"))
            self.failed = True
            return None
        return self.optional(key, parse, None)


class _Parser:
    def __init__(self) -> None:
        self.problems: list[ConfigError] = []

    def error(self, path: str, message: str) -> None:
        self.problems.append(ConfigError(path or ROOT, message))

    def fields(self, value: object, path: str, schema: str) -> _Fields:
        """Check that ``value`` is a mapping of known keys; unknown keys are recorded."""
        known = SCHEMA[schema]
        if value is None:  # "admin:" with everything under it commented out
            value = {}
        if not isinstance(value, Mapping):
            listed = ", ".join(known)
            self.error(path, f"expected a mapping with keys {listed}; got {_got(value)}")
            raise _Failed
        data: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(path, f"keys must be strings, got {_got(key)}")
                continue
            key_path = _join(path, key)
            schema_key = f"{schema}.{key}" if schema else key
            if schema_key in UNSUPPORTED_KEYS:
                self.error(
                    key_path,
                    f"not supported by this version yet ({UNSUPPORTED_KEYS[schema_key]}); remove "
                    "it: an ignored security policy would silently allow what it should deny",
                )
            elif key not in known:
                self.error(key_path, _unknown_key_message(key, schema))
            else:
                data[key] = item
        return _Fields(self.problems, data, path)

    def sequence(self, value: object, path: str, like: str) -> Sequence[object]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list of {like}, got {_got(value)}")
        return value

    # -- top level

    def config(self, data: object) -> Config:
        if data is None:
            self.error(
                ROOT,
                "the configuration is empty; expected a mapping with trust_domain and "
                "inbound and/or outbound",
            )
            raise _Failed
        f = self.fields(data, "", "")
        trust_domain = f.required(
            "trust_domain", _trust_domain, "the trust domain, e.g. example.org"
        )
        workload_api = f.optional("workload_api", _workload_api, None)
        admin = f.optional("admin", self.admin, AdminConfig())
        inbound: InboundConfig | None = f.optional("inbound", self.inbound, None)
        outbound: OutboundConfig | None = f.optional("outbound", self.outbound, None)
        log = f.optional("log", self.log, LogConfig())
        drain_timeout = f.optional("shutdown", self.shutdown, 10.0)
        process = f.optional("process", self.process, ProcessConfig())
        tracing = f.optional(
            "tracing", lambda v, p: self.delegate(parse_tracing, v, p), TracingConfig()
        )
        if "inbound" not in f and "outbound" not in f:
            self.error(
                ROOT,
                "at least one of 'inbound' (MCP server side) or 'outbound' (agent side) "
                "is required",
            )
        self.check_listeners(
            [
                ("admin.listen", admin.listen),
                ("inbound.listen", inbound.listen if inbound else None),
                ("outbound.listen", outbound.listen if outbound else None),
            ]
        )
        if self.problems or trust_domain is None:
            raise _Failed
        return Config(
            trust_domain=trust_domain,
            workload_api=workload_api,
            admin=admin,
            inbound=inbound,
            outbound=outbound,
            log=log,
            drain_timeout=drain_timeout,
            process=process,
            tracing=tracing,
        )

    def check_listeners(self, listeners: list[tuple[str, ListenAddress | None]]) -> None:
        seen: list[tuple[str, ListenAddress]] = []
        for path, address in listeners:
            if address is None:
                continue
            for other_path, other in seen:
                if address.port == other.port != 0 and (
                    address.host == other.host or address.is_wildcard or other.is_wildcard
                ):
                    self.error(path, f"{address} conflicts with {other_path} ({other})")
            seen.append((path, address))

    def admin(self, value: object, path: str) -> AdminConfig:
        f = self.fields(value, path, "admin")
        listen = f.optional("listen", _listen("127.0.0.1:15000"), AdminConfig().listen)
        if f.failed:
            raise _Failed
        return AdminConfig(listen=listen)

    def log(self, value: object, path: str) -> LogConfig:
        f = self.fields(value, path, "log")
        level: LogLevel = f.optional("level", _log_level, "info")
        access_log = f.optional("access_log", _boolean, True)
        log_format: LogFormat = f.optional(
            "format", lambda v, p: _choice(v, p, LOG_FORMATS), "text"
        )
        if f.failed:
            raise _Failed
        return LogConfig(level=level, access_log=access_log, format=log_format)

    def shutdown(self, value: object, path: str) -> float:
        f = self.fields(value, path, "shutdown")
        drain_timeout = f.optional("drain_timeout", parse_duration, 10.0)
        if f.failed:
            raise _Failed
        return drain_timeout

    def process(self, value: object, path: str) -> ProcessConfig:
        f = self.fields(value, path, "process")
        scheduler = f.optional("scheduler", _scheduler, ProcessConfig().scheduler)
        if f.failed:
            raise _Failed
        return ProcessConfig(scheduler=scheduler)

    def limits(self, value: object, path: str) -> Limits:
        f = self.fields(value, path, path)  # path == schema: inbound.limits / outbound.limits
        defaults = Limits()
        limits = Limits(
            max_request_body=f.optional(
                "max_request_body",
                _size_between(1, GIB, "1 byte", "1GiB"),
                defaults.max_request_body,
            ),
            max_header_size=f.optional(
                "max_header_size", _size_between(KIB, MIB, "1KiB", "1MiB"), defaults.max_header_size
            ),
            header_timeout=f.optional("header_timeout", _timeout, defaults.header_timeout),
            keepalive_timeout=f.optional("keepalive_timeout", _timeout, defaults.keepalive_timeout),
            connect_timeout=f.optional("connect_timeout", _timeout, defaults.connect_timeout),
            idle_timeout=f.optional("idle_timeout", _timeout, defaults.idle_timeout),
            total_timeout=f.optional("total_timeout", _timeout, defaults.total_timeout),
            sse_heartbeat=f.optional("sse_heartbeat", parse_duration, defaults.sse_heartbeat),
        )
        if f.failed:
            raise _Failed
        return limits

    def circuit_breakers(
        self, value: object, path: str, base: CircuitBreakers, schema: str
    ) -> CircuitBreakers:
        """The thresholds given, the others from ``base`` (the outbound's for a route)."""
        f = self.fields(value, path, schema)
        breakers = CircuitBreakers(
            max_connections=f.optional(
                "max_connections", _integer_between(1, MAX_CIRCUIT_BREAKER), base.max_connections
            ),
            max_pending_requests=f.optional(
                "max_pending_requests",
                _integer_between(0, MAX_CIRCUIT_BREAKER),
                base.max_pending_requests,
            ),
            max_requests=f.optional(
                "max_requests", _integer_between(1, MAX_CIRCUIT_BREAKER), base.max_requests
            ),
        )
        if f.failed:
            raise _Failed
        return breakers

    def origins(self, value: object, path: str) -> tuple[str, ...]:
        return self.strings(value, path, "origins like https://app.example.com", _origin)

    # -- inbound

    def inbound(self, value: object, path: str) -> InboundConfig:
        f = self.fields(value, path, "inbound")
        listen = f.required(
            "listen", _listen("0.0.0.0:8443"), "the mTLS listen address, e.g. 0.0.0.0:8443"
        )
        mux = self.mux(f, path)
        upstream: str | None = None
        if "targets" not in f:
            upstream = f.required(
                "upstream",
                lambda v, p: _url(
                    v,
                    p,
                    "http",
                    "http://127.0.0.1:8000",
                    "the local MCP server, reached in plain HTTP",
                ),
                "the local MCP server's URL, e.g. http://127.0.0.1:8000, or targets: the MCP "
                "servers an edge gateway multiplexes",
            )
        elif "upstream" in f:
            self.error(
                _join(path, "upstream"),
                "give either upstream (the local MCP server) or targets (the MCP servers an edge "
                "gateway multiplexes), not both",
            )
            f.failed = True
        public_url = f.optional("public_url", _public_url, None)
        mtls: MtlsMode = f.optional("mtls", _mtls, "required")
        allow = f.optional("allow_spiffe_ids", self.allowlist, None)
        jwt_svid: JwtSvidConfig | None = f.optional(
            "jwt_svid", lambda v, p: self.jwt_svid(v, p, mtls), None
        )
        oauth: OAuthConfig | None = f.optional("oauth", lambda v, p: self.oauth(v, p, mtls), None)
        origins: tuple[str, ...] = f.optional("allowed_origins", self.origins, ())
        forward_authorization = f.optional("forward_authorization", _boolean, False)
        limits = f.optional("limits", self.limits, Limits())
        mcp_policy: McpPolicyConfig | None = f.optional("mcp_policy", self.mcp_policy, None)
        rate_limits: tuple[RateLimit, ...] = f.optional(
            "rate_limits", lambda v, p: self.delegate(parse_rate_limits, v, p), ()
        )
        api_keys: ApiKeysConfig | None = f.optional("api_keys", self.api_keys, None)
        breakers = f.optional(
            "circuit_breakers",
            lambda v, p: self.circuit_breakers(v, p, CircuitBreakers(), "inbound.circuit_breakers"),
            CircuitBreakers(),
        )
        if "public_url" in f and "oauth" not in f:
            self.error(
                _join(path, "public_url"),
                "only used with inbound.oauth (it builds the resource_metadata URL of the "
                "OAuth 401 answer); remove it or configure oauth",
            )
            f.failed = True
        if forward_authorization and "targets" in f:
            self.error(
                _join(path, "forward_authorization"),
                "must be false with targets: an edge gateway authenticates to its targets with "
                "its own SPIFFE identity and never passes the client's token on",
            )
            f.failed = True
        elif forward_authorization and ("jwt_svid" in f or "oauth" in f or "api_keys" in f):
            self.error(
                _join(path, "forward_authorization"),
                "must be false with a token layer (jwt_svid, oauth or api_keys): the bearer "
                "token is addressed to this sidecar and must never be passed upstream (MCP "
                "authorization forbids token passthrough)",
            )
            f.failed = True
        if mtls == "off":
            allow_given = f.raw("allow_spiffe_ids")
            if "oauth" not in f and "api_keys" not in f:
                self.error(
                    _join(path, "mtls"),
                    "'off' requires inbound.oauth or inbound.api_keys (an unauthenticated "
                    "ingress is refused)",
                )
                f.failed = True
            if allow_given is not None and allow_given != []:
                self.error(
                    _join(path, "allow_spiffe_ids"),
                    "must be empty or absent with mtls: 'off': without mTLS there is no peer "
                    "SPIFFE ID to check, so the allowlist would be silently ignored",
                )
                f.failed = True
            allow = allow if allow is not None else Allowlist()
        elif "allow_spiffe_ids" not in f or (allow is not None and len(allow) == 0):
            self.error(
                _join(path, "allow_spiffe_ids"),
                ("empty" if "allow_spiffe_ids" in f else "required")
                + ": with mtls: required only peers whose SPIFFE ID matches one of these patterns "
                "may connect, so nobody could; list at least one, e.g. "
                "spiffe://example.org/ns/agents/sa/*",
            )
            f.failed = True
        if mux is not None and mcp_policy is not None:
            self.check_rule_names(mux, mcp_policy.policy, _join(path, "mcp_policy"))
        if f.failed or listen is None or (upstream is None and mux is None) or allow is None:
            raise _Failed
        if oauth is not None and public_url is None:
            public_url = _origin_of(oauth.audience)
        return InboundConfig(
            listen=listen,
            upstream=upstream,
            mux=mux,
            mtls=mtls,
            allow_spiffe_ids=allow,
            allowed_origins=origins,
            forward_authorization=forward_authorization,
            limits=limits,
            jwt_svid=jwt_svid,
            oauth=oauth,
            public_url=public_url,
            mcp_policy=mcp_policy,
            rate_limits=rate_limits,
            api_keys=api_keys,
            circuit_breakers=breakers,
        )

    # -- MCP policy

    def delegate(self, parse: Callable[..., _T], value: object, path: str) -> _T:
        """Run a parser of another module that raises ``ConfigErrors``; keep all its problems."""
        try:
            return parse(value, path=path)
        except ConfigErrors as exc:
            self.problems.extend(exc.problems)
            raise _Failed from exc

    def mcp_policy(self, value: object, path: str) -> McpPolicyConfig:
        """Inline (``default:``/``rules:``) or ``{file: PATH, reload_interval: 2s}``."""
        if value is None:  # "mcp_policy:" with everything under it commented out
            raise ConfigError(
                path,
                "empty: give a policy (default: deny, rules: [...]) or {file: PATH}; an empty "
                "policy would silently allow every call",
            )
        if not (isinstance(value, Mapping) and "file" in value):
            return McpPolicyConfig(policy=self.delegate(parse_policy, value, path))
        if "dry_run" in value:  # one place, reloaded with the rules it is about
            self.error(
                _join(path, "dry_run"),
                "belongs in the policy file, next to default and rules (it is reloaded with them)",
            )
            value = {key: item for key, item in value.items() if key != "dry_run"}
        f = self.fields(value, path, "inbound.mcp_policy.file")
        file = f.required(
            "file",
            lambda v, p: _string(v, p, "/etc/mcp-sidecar/policy.yaml"),
            "path of the policy YAML file",
        )
        interval = f.optional("reload_interval", _timeout, 2.0)
        if f.failed or file is None:
            raise _Failed
        try:
            policy = load_policy_file(file)
        except ConfigErrors as exc:
            for problem in exc.problems:
                self.error(_join(path, "file"), f"{file}: {problem}")
            raise _Failed from exc
        return McpPolicyConfig(policy=policy, file=file, reload_interval=interval)

    def api_keys(self, value: object, path: str) -> ApiKeysConfig:
        f = self.fields(value, path, "inbound.api_keys")
        file = f.required(
            "file",
            _file_path("/etc/mcp-sidecar/api-keys/keys.yaml"),
            "path of the key file (hashes only, see mcp-sidecar api-key create)",
        )
        header = f.optional("header", _header_name, "Authorization")
        interval = f.optional("reload_interval", _timeout, 2.0)
        if f.failed or file is None:
            raise _Failed
        try:
            keys = load_api_key_file(file)
        except ConfigErrors as exc:
            for problem in exc.problems:
                self.error(_join(path, "file"), f"{file}: {problem}")
            raise _Failed from exc
        return ApiKeysConfig(keys=keys, file=file, header=header, reload_interval=interval)

    # -- token layer

    def jwt_svid(self, value: object, path: str, mtls: MtlsMode) -> JwtSvidConfig:
        f = self.fields(value, path, "inbound.jwt_svid")
        audiences = f.required(
            "audiences",
            lambda v, p: self.strings(
                v,
                p,
                "audiences like spiffe://example.org/ns/mcp/sa/math",
                _non_empty_string("spiffe://example.org/ns/mcp/sa/math"),
                empty="must not be empty: a JWT-SVID is accepted only if its aud names one of "
                "these (usually this server's SPIFFE ID)",
            ),
            "the audiences a JWT-SVID must name, e.g. [spiffe://example.org/ns/mcp/sa/math]",
        )
        bind_to_peer = f.optional("bind_to_peer", _boolean, mtls == "required")
        leeway = f.optional("leeway", _leeway, 30.0)
        algorithms = f.optional("algorithms", self.algorithms, JWT_ALGORITHMS)
        if mtls == "off" and bind_to_peer and "bind_to_peer" in f:
            self.error(
                _join(path, "bind_to_peer"),
                "cannot be true with inbound.mtls: 'off': there is no mTLS peer whose SPIFFE ID "
                "the token's sub could be bound to; set it to false",
            )
            f.failed = True
        if f.failed or audiences is None:
            raise _Failed
        return JwtSvidConfig(
            audiences=audiences, bind_to_peer=bind_to_peer, leeway=leeway, algorithms=algorithms
        )

    def oauth(self, value: object, path: str, mtls: MtlsMode) -> OAuthConfig:
        f = self.fields(value, path, "inbound.oauth")
        issuer = f.required(
            "issuer",
            _issuer_url,
            "the authorization server's issuer identifier, e.g. https://auth.example.com",
        )
        audience = f.required(
            "audience",
            _resource_url,
            "this MCP server's resource URL (RFC 8707), e.g. https://mcp.example.com/mcp",
        )
        jwks_uri = f.optional("jwks_uri", _jwks_uri, None)
        jwks = f.optional("jwks", self.inline_jwks, None)
        discovery = f.optional("discovery", _boolean, "jwks_uri" not in f and "jwks" not in f)
        like_scopes = "scopes like mcp:tools"
        required_scopes: tuple[str, ...] = f.optional(
            "required_scopes", lambda v, p: self.strings(v, p, like_scopes, _scope), ()
        )
        scopes_supported = f.optional(
            "scopes_supported", lambda v, p: self.strings(v, p, like_scopes, _scope), None
        )
        authorization_servers = f.optional(
            "authorization_servers",
            lambda v, p: self.strings(
                v,
                p,
                "issuer URLs like https://auth.example.com",
                _issuer_url,
                empty="must not be empty: MCP clients find the authorization server here; "
                "omit it to advertise issuer",
            ),
            None,
        )
        typ = f.optional("typ", _typ, None)
        leeway = f.optional("leeway", _leeway, 30.0)
        algorithms = f.optional("algorithms", self.algorithms, JWT_ALGORITHMS)
        jwks_cache_ttl = f.optional("jwks_cache_ttl", _timeout, 300.0)
        jwks_refresh_interval = f.optional("jwks_refresh_interval", _timeout, 30.0)
        require_cnf = f.optional("require_cnf", _boolean, False)
        bind_actor = f.optional("bind_actor_to_peer", _boolean, mtls == "required")
        roles_claim = f.optional("roles_claim", _claim_name("roles"), "roles")
        groups_claim = f.optional("groups_claim", _claim_name("groups"), "groups")
        sources = [key for key in ("jwks_uri", "jwks") if key in f]
        if discovery and "discovery" in f:
            sources.append("discovery: true")
        if len(sources) > 1:
            self.error(
                path,
                f"give one source of signing keys, not {' and '.join(sources)}: jwks_uri, jwks "
                "and discovery: true are alternatives",
            )
            f.failed = True
        elif not sources and not discovery:
            self.error(
                path,
                "no source of signing keys: give jwks_uri or jwks, or leave discovery true "
                "(the issuer's metadata names its jwks_uri)",
            )
            f.failed = True
        if scopes_supported is not None:
            missing = [scope for scope in required_scopes if scope not in scopes_supported]
            if missing:
                self.error(
                    _join(path, "scopes_supported"),
                    f"must include every required scope (missing: {', '.join(missing)}); "
                    "clients learn what to ask for from it",
                )
                f.failed = True
        if mtls == "off" and require_cnf:
            self.error(
                _join(path, "require_cnf"),
                "cannot be true with inbound.mtls: 'off': there is no client certificate to "
                "match the token's cnf.x5t#S256 against; set it to false",
            )
            f.failed = True
        if mtls == "off" and bind_actor and "bind_actor_to_peer" in f:
            self.error(
                _join(path, "bind_actor_to_peer"),
                "cannot be true with inbound.mtls: 'off': there is no mTLS peer the actor of a "
                "delegated token could be bound to; set it to false",
            )
            f.failed = True
        if f.failed or issuer is None or audience is None:
            raise _Failed
        return OAuthConfig(
            issuer=issuer,
            audience=audience,
            jwks_uri=jwks_uri,
            jwks=jwks,
            discovery=discovery,
            required_scopes=required_scopes,
            scopes_supported=required_scopes if scopes_supported is None else scopes_supported,
            authorization_servers=(
                (issuer,) if authorization_servers is None else authorization_servers
            ),
            typ=typ,
            leeway=leeway,
            algorithms=algorithms,
            jwks_cache_ttl=jwks_cache_ttl,
            jwks_refresh_interval=jwks_refresh_interval,
            require_cnf=require_cnf,
            bind_actor_to_peer=bind_actor,
            roles_claim=roles_claim,
            groups_claim=groups_claim,
        )

    def strings(
        self,
        value: object,
        path: str,
        like: str,
        parse: _Parse[str],
        *,
        empty: str | None = None,
    ) -> tuple[str, ...]:
        """A list of strings, each checked by ``parse`` (problems by index), duplicates
        dropped; ``empty`` is the message if an empty list is an error."""
        items = self.sequence(value, path, like)
        if not items and empty is not None:
            raise ConfigError(path, empty)
        result = parse_each(items, path, parse, self.problems)
        if result is None:
            raise _Failed
        return result

    def algorithms(self, value: object, path: str) -> tuple[str, ...]:
        return self.strings(
            value,
            path,
            "JWS algorithms like RS256, ES256",
            _algorithm,
            empty=f"must not be empty; expected some of {', '.join(JWT_ALGORITHMS)}",
        )

    def inline_jwks(self, value: object, path: str) -> str:
        """A JWKS written as YAML -> canonical JSON text (the dataclass stays hashable)."""
        if not isinstance(value, Mapping):
            raise ConfigError(
                path,
                "expected a JWKS: a mapping with a 'keys' list, e.g. {keys: [{kty: RSA, kid: k1, "
                f"n: ..., e: AQAB}}]}}; got {_got(value)}",
            )
        keys_path = _join(path, "keys")
        if "keys" not in value:
            raise ConfigError(keys_path, "required (the JWKS 'keys' list)")
        keys = self.sequence(value["keys"], keys_path, "JWKs (mappings with kty and kid)")
        if not keys:
            raise ConfigError(keys_path, "must not be empty: with no keys no token can be valid")
        failed = False
        kids: dict[str, int] = {}
        for index, key in enumerate(keys):
            key_path = f"{keys_path}[{index}]"
            if not isinstance(key, Mapping):
                self.error(
                    key_path, f"expected a JWK (a mapping with kty and kid), got {_got(key)}"
                )
                failed = True
                continue
            for member in ("kty", "kid"):
                if member not in key:
                    self.error(_join(key_path, member), "required in every inline key")
                    failed = True
                elif not isinstance(key[member], str) or not key[member]:
                    self.error(
                        _join(key_path, member),
                        f"expected a non-empty string, got {_got(key[member])}",
                    )
                    failed = True
            kty, kid = key.get("kty"), key.get("kid")
            if kty == "oct":
                self.error(
                    _join(key_path, "kty"),
                    "'oct' (symmetric) keys are refused: a shared secret lets whoever holds it "
                    "mint tokens; give the issuer's public keys (RSA or EC)",
                )
                failed = True
            private = [member for member in ("d", "p", "q", "dp", "dq", "qi", "k") if member in key]
            if private and kty != "oct":
                self.error(
                    key_path,
                    f"contains private key material ({', '.join(private)}); give only the "
                    "public key",
                )
                failed = True
            if isinstance(kid, str) and kid:
                if kid in kids:
                    self.error(
                        _join(key_path, "kid"),
                        f"duplicate kid {_short(kid)} (also keys[{kids[kid]}]); which key "
                        "verifies a token would be ambiguous",
                    )
                    failed = True
                kids.setdefault(kid, index)
        if failed:
            raise _Failed
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

    def allowlist(self, value: object, path: str) -> Allowlist:
        like = "spiffe://example.org/ns/agents/sa/*"
        items = self.sequence(value, path, f"SPIFFE ID patterns like {like}")
        texts: list[str] = []
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            if not isinstance(item, str):
                self.error(item_path, f"expected a string like {like}, got {_got(item)}")
                continue
            try:
                SpiffeIdPattern.parse(item)
            except PatternError as exc:
                self.error(item_path, f"not a SPIFFE ID pattern: {exc.message}")
                continue
            texts.append(item)
        if len(texts) != len(items):
            raise _Failed
        return Allowlist.from_strings(texts)

    # -- outbound

    def outbound(self, value: object, path: str) -> OutboundConfig:
        f = self.fields(value, path, "outbound")
        listen = f.required(
            "listen", _listen("127.0.0.1:15001"), "a loopback address, e.g. 127.0.0.1:15001"
        )
        allow_non_loopback = f.optional("allow_non_loopback", _boolean, False)
        origins: tuple[str, ...] = f.optional("allowed_origins", self.origins, ())
        limits = f.optional("limits", self.limits, Limits())
        breakers = f.optional(
            "circuit_breakers",
            lambda v, p: self.circuit_breakers(
                v, p, CircuitBreakers(), "outbound.circuit_breakers"
            ),
            CircuitBreakers(),
        )
        routes = f.required(
            "routes", lambda v, p: self.routes(v, p, breakers), "at least one route"
        )
        if listen is not None and not listen.is_loopback and not allow_non_loopback:
            self.error(
                _join(path, "listen"),
                f"{listen} is not a loopback address: the outbound side is plain HTTP and lends "
                "this workload's SPIFFE identity to whoever connects; listen on 127.0.0.1, [::1] "
                "or localhost, or set allow_non_loopback: true if the network in front is trusted",
            )
            f.failed = True
        if f.failed or listen is None or routes is None:
            raise _Failed
        return OutboundConfig(
            listen=listen,
            routes=routes,
            allow_non_loopback=allow_non_loopback,
            allowed_origins=origins,
            limits=limits,
            circuit_breakers=breakers,
        )

    def routes(
        self, value: object, path: str, breakers: CircuitBreakers = CircuitBreakers()
    ) -> tuple[RouteConfig, ...]:
        items = self.sequence(value, path, "routes")
        if not items:
            raise ConfigError(path, "at least one route is required")
        routes: list[RouteConfig] = []
        failed = False
        names: dict[str, int] = {}
        matches: dict[tuple[str | None, str], int] = {}
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            try:
                routes.append(self.route(item, item_path, breakers))
            except _Failed:
                failed = True
            # Uniqueness is checked on the fields that are valid, even if others are not.
            raw: Mapping[object, object] = item if isinstance(item, Mapping) else {}
            name = _valid_or_none(_route_name, raw.get("name"))
            if name is not None:
                if name in names:
                    self.error(
                        f"{item_path}.name",
                        f"duplicate route name {name!r} (also routes[{names[name]}])",
                    )
                    failed = True
                names.setdefault(name, index)
            prefix = _valid_or_none(_path_prefix, raw.get("path_prefix", "/"))
            host = _valid_or_none(_route_host, raw.get("host"))
            if prefix is not None and (host is not None or raw.get("host") is None):
                if (host, prefix) in matches:
                    on_host = f" and host {host!r}" if host else ""
                    self.error(
                        f"{item_path}.path_prefix",
                        f"routes[{matches[host, prefix]}] already has path_prefix {prefix!r}"
                        f"{on_host}; which route serves a request would be ambiguous",
                    )
                    failed = True
                matches.setdefault((host, prefix), index)
        if failed:
            raise _Failed
        return tuple(routes)

    def route(
        self, value: object, path: str, defaults: CircuitBreakers = CircuitBreakers()
    ) -> RouteConfig:
        f = self.fields(value, path, ROUTE_SCHEMA)
        name = f.required("name", _route_name, "a short unique name, e.g. math")
        path_prefix = f.optional("path_prefix", _path_prefix, "/")
        host = f.optional("host", _route_host, None)
        mux = self.mux(f, path)
        upstream: str | None = None
        server_spiffe_id: SpiffeId | None = None
        if mux is None and "targets" not in f:
            upstream = f.required(
                "upstream",
                _sidecar_url,
                "the server sidecar's URL, e.g. https://math.mcp.svc:8443, or targets: the MCP "
                "servers this route multiplexes",
            )
            server_spiffe_id = f.required(
                "server_spiffe_id",
                _server_spiffe_id,
                "the exact SPIFFE ID the server must present, e.g. "
                "spiffe://example.org/ns/mcp/sa/math",
            )
        else:
            for key, why in (
                ("upstream", "give either upstream (one server) or targets (several), not both"),
                ("server_spiffe_id", "with targets, each target has its own server_spiffe_id"),
                ("jwt_svid_audience", "with targets, each target has its own jwt_svid_audience"),
            ):
                if key in f:
                    self.error(_join(path, key), why)
                    f.failed = True
        strip_prefix = f.optional("strip_prefix", _boolean, True)
        jwt_svid_audience = f.optional("jwt_svid_audience", _jwt_svid_audience, None)
        sni = f.optional("sni", _sni, None)
        if "sni" in f and "targets" in f:
            self.error(
                _join(path, "sni"),
                "not used with targets: each target is reached by its own upstream's host name",
            )
            f.failed = True
        token_exchange = f.optional("token_exchange", self.token_exchange, None)
        breakers = f.optional(
            "circuit_breakers",
            lambda v, p: self.circuit_breakers(v, p, defaults, f"{ROUTE_SCHEMA}.circuit_breakers"),
            defaults,
        )
        if "token_exchange" in f and "jwt_svid_audience" in f:
            self.error(
                _join(path, "token_exchange"),
                "cannot be combined with jwt_svid_audience: both would send the Authorization "
                "header upstream (the server's sidecar validates the exchanged token with "
                "inbound.oauth)",
            )
            f.failed = True
        if "token_exchange" in f and "targets" in f:
            self.error(
                _join(path, "token_exchange"),
                "not supported with targets: a token is exchanged for exactly one server "
                "(its resource/audience); give the route one upstream",
            )
            f.failed = True
        if (
            f.failed
            or name is None
            or (mux is None and (upstream is None or server_spiffe_id is None))
        ):
            raise _Failed
        return RouteConfig(
            name=name,
            path_prefix=path_prefix,
            host=host,
            upstream=upstream,
            server_spiffe_id=server_spiffe_id,
            mux=mux,
            strip_prefix=strip_prefix,
            jwt_svid_audience=jwt_svid_audience,
            token_exchange=token_exchange,
            sni=sni if sni is not None else _default_sni(upstream) if upstream else None,
            circuit_breakers=breakers,
        )

    def token_exchange(self, value: object, path: str) -> TokenExchangeConfig:
        f = self.fields(value, path, EXCHANGE_SCHEMA)
        token_endpoint = f.optional("token_endpoint", _token_endpoint, None)
        issuer = f.optional("issuer", _issuer_url, None)
        ca_file = f.optional("ca_file", _ca_file, None)
        client_auth: ClientAuth = f.optional(
            "client_auth", lambda v, p: _choice(v, p, CLIENT_AUTH_METHODS), "jwt_svid"
        )
        client_id = f.optional("client_id", _non_empty_string("mcp-agent"), None)
        secret_file = f.optional(
            "client_secret_file", _file_path("/var/run/secrets/sts/client-secret"), None
        )
        sts_audience = f.optional(
            "sts_audience", _non_empty_string("https://sts.example.com"), None
        )
        header = f.optional("subject_token_header", _header_name, "Authorization")
        subject_type = f.optional(
            "subject_token_type", _subject_token_type, TOKEN_TYPES["access_token"]
        )
        actor_token = f.optional("actor_token", _boolean, True)
        resource = f.optional("resource", _resource_url, None)
        audience = f.optional(
            "audience", _non_empty_string("spiffe://example.org/ns/mcp/sa/x"), None
        )
        scopes: tuple[str, ...] = f.optional(
            "scopes", lambda v, p: self.strings(v, p, "scopes like mcp:tools", _scope), ()
        )
        timeout = f.optional("timeout", _timeout, 5.0)
        refresh_before = f.optional("refresh_before", parse_duration, 30.0)
        if ("token_endpoint" in f) == ("issuer" in f):
            self.error(
                path,
                "give exactly one of token_endpoint (the STS's token URL) and issuer (its token "
                "endpoint is then discovered from the issuer's metadata)",
            )
            f.failed = True
        if "resource" not in f and "audience" not in f:
            self.error(
                path,
                "give resource (the server's URL, RFC 8707: what its inbound.oauth.audience is) "
                "and/or audience: an exchanged token must be addressed to exactly this server",
            )
            f.failed = True
        if client_auth == "client_secret":
            for key in ("client_id", "client_secret_file"):
                if key not in f:
                    self.error(_join(path, key), "required with client_auth: client_secret")
                    f.failed = True
        elif "client_secret_file" in f:
            self.error(
                _join(path, "client_secret_file"),
                "only used with client_auth: client_secret (with jwt_svid the JWT-SVID "
                "authenticates this workload)",
            )
            f.failed = True
        if f.failed:
            raise _Failed
        return TokenExchangeConfig(
            token_endpoint=token_endpoint,
            issuer=issuer,
            ca_file=ca_file,
            client_auth=client_auth,
            client_id=client_id,
            client_secret_file=secret_file,
            sts_audience=sts_audience or issuer or token_endpoint or "",
            subject_token_header=header,
            subject_token_type=subject_type,
            actor_token=actor_token,
            resource=resource,
            audience=audience,
            scopes=scopes,
            timeout=timeout,
            refresh_before=refresh_before,
        )

    # -- multiplexing (outbound routes and edge-gateway inbound)

    def mux(self, f: _Fields, path: str) -> MuxConfig | None:
        """The ``MUX_KEYS`` of a route or an inbound section: None without ``targets`` (the
        other keys are then errors) or when they have problems (recorded, ``f.failed``)."""
        if "targets" not in f:
            for key in MUX_KEYS[1:]:
                if key in f:
                    self.error(
                        _join(path, key),
                        "only used with targets (an endpoint multiplexing several MCP servers)",
                    )
                    f.failed = True
            return None
        defaults = MuxConfig(targets=())
        targets = f.optional("targets", self.targets, None)
        prefix_mode: PrefixMode = f.optional(
            "prefix_mode", lambda v, p: _choice(v, p, PREFIX_MODES), defaults.prefix_mode
        )
        idle = f.optional("session_idle", _timeout, defaults.session_idle)
        max_sessions = f.optional(
            "max_sessions", _whole_number(1, 1_000_000), defaults.max_sessions
        )
        target_wait = f.optional("target_wait", _timeout, defaults.target_wait)
        if targets is None:
            return None
        return MuxConfig(
            targets=targets,
            prefix_mode=prefix_mode,
            session_idle=idle,
            max_sessions=max_sessions,
            target_wait=target_wait,
        )

    def check_rule_names(self, mux: MuxConfig, policy: Policy, path: str) -> None:
        """An edge gateway's rules see multiplexed names (``math__add``): a rule naming a bare
        tool, or a target that does not exist, could never match - for a deny rule, a silent
        allow. Known at start-up, so refused here."""
        naming = Naming.of([t.name for t in mux.targets], mux.prefix_mode)
        for index, rule in enumerate(policy.rules):
            for key, globs in (("tools", rule.tools), ("prompts", rule.prompts)):
                for glob in globs or ():
                    problem = pattern_problem(naming, glob.text)
                    if problem is not None:
                        self.error(f"{path}.rules[{index}].{key}", problem)

    def targets(self, value: object, path: str) -> tuple[TargetConfig, ...]:
        items = self.sequence(value, path, "targets (name, upstream, server_spiffe_id)")
        if not items:
            raise ConfigError(path, "at least one target is required")
        targets: list[TargetConfig] = []
        failed = False
        names: dict[str, int] = {}
        servers: dict[tuple[str, str | None], int] = {}
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            try:
                target = self.target(item, item_path)
            except _Failed:
                failed = True
                continue
            if target.name in names:
                self.error(
                    f"{item_path}.name",
                    f"duplicate target name {target.name!r} (also {path}[{names[target.name]}])",
                )
                failed = True
            names.setdefault(target.name, index)
            server = (target.upstream, target.path)
            if server in servers:
                self.error(
                    f"{item_path}.upstream",
                    f"the same server as {path}[{servers[server]}] ({target.upstream}"
                    f"{target.path or ''}): every one of its names would be served twice",
                )
                failed = True
            servers.setdefault(server, index)
            targets.append(target)
        if failed:
            raise _Failed
        return tuple(targets)

    def target(self, value: object, path: str) -> TargetConfig:
        f = self.fields(value, path, TARGET_SCHEMA)
        name = f.required("name", _target_name, "a short unique name, e.g. math")
        upstream = f.required(
            "upstream", _sidecar_url, "the server sidecar's URL, e.g. https://math.mcp.svc:8443"
        )
        server_spiffe_id = f.required(
            "server_spiffe_id",
            _server_spiffe_id,
            "the exact SPIFFE ID the server must present, e.g. spiffe://example.org/ns/mcp/sa/math",
        )
        target_path = f.optional("path", _path_prefix, None)
        audience = f.optional("jwt_svid_audience", _jwt_svid_audience, None)
        if f.failed or name is None or upstream is None or server_spiffe_id is None:
            raise _Failed
        return TargetConfig(
            name=name,
            upstream=upstream,
            server_spiffe_id=server_spiffe_id,
            path=target_path,
            jwt_svid_audience=audience,
            sni=_default_sni(upstream),
        )


_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_NOT_SUBJECT_HEADERS = frozenset(
    {"host", "connection", "content-length", "transfer-encoding", "te", "upgrade", "cookie"}
)


def _header_name(value: object, path: str) -> str:
    text = _string(value, path, "Authorization")
    if not _HEADER_NAME_RE.fullmatch(text):
        raise ConfigError(path, f"not an HTTP header name: {_short(text)}")
    if text.lower() in _NOT_SUBJECT_HEADERS or text.lower().startswith("mcp-"):
        raise ConfigError(path, f"{_short(text)} cannot carry the user's token")
    return text


def _ca_file(value: object, path: str) -> str:
    """A PEM file of CA certificates, loaded once here so a typo is a config error."""
    text = _file_path("/etc/mcp-sidecar/sts-ca.pem")(value, path)
    try:
        ssl.create_default_context(cafile=text)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(path, f"cannot load CA certificates from {_short(text)}: {exc}") from None
    return text


def _subject_token_type(value: object, path: str) -> str:
    text = _string(value, path, "access_token")
    if text in TOKEN_TYPES:
        return TOKEN_TYPES[text]
    if text.startswith("urn:") and _URL_TEXT_RE.fullmatch(text):
        return text
    raise ConfigError(
        path,
        f"expected one of {', '.join(TOKEN_TYPES)} or a token type URI (urn:...), got "
        f"{_short(text)}",
    )


def _file_path(like: str) -> _Parse[str]:
    def parse(value: object, path: str) -> str:
        text = _string(value, path, like)
        if not text or "\x00" in text:
            raise ConfigError(path, f"expected a file path like {like}")
        return text

    return parse


def _sidecar_url(value: object, path: str) -> str:
    return _url(
        value,
        path,
        "https",
        "https://math.mcp.svc:8443",
        "routes always originate mTLS to the server's sidecar",
    )


def _target_name(value: object, path: str) -> str:
    text = _string(value, path, "math")
    problem = target_name_problem(text)
    if problem is not None:
        raise ConfigError(path, problem)
    return text


def _whole_number(low: int, high: int) -> _Parse[int]:
    def parse(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(
                path, f"expected a whole number from {low} to {high}, got {_got(value)}"
            )
        return value

    return parse


def _valid_or_none(parse: _Parse[_T], value: object) -> _T | None:
    try:
        return parse(value, "")
    except ConfigError:
        return None


def _mtls(value: object, path: str) -> MtlsMode:
    if value is False:
        raise ConfigError(
            path, "expected 'required' or 'off', got boolean false (quote it: mtls: 'off')"
        )
    return _choice(value, path, MTLS_MODES)


def _scheduler(value: object, path: str) -> Scheduler:
    return _choice(value, path, SCHEDULERS)


def _log_level(value: object, path: str) -> LogLevel:
    return _choice(value.lower() if isinstance(value, str) else value, path, LOG_LEVELS)


def _unknown_key_message(key: str, schema: str) -> str:
    message = f"unknown key {_short(key)}"
    homes = [name for name, keys in SCHEMA.items() if key in keys and name != schema]
    homes += [k.rpartition(".")[0] for k in UNSUPPORTED_KEYS if k.rpartition(".")[2] == key]
    # a real key of another section is a typo only if nearly the same as one here
    # (``audience`` for ``audiences``), not when merely alike (``max_requests`` in ``limits``)
    close = difflib.get_close_matches(key, SCHEMA[schema], n=1, cutoff=0.9 if homes else 0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    if homes:
        where = " or ".join(repr(_display_schema(home)) for home in homes)
        return f"{message}; it belongs under {where}"
    return f"{message}; expected one of: {', '.join(SCHEMA[schema])}"


def _display_schema(schema: str) -> str:
    return schema.replace("[]", "[i]") if schema else "the top level"


# -------------------------------------------------------------------------------------- entry


def parse_config(data: object) -> Config:
    """Validate already-loaded data (e.g. ``yaml.safe_load`` output) into a ``Config``.

    Raises ``ConfigErrors`` listing every problem found; never any other exception.
    """
    parser = _Parser()
    try:
        config = parser.config(data)
    except _Failed:
        raise ConfigErrors(parser.problems) from None
    return config


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file. Unreadable files and YAML syntax errors are
    ``ConfigErrors`` too (path = the file name); other problems carry their line number."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigErrors([ConfigError(source, f"cannot read the file: {reason}")]) from None
    return load_config_text(raw, source=source)


def load_config_text(text: str | bytes, *, source: str = "<config>") -> Config:
    """Like ``load_config`` for YAML already in memory; ``source`` names it in errors."""
    try:
        lines, problems, data = _compose_and_construct(text)
    except yaml.MarkedYAMLError as exc:
        raise ConfigErrors([ConfigError(source, _yaml_message(exc))]) from None
    except yaml.YAMLError as exc:  # e.g. ReaderError: bad encoding, control characters
        message = " ".join(str(exc).split())  # one line: check-config prints one per line
        raise ConfigErrors([ConfigError(source, f"invalid YAML: {message}")]) from None
    except RecursionError:
        raise ConfigErrors([ConfigError(source, "invalid YAML: nested too deeply")]) from None
    try:
        config = parse_config(data)
    except ConfigErrors as exc:
        problems.extend(_with_line(problem, lines) for problem in exc.problems)
    else:
        if not problems:
            return config
    raise ConfigErrors(problems)


# ---------------------------------------------------------------------------------------- YAML

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans (YAML 1.2): ``mtls: off`` is the string
    "off" and ``forward_authorization: yes`` is a type error, not a silent ``True``."""


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _compose_and_construct(text: str | bytes) -> tuple[dict[str, int], list[ConfigError], object]:
    loader = _StrictLoader(text)  # may raise ReaderError (bad encoding, control characters)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, [], None
        lines, duplicates = _scan(node)
        return lines, duplicates, loader.construct_document(node)
    finally:
        loader.dispose()


def _scan(root: Node) -> tuple[dict[str, int], list[ConfigError]]:
    """Walk the composed YAML: the line of every key path, and every duplicate key."""
    lines: dict[str, int] = {}
    duplicates: list[tuple[int, ConfigError]] = []
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # aliases share nodes: visit each once (no billion laughs)
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                item_path = f"{path}[{index}]"
                lines.setdefault(item_path, item.start_mark.line + 1)
                stack.append((item, item_path))
        elif isinstance(node, MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # '<<: *defaults' merges into this very mapping
                    merged = (
                        value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                    )
                    stack.extend((item, path) for item in merged)
                    continue
                if not isinstance(key_node, ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                key_path = _join(path, str(key_node.value))
                identity = (key_node.tag, str(key_node.value))
                if identity in first_line:
                    duplicates.append(
                        (
                            line,
                            ConfigError(
                                key_path,
                                f"duplicate key (first at line {first_line[identity]}, again at "
                                f"line {line}); a security config must not be ambiguous",
                            ),
                        )
                    )
                    continue
                first_line[identity] = line
                lines.setdefault(key_path, line)
                stack.append((value_node, key_path))
    duplicates.sort(key=lambda item: item[0])
    return lines, [problem for _, problem in duplicates]


def _with_line(problem: ConfigError, lines: Mapping[str, int]) -> ConfigError:
    line = lines.get(problem.path)
    if line is None:
        return problem
    return ConfigError(problem.path, f"{problem_detail(problem)} (line {line})")


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = exc.problem or exc.context or "syntax error"
    message = f"invalid YAML{where}: {' '.join(what.split())}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return message
