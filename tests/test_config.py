"""Config parsing: frozen dataclasses, every problem reported at once with its key path."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar import config as config_module
from sidecar.config import (
    JWT_ALGORITHMS,
    ROOT,
    SCHEMA,
    UNSUPPORTED_KEYS,
    AdminConfig,
    CircuitBreakers,
    Config,
    ConfigErrors,
    InboundConfig,
    JwtSvidConfig,
    Limits,
    ListenAddress,
    LogConfig,
    McpPolicyConfig,
    OAuthConfig,
    OutboundConfig,
    RouteConfig,
    TokenExchangeConfig,
    load_config,
    load_config_text,
    parse_config,
    parse_duration,
    parse_size,
    problem_detail,
)
from sidecar.errors import ConfigError
from sidecar.mcp.policy import (
    CONSTRAINT_KEYS,
    POLICY_KEYS,
    RULE_KEYS,
    WHEN_KEYS,
    Policy,
    load_policy_file,
)
from sidecar.mcp.ratelimit import RATE_LIMIT_KEYS, RateLimit
from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
DOCS = REPO / "docs" / "configuration.md"
POLICY_FILE_IN_DOCS = "/etc/mcp-sidecar/policy.yaml"
"""The policy file the docs' file-form example loads (the test substitutes a real file)."""

FULL = """\
trust_domain: example.org
workload_api: unix:///run/spire/sockets/agent.sock
admin:
  listen: 0.0.0.0:15000
inbound:
  listen: 0.0.0.0:8443
  upstream: http://127.0.0.1:8000/
  mtls: required
  allow_spiffe_ids:
    - spiffe://example.org/ns/agents/sa/*
    - spiffe://partner.example/ns/research/**
  allowed_origins: ["HTTPS://App.Example.com:443", "http://localhost:3000"]
  forward_authorization: true
  limits:
    max_request_body: 1MB
    max_header_size: 8KiB
    header_timeout: 2s
    keepalive_timeout: 30
    connect_timeout: 250ms
    idle_timeout: 1.5m
    total_timeout: 1h
    sse_heartbeat: 0
outbound:
  listen: "[::1]:15001"
  allowed_origins: []
  limits: {max_request_body: 2048}
  routes:
    - name: math
      path_prefix: /math
      upstream: https://Math.MCP.svc:8443
      server_spiffe_id: spiffe://example.org/ns/mcp/sa/math
    - name: search_2
      path_prefix: /
      host: Search.Local:15001
      upstream: https://search.partner.example
      server_spiffe_id: spiffe://partner.example/ns/mcp/sa/search
      strip_prefix: false
log:
  level: DEBUG
  access_log: false
shutdown:
  drain_timeout: 30s
"""


FULL_TOKENS = """\
trust_domain: example.org
inbound:
  listen: 0.0.0.0:8443
  upstream: http://127.0.0.1:8000
  public_url: HTTPS://MCP.Example.com:443
  mtls: required
  allow_spiffe_ids: [spiffe://example.org/ns/agents/sa/*]
  jwt_svid:
    audiences:
      - spiffe://example.org/ns/mcp/sa/math
      - https://mcp.example.com/mcp
      - spiffe://example.org/ns/mcp/sa/math
    bind_to_peer: false
    leeway: 1m
    algorithms: [ES256, PS512]
  oauth:
    issuer: https://Auth.Example.com/realms/mcp/
    audience: https://mcp.example.com/mcp
    jwks:
      keys:
        - {kty: RSA, kid: "2024-05", use: sig, alg: RS256, n: abc, e: AQAB}
        - {kty: EC, kid: ec-1, crv: P-256, x: xx, y: "yy"}
    discovery: false
    required_scopes: [mcp:tools, mcp:tools]
    scopes_supported: [mcp:tools, mcp:resources]
    authorization_servers: [https://auth.example.com/realms/mcp/, http://127.0.0.1:9000]
    typ: at+jwt
    leeway: 0
    algorithms: [RS256]
    jwks_cache_ttl: 10m
    jwks_refresh_interval: 250ms
    require_cnf: true
    roles_claim: realm_roles
    groups_claim: grp
outbound:
  listen: 127.0.0.1:15001
  routes:
    - name: math
      upstream: https://math.mcp.svc:8443
      server_spiffe_id: spiffe://example.org/ns/mcp/sa/math
      jwt_svid_audience: spiffe://example.org/ns/mcp/sa/math
"""

ISSUER = "https://auth.example.com"
RESOURCE = "https://mcp.example.com/mcp"
RSA_KEY: dict[Any, Any] = {"kty": "RSA", "kid": "k1", "n": "abc", "e": "AQAB"}


def base() -> dict[str, Any]:
    """A minimal valid config with both sides, as plain data (for parse_config)."""
    return {
        "trust_domain": "example.org",
        "inbound": {
            "listen": "0.0.0.0:8443",
            "upstream": "http://127.0.0.1:8000",
            "allow_spiffe_ids": ["spiffe://example.org/ns/agents/sa/*"],
        },
        "outbound": {
            "listen": "127.0.0.1:15001",
            "routes": [
                {
                    "name": "math",
                    "path_prefix": "/math",
                    "upstream": "https://math.mcp.svc:8443",
                    "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/math",
                }
            ],
        },
    }


def with_tokens() -> dict[str, Any]:
    """``base()`` with both token layers on top of mTLS."""
    data = base()
    data["inbound"]["jwt_svid"] = {"audiences": ["spiffe://example.org/ns/mcp/sa/math"]}
    data["inbound"]["oauth"] = {"issuer": ISSUER, "audience": RESOURCE}
    return data


def oauth_only() -> dict[str, Any]:
    """An OAuth-only ingress: ``mtls: off``, no allowlist, ``oauth``."""
    data = base()
    del data["outbound"]
    data["inbound"] = {
        "listen": "0.0.0.0:8080",
        "upstream": "http://127.0.0.1:8000",
        "mtls": "off",
        "oauth": {"issuer": ISSUER, "audience": RESOURCE, "jwks_uri": f"{ISSUER}/jwks"},
    }
    return data


def problems_of(data: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(data)
    return [(p.path, problem_detail(p)) for p in info.value.problems]


def yaml_problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        load_config_text(textwrap.dedent(text), source="test.yaml")
    return [(p.path, problem_detail(p)) for p in info.value.problems]


def only(problems: list[tuple[str, str]]) -> tuple[str, str]:
    assert len(problems) == 1, problems
    return problems[0]


def with_change(path: str, value: object) -> dict[str, Any]:
    """``base()`` with ``value`` at ``path``; ``...`` deletes the key instead."""
    data = base()
    if value is ...:
        parent, _, key = path.rpartition(".")
        target: Any = data
        for part in re.findall(r"[^.\[\]]+", parent):
            target = target[int(part)] if part.isdigit() else target[part]
        del target[key]
        return data
    return _set(data, path, value)


# ------------------------------------------------------------------------------------ valid


def test_full_config_round_trips_to_the_expected_dataclasses() -> None:
    config = load_config_text(FULL)
    assert config == Config(
        trust_domain="example.org",
        workload_api="unix:///run/spire/sockets/agent.sock",
        admin=AdminConfig(listen=ListenAddress("0.0.0.0", 15000)),
        inbound=InboundConfig(
            listen=ListenAddress("0.0.0.0", 8443),
            upstream="http://127.0.0.1:8000",
            mtls="required",
            allow_spiffe_ids=Allowlist.from_strings(
                [
                    "spiffe://example.org/ns/agents/sa/*",
                    "spiffe://partner.example/ns/research/**",
                ]
            ),
            allowed_origins=("https://app.example.com", "http://localhost:3000"),
            forward_authorization=True,
            limits=Limits(
                max_request_body=1_000_000,
                max_header_size=8192,
                header_timeout=2.0,
                keepalive_timeout=30.0,
                connect_timeout=0.25,
                idle_timeout=90.0,
                total_timeout=3600.0,
                sse_heartbeat=0.0,
            ),
        ),
        outbound=OutboundConfig(
            listen=ListenAddress("::1", 15001),
            allow_non_loopback=False,
            allowed_origins=(),
            limits=Limits(max_request_body=2048),
            routes=(
                RouteConfig(
                    name="math",
                    path_prefix="/math",
                    host=None,
                    upstream="https://math.mcp.svc:8443",
                    server_spiffe_id=SpiffeId.parse("spiffe://example.org/ns/mcp/sa/math"),
                    strip_prefix=True,
                    sni="math.mcp.svc",
                ),
                RouteConfig(
                    name="search_2",
                    path_prefix="/",
                    host="search.local:15001",
                    upstream="https://search.partner.example:443",
                    server_spiffe_id=SpiffeId.parse("spiffe://partner.example/ns/mcp/sa/search"),
                    strip_prefix=False,
                    sni="search.partner.example",
                ),
            ),
        ),
        log=LogConfig(level="debug", access_log=False),
        drain_timeout=30.0,
    )
    assert config.inbound is not None
    assert config.inbound.allow_spiffe_ids.allows(
        SpiffeId.parse("spiffe://example.org/ns/agents/sa/planner")
    )
    assert not config.inbound.allow_spiffe_ids.allows(
        SpiffeId.parse("spiffe://example.org/ns/mcp/sa/math")
    )


def test_defaults() -> None:
    data = base()
    del data["outbound"]["routes"][0]["path_prefix"]
    config = parse_config(data)
    assert config.workload_api is None
    assert config.admin == AdminConfig() == AdminConfig(listen=ListenAddress("127.0.0.1", 15000))
    assert config.log == LogConfig(level="info", access_log=True)
    assert config.drain_timeout == 10.0
    assert config.inbound is not None and config.outbound is not None
    assert config.inbound.mtls == "required"
    assert config.inbound.allowed_origins == ()
    assert config.inbound.forward_authorization is False
    assert config.inbound.limits == config.outbound.limits == Limits()
    assert Limits() == Limits(
        max_request_body=4 * 1024 * 1024,
        max_header_size=16 * 1024,
        header_timeout=10.0,
        keepalive_timeout=75.0,
        connect_timeout=5.0,
        idle_timeout=60.0,
        total_timeout=300.0,
        sse_heartbeat=15.0,
    )
    assert config.outbound.allow_non_loopback is False
    route = config.outbound.routes[0]
    assert (route.path_prefix, route.host, route.strip_prefix) == ("/", None, True)


def test_empty_sections_take_their_defaults() -> None:
    data = base()
    data.update(admin=None, log=None, shutdown=None)
    data["inbound"]["limits"] = None
    config = parse_config(data)
    assert (config.admin, config.log, config.drain_timeout) == (AdminConfig(), LogConfig(), 10.0)
    assert config.inbound is not None and config.inbound.limits == Limits()
    problems = problems_of(with_change("inbound", None))
    assert [path for path, _ in problems] == [
        "inbound.listen",
        "inbound.upstream",
        "inbound.allow_spiffe_ids",
    ]


def test_inbound_only_and_outbound_only_are_both_fine() -> None:
    inbound_only = base()
    del inbound_only["outbound"]
    assert parse_config(inbound_only).outbound is None
    outbound_only = base()
    del outbound_only["inbound"]
    assert parse_config(outbound_only).inbound is None


def test_federated_server_ids_and_allowlist_entries_are_fine() -> None:
    data = with_change(
        "outbound.routes[0].server_spiffe_id", "spiffe://partner.example/ns/mcp/sa/math"
    )
    data["inbound"]["allow_spiffe_ids"] = ["spiffe://partner.example/ns/agents/sa/x"]
    config = parse_config(data)
    assert config.outbound is not None
    server_id = config.outbound.routes[0].server_spiffe_id
    assert server_id is not None and server_id.trust_domain == "partner.example"


@pytest.mark.parametrize(
    "name", ["inbound.yaml", "outbound.yaml", "oauth-ingress.yaml", "policy.yaml"]
)
def test_examples_pass(name: str) -> None:
    config = load_config(EXAMPLES / name)
    assert config.trust_domain == "example.org"
    assert (config.outbound if name == "outbound.yaml" else config.inbound) is not None


def test_examples_show_the_token_layer() -> None:
    inbound = load_config(EXAMPLES / "inbound.yaml").inbound
    assert inbound is not None and inbound.jwt_svid is not None
    assert inbound.jwt_svid.bind_to_peer
    outbound = load_config(EXAMPLES / "outbound.yaml").outbound
    assert outbound is not None
    assert outbound.routes[0].jwt_svid_audience == "spiffe://example.org/ns/mcp/sa/math"
    ingress = load_config(EXAMPLES / "oauth-ingress.yaml").inbound
    assert ingress is not None and ingress.oauth is not None
    assert (ingress.mtls, len(ingress.allow_spiffe_ids)) == ("off", 0)
    assert ingress.resource_metadata_url == (
        "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    )


def test_examples_show_the_policy_and_rate_limits() -> None:
    inbound = load_config(EXAMPLES / "inbound.yaml").inbound
    assert inbound is not None and inbound.mcp_policy is not None
    assert inbound.mcp_policy.file is None
    assert inbound.mcp_policy.policy.default == "deny"
    assert [r.effect for r in inbound.mcp_policy.policy.rules] == ["allow", "allow", "deny"]
    assert [r.per for r in inbound.rate_limits] == ["principal", "principal_tool"]
    scenario = load_config(EXAMPLES / "policy.yaml").inbound
    assert scenario is not None and scenario.mcp_policy is not None
    assert scenario.jwt_svid is not None and scenario.oauth is not None  # agents + people
    assert [r.name for r in scenario.mcp_policy.policy.rules] == [
        "admins-echo",
        "users-time",
        "agents-add",
        "agents-no-multiply",
    ]


def test_yaml_blocks_in_the_docs_are_valid(tmp_path: Path) -> None:
    """Every ```yaml block is a complete config, or a policy file (``default:`` first) that the
    next blocks' ``file: /etc/mcp-sidecar/policy.yaml`` loads."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert len(blocks) >= 2
    policy_file = tmp_path / "policy.yaml"
    file_forms = 0
    for block in blocks:
        if block.startswith("default:"):
            policy_file.write_text(block)
            load_policy_file(policy_file)
            continue
        if POLICY_FILE_IN_DOCS in block:
            assert policy_file.exists(), "show the policy file before the config loading it"
            block = block.replace(POLICY_FILE_IN_DOCS, str(policy_file))
            file_forms += 1
        load_config_text(block, source="docs/configuration.md")
    assert file_forms >= 1, "the docs show no file-form inbound.mcp_policy"


def test_every_key_is_documented() -> None:
    docs = DOCS.read_text()
    for section, keys in SCHEMA.items():
        for key in keys:
            assert f"| `{key}` |" in docs, f"{section}.{key} is not documented"
        if section:
            assert section.replace("[]", "[i]") in docs or section in docs
    for key in UNSUPPORTED_KEYS:
        assert f"`{key.replace('[]', '[i]')}`" in docs
    # the keys parsed by sidecar.mcp (policy documents, rate limits) have their tables too
    for key in (*POLICY_KEYS, *RULE_KEYS, *WHEN_KEYS, *CONSTRAINT_KEYS, *RATE_LIMIT_KEYS):
        assert f"| `{key}` |" in docs, f"{key} is not documented"
    for section in (
        "`inbound.mcp_policy`",
        "`inbound.mcp_policy.rules[i]`",
        "`inbound.mcp_policy.rules[i].when`",
        "`inbound.mcp_policy.rules[i].arguments.NAME`",
        "`inbound.rate_limits[i]`",
        "## MCP policy and rate limits",
    ):
        assert section in docs
    assert "not supported yet" not in docs.lower()


def test_docs_state_the_error_codes_and_metrics() -> None:
    docs = DOCS.read_text()
    for text in (
        "-32001",
        "-32029",
        "403",
        "429",
        "Retry-After",
        "mcp_sidecar_mcp_requests_total",
        "mcp_sidecar_policy_reload_errors_total",
        "mcp-sidecar explain",
    ):
        assert text in docs, text


def test_dataclasses_are_frozen() -> None:
    config = load_config_text(FULL)
    assert config.inbound is not None and config.outbound is not None
    tokens = load_config_text(FULL_TOKENS).inbound
    assert tokens is not None and tokens.jwt_svid is not None and tokens.oauth is not None
    objects: list[object] = [
        config,
        config.admin,
        config.log,
        config.inbound,
        config.inbound.limits,
        config.inbound.listen,
        config.outbound,
        config.outbound.routes[0],
        tokens.jwt_svid,
        tokens.oauth,
        McpPolicyConfig(policy=Policy("deny")),
        RateLimit(rate=1.0, burst=1, per="principal"),
    ]
    for obj in objects:
        field = dataclasses.fields(obj)[0].name  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, field, None)
    assert isinstance(config.outbound.routes, tuple)
    assert isinstance(config.inbound.allowed_origins, tuple)
    hash(config.outbound.routes[0])
    hash(tokens.jwt_svid)
    hash(tokens.oauth)


def test_summary_names_listeners_routes_and_allowlist_size() -> None:
    lines = load_config_text(FULL).summary()
    text = "\n".join(lines)
    assert "inbound: 0.0.0.0:8443 -> http://127.0.0.1:8000" in text
    assert "2 allowed SPIFFE ID patterns" in text
    assert "outbound: [::1]:15001; 2 routes" in text
    assert "route math: /math -> https://math.mcp.svc:8443" in text
    assert "route search_2: search.local:15001/ -> https://search.partner.example:443" in text


# ----------------------------------------------------------------------------- listen addresses


@pytest.mark.parametrize(
    ("text", "host", "port", "shown", "loopback"),
    [
        ("127.0.0.1:15001", "127.0.0.1", 15001, "127.0.0.1:15001", True),
        ("127.9.9.9:1", "127.9.9.9", 1, "127.9.9.9:1", True),
        ("0.0.0.0:8443", "0.0.0.0", 8443, "0.0.0.0:8443", False),
        ("[::1]:8443", "::1", 8443, "[::1]:8443", True),
        ("[0:0::1]:8443", "::1", 8443, "[::1]:8443", True),
        ("[::]:8443", "::", 8443, "[::]:8443", False),
        ("LocalHost:0", "localhost", 0, "localhost:0", True),
        ("10.0.0.7:65535", "10.0.0.7", 65535, "10.0.0.7:65535", False),
        ("pod.example.svc:80", "pod.example.svc", 80, "pod.example.svc:80", False),
    ],
)
def test_listen_addresses(text: str, host: str, port: int, shown: str, loopback: bool) -> None:
    address = ListenAddress.parse(text)
    assert (address.host, address.port, str(address), address.is_loopback) == (
        host,
        port,
        shown,
        loopback,
    )


@pytest.mark.parametrize(
    "text",
    [
        "8443",
        "localhost",
        ":8443",
        "::1:8443",
        "[::1]8443",
        "[::1]",
        "[127.0.0.1]:80",
        "1.2.3.4:65536",
        "1.2.3.4:-1",
        "1.2.3.4:",
        "1.2.3.4:http",
        "256.1.1.1:80",
        "exa mple:80",
        "host_ü:80",
        "1.2.3.4:٨٠",
    ],
)
def test_bad_listen_address(text: str) -> None:
    path, message = only(problems_of(with_change("inbound.listen", text)))
    assert path == "inbound.listen"
    assert message.startswith("not a host:port address"), message


def test_listen_of_the_wrong_type_names_the_expected_type() -> None:
    data = base()
    data["admin"] = {"listen": ["127.0.0.1", 15000]}
    assert only(problems_of(data)) == (
        "admin.listen",
        "expected a string like 127.0.0.1:15000, got list",
    )
    assert only(problems_of(with_change("inbound.listen", 8443))) == (
        "inbound.listen",
        "expected a string like 0.0.0.0:8443, got integer 8443",
    )


def test_listeners_may_not_share_a_port() -> None:
    data = with_change("outbound.listen", "127.0.0.1:8443")
    data["admin"] = {"listen": "127.0.0.1:15001"}
    path, message = only(problems_of(data))
    assert path == "outbound.listen"
    assert "conflicts with inbound.listen (0.0.0.0:8443)" in message
    # port 0 (tests) never conflicts; the same port on two specific addresses is fine
    data = with_change("outbound.listen", "127.0.0.1:0")
    data["admin"] = {"listen": "127.0.0.2:0"}
    data["inbound"]["listen"] = "127.0.0.3:15001"
    parse_config(data)


# ------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("path", "suggestion"),
    [
        ("trust_domian", "did you mean 'trust_domain'?"),
        ("inbound.listne", "did you mean 'listen'?"),
        ("inbound.allowed_spiffe_ids", "did you mean 'allow_spiffe_ids'?"),
        ("inbound.limits.max_body", "did you mean 'max_request_body'?"),
        ("outbound.routes[0].server_id", "did you mean 'server_spiffe_id'?"),
        ("outbound.route", "did you mean 'routes'?"),
        ("log.levle", "did you mean 'level'?"),
        ("routes", "it belongs under 'outbound'"),
        ("inbound.drain_timeout", "it belongs under 'shutdown'"),
        ("outbound.server_spiffe_id", "it belongs under 'outbound.routes[i]' or 'targets[i]'"),
        ("admin.zzz", "expected one of: listen"),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(path: str, suggestion: str) -> None:
    reported_path, message = only(problems_of(_set(base(), path, "x")))
    assert reported_path == path
    key = path.rpartition(".")[2]
    assert message == f"unknown key {key!r}; {suggestion}"


def _set(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """Set ``value`` at a dotted path (``[i]`` indexes lists), creating missing mappings."""
    parts = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", path)]
    target: Any = data
    for part in parts[:-1]:
        target = target.setdefault(part, {}) if isinstance(part, str) else target[part]
    target[parts[-1]] = value
    return data


def test_non_string_and_odd_keys() -> None:
    data: dict[Any, Any] = base()  # an integer key on purpose
    data[1] = "x"
    data["inbound"]["a b"] = "x"
    problems = problems_of(data)
    assert (ROOT, "keys must be strings, got integer 1") in problems
    assert (
        "inbound['a b']",
        "unknown key 'a b'; expected one of: " + ", ".join(SCHEMA["inbound"]),
    ) in problems


# ----------------------------------------------------------------------- unsupported features


def test_no_designed_feature_is_unsupported_any_more() -> None:
    assert dict(UNSUPPORTED_KEYS) == {}
    assert {"mcp_policy", "rate_limits"} <= set(SCHEMA["inbound"])


def test_unsupported_keys_are_still_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mechanism stays for the next designed-but-unbuilt feature."""
    monkeypatch.setattr(config_module, "UNSUPPORTED_KEYS", {"inbound.future": "a future feature"})
    reported_path, message = only(problems_of(_set(base(), "inbound.future", {"x": True})))
    assert reported_path == "inbound.future"
    assert message.startswith("not supported by this version yet (a future feature)")
    assert "silently allow" in message


# --------------------------------------------------------------------- MCP policy, rate limits

POLICY_YAML = """\
trust_domain: example.org
inbound:
  listen: 0.0.0.0:8443
  upstream: http://127.0.0.1:8000
  allow_spiffe_ids: [spiffe://example.org/ns/agents/sa/*]
  mcp_policy:
    default: deny
    rules:
      - name: agents-add
        when:
          spiffe_ids: ["spiffe://example.org/ns/agents/**"]
        tools: [add]
        arguments:
          a: {min: -1000, max: 1000}
          b: {max: 1000, optional: true}
      - name: agents-no-multiply
        effect: deny
        when:
          spiffe_ids: ["spiffe://example.org/ns/agents/**"]
        tools: [multiply]
      - name: readers
        when: {roles: [reader], scopes: [mcp:read], claims: {tenant: [acme, 7]}}
        resources: ["file:///docs/*"]
  rate_limits:
    - {per: principal, rate: 10/s, burst: 20}
    - {per: principal_tool, rate: 600/m, burst: 5, tools: ["search_*"]}
    - {per: principal, rate: 0.5}
"""

POLICY_DOCUMENT = """\
default: allow
rules:
  - name: no-shell
    effect: deny
    tools: ["shell*"]
"""


def _file_form(path: Path, **extra: object) -> dict[str, Any]:
    data = base()
    data["inbound"]["mcp_policy"] = {"file": str(path), **extra}
    return data


def test_no_policy_and_no_rate_limits_by_default() -> None:
    inbound = parse_config(base()).inbound
    assert inbound is not None
    assert (inbound.mcp_policy, inbound.rate_limits) == (None, ())


def test_inline_policy_round_trips() -> None:
    inbound = load_config_text(POLICY_YAML).inbound
    assert inbound is not None and inbound.mcp_policy is not None
    mcp_policy = inbound.mcp_policy
    assert (mcp_policy.file, mcp_policy.reload_interval) == (None, 2.0)
    policy = mcp_policy.policy
    assert policy.default == "deny"
    assert [r.name for r in policy.rules] == ["agents-add", "agents-no-multiply", "readers"]
    assert [r.effect for r in policy.rules] == ["allow", "deny", "allow"]
    add, multiply, readers = policy.rules
    assert [str(g) for g in add.tools or ()] == ["add"]
    assert add.methods == frozenset({"tools/call"})
    assert [str(p) for p in add.when.spiffe_ids or ()] == ["spiffe://example.org/ns/agents/**"]
    assert [(c.name, c.minimum, c.maximum, c.optional) for c in add.arguments] == [
        ("a", -1000, 1000, False),
        ("b", None, 1000, True),
    ]
    assert [str(g) for g in multiply.tools or ()] == ["multiply"]
    assert readers.methods == frozenset(
        {"resources/read", "resources/subscribe", "resources/unsubscribe"}
    )
    assert readers.when.roles == ("reader",)
    assert readers.when.scopes == frozenset({"mcp:read"})
    assert readers.when.claims == (("tenant", ("acme", 7)),)
    hash(mcp_policy)


def test_rate_limits_round_trip() -> None:
    inbound = load_config_text(POLICY_YAML).inbound
    assert inbound is not None
    assert inbound.rate_limits == (
        RateLimit(rate=10.0, burst=20, per="principal"),
        RateLimit(rate=10.0, burst=5, per="principal_tool", tools=("search_*",)),
        RateLimit(rate=0.5, burst=1, per="principal"),  # burst: one second's worth, at least 1
    )


def test_policy_and_rate_limits_work_with_every_token_layer() -> None:
    for data in (oauth_only(), with_tokens()):
        data["inbound"]["mcp_policy"] = {"default": "allow", "rules": []}
        data["inbound"]["rate_limits"] = [{"per": "principal", "rate": "100/h"}]
        inbound = parse_config(data).inbound
        assert inbound is not None and inbound.mcp_policy is not None
        assert inbound.mcp_policy.policy == Policy("allow")
        assert inbound.rate_limits == (RateLimit(rate=100 / 3600, burst=1, per="principal"),)


def test_policy_file_form(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY_DOCUMENT)
    inbound = parse_config(_file_form(policy_file, reload_interval="500ms")).inbound
    assert inbound is not None and inbound.mcp_policy is not None
    assert inbound.mcp_policy.file == str(policy_file)
    assert inbound.mcp_policy.reload_interval == 0.5
    assert inbound.mcp_policy.policy == load_policy_file(policy_file)
    assert inbound.mcp_policy.policy.default == "allow"
    assert [r.name for r in inbound.mcp_policy.policy.rules] == ["no-shell"]
    inbound = parse_config(_file_form(policy_file)).inbound
    assert inbound is not None and inbound.mcp_policy is not None
    assert inbound.mcp_policy.reload_interval == 2.0


def test_policy_file_form_from_yaml_carries_line_numbers(tmp_path: Path) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY_DOCUMENT.replace('["shell*"]', '[""]'))
    text = POLICY_YAML.split("  mcp_policy:")[0] + (
        f"  mcp_policy:\n    file: {policy_file}\n    reload_interval: 2s\n"
    )
    path, message = only(yaml_problems(text))
    assert path == "inbound.mcp_policy.file"
    assert message.startswith(f"{policy_file}: ")
    assert "rules[0].tools[0]: expected a non-empty string" in message
    assert message.endswith("(line 7)")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read the file: No such file or directory"),
        ("default: deny\nrules: [\n", "invalid YAML at line 3"),
        ("default: deny\ndefault: allow\n", "duplicate key"),
        ("default: maybe\n", "default: expected 'deny' or 'allow'"),
        ("default: deny\nrules:\n  - {name: a, tool: [x]}\n", "did you mean 'tools'?"),
        ('default: deny\nrules:\n  - {name: a, tools: [""]}\n', "rules[0].tools[0]"),
        (
            "trust_domain: example.org\ndefault: deny\n",
            "unknown key 'trust_domain'",  # a whole sidecar.yaml is not a policy file
        ),
    ],
)
def test_bad_policy_file_is_reported_under_the_file_key(
    tmp_path: Path, content: str | None, fragment: str
) -> None:
    policy_file = tmp_path / "policy.yaml"
    if content is not None:
        policy_file.write_text(content)
    problems = problems_of(_file_form(policy_file))
    assert problems
    for path, message in problems:
        assert path == "inbound.mcp_policy.file"
        assert message.startswith(f"{policy_file}: ")
    assert any(fragment in message for _, message in problems), problems


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        (
            {"reload_intervl": "2s"},
            "inbound.mcp_policy.reload_intervl",
            "unknown key 'reload_intervl'; did you mean 'reload_interval'?",
        ),
        (
            {"rules": []},
            "inbound.mcp_policy.rules",
            "unknown key 'rules'; expected one of: file, reload_interval",
        ),
        ({"reload_interval": "0s"}, "inbound.mcp_policy.reload_interval", "must be greater than 0"),
        (
            {"dry_run": True},
            "inbound.mcp_policy.dry_run",
            "belongs in the policy file, next to default and rules",
        ),
        (
            {"reload_interval": "soon"},
            "inbound.mcp_policy.reload_interval",
            "not a duration",
        ),
    ],
)
def test_file_form_keys(tmp_path: Path, extra: dict[str, Any], path: str, message: str) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY_DOCUMENT)
    reported_path, reported = only(problems_of(_file_form(policy_file, **extra)))
    assert reported_path == path
    assert reported.startswith(message), reported


@pytest.mark.parametrize("value", [3, None, ["/etc/policy.yaml"]])
def test_file_must_be_a_path(value: object) -> None:
    data = base()
    data["inbound"]["mcp_policy"] = {"file": value}
    path, message = only(problems_of(data))
    assert path == "inbound.mcp_policy.file"
    assert message.startswith("expected a string like /etc/mcp-sidecar/policy.yaml")


@pytest.mark.parametrize(
    ("rules", "path", "fragment"),
    [
        ([{"name": "a", "tools": [""]}], "inbound.mcp_policy.rules[0].tools[0]", "non-empty"),
        (
            [{"name": "a", "tools": ["x"]}, {"name": "b", "when": {"rols": ["admin"]}}],
            "inbound.mcp_policy.rules[1].when.rols",
            "did you mean 'roles'?",
        ),
        (
            [{"name": "a", "when": {"spiffe_ids": ["spiffe://example.org/b*"]}}],
            "inbound.mcp_policy.rules[0].when.spiffe_ids[0]",
            "not a SPIFFE ID pattern",
        ),
        (
            [{"name": "a", "methods": ["Tools/Call"]}],
            "inbound.mcp_policy.rules[0].methods[0]",
            "did you mean 'tools/call'?",
        ),
        (
            [{"name": "a", "methods": ["tools/list"]}],
            "inbound.mcp_policy.rules[0].methods[0]",
            "always allowed",
        ),
        (
            [{"name": "a", "tools": ["x"], "arguments": {"q": {"regex": "(?=a)a"}}}],
            "inbound.mcp_policy.rules[0].arguments.q.regex",
            "RE2 syntax: no backreferences, lookaround",
        ),
        (
            [{"name": "a", "tools": ["x"], "arguments": {"n": {"min": 5, "max": 1}}}],
            "inbound.mcp_policy.rules[0].arguments.n.min",
            "greater than max",
        ),
        (
            [{"name": "a", "tools": ["x"]}, {"name": "a", "tools": ["y"]}],
            "inbound.mcp_policy.rules[1].name",
            "duplicate rule name 'a'",
        ),
        ([{"name": "a", "effect": "block"}], "inbound.mcp_policy.rules[0].effect", "'allow'"),
        ([{"tools": ["x"]}], "inbound.mcp_policy.rules[0].name", "required"),
    ],
)
def test_bad_rule_reports_its_full_path(
    rules: list[dict[str, Any]], path: str, fragment: str
) -> None:
    data = base()
    data["inbound"]["mcp_policy"] = {"default": "deny", "rules": rules}
    reported_path, message = only(problems_of(data))
    assert reported_path == path
    assert fragment in message


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ({"rules": []}, "inbound.mcp_policy.default", "required ('deny' or 'allow')"),
        ("deny", "inbound.mcp_policy", "expected a mapping with keys default, rules"),
        ({"default": "deny", "rule": []}, "inbound.mcp_policy.rule", "did you mean 'rules'?"),
        ({"default": "deny", "rules": {}}, "inbound.mcp_policy.rules", "expected a list of rules"),
    ],
)
def test_bad_policy_document(value: object, path: str, fragment: str) -> None:
    data = base()
    data["inbound"]["mcp_policy"] = value
    reported_path, message = only(problems_of(data))
    assert reported_path == path
    assert fragment in message


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ("10/s", "inbound.rate_limits", "expected a list of rate limits"),
        ([{"per": "principal", "rate": "10/x"}], "inbound.rate_limits[0].rate", "not a rate"),
        ([{"per": "principal", "rate": 0}], "inbound.rate_limits[0].rate", "greater than 0"),
        ([{"rate": 1}], "inbound.rate_limits[0].per", "required"),
        ([{"per": "user", "rate": 1}], "inbound.rate_limits[0].per", "'principal'"),
        ([{"per": "principal"}], "inbound.rate_limits[0].rate", "required"),
        (
            [{"per": "principal", "rate": 1}, {"per": "principal", "rate": 1, "burst": 0}],
            "inbound.rate_limits[1].burst",
            "whole number from 1",
        ),
        (
            [{"per": "principal", "rate": 1, "tools": ["x"]}],
            "inbound.rate_limits[0].tools",
            "only with per: principal_tool",
        ),
        (
            [{"per": "principal", "rate": 1, "brust": 2}],
            "inbound.rate_limits[0].brust",
            "did you mean 'burst'?",
        ),
    ],
)
def test_bad_rate_limit_reports_its_path(value: object, path: str, fragment: str) -> None:
    reported_path, message = only(problems_of(with_change("inbound.rate_limits", value)))
    assert reported_path == path
    assert fragment in message


def test_policy_and_rate_limit_problems_are_reported_with_the_others() -> None:
    problems = yaml_problems(
        """\
        trust_domain: example.org
        inbound:
          listen: 0.0.0.0:8443
          upstream: ftp://127.0.0.1:8000
          allow_spiffe_ids: [spiffe://example.org/a]
          mcp_policy:
            default: deny
            rules:
              - name: a
                tools: [add]
                tools: [multiply]
              - name: b
                when: {rols: [admin]}
                tools: [""]
          rate_limits:
            - {per: principal, rate: fast}
        outbound:
          listen: 127.0.0.1:15001
          routes:
            - {name: math, upstream: "http://m", server_spiffe_id: "spiffe://example.org/m"}
        log: {level: loud}
        """
    )
    paths = [path for path, _ in problems]
    assert sorted(paths) == sorted(
        [
            "inbound.mcp_policy.rules[0].tools",  # duplicate YAML key
            "inbound.upstream",
            "inbound.mcp_policy.rules[1].when.rols",
            "inbound.mcp_policy.rules[1].tools[0]",
            "inbound.rate_limits[0].rate",
            "outbound.routes[0].upstream",
            "log.level",
        ]
    )
    found = dict(problems)
    assert found["inbound.mcp_policy.rules[0].tools"].startswith("duplicate key")
    assert found["inbound.mcp_policy.rules[1].when.rols"].endswith("(line 13)")
    assert found["inbound.mcp_policy.rules[1].tools[0]"].endswith("(line 14)")
    assert found["inbound.rate_limits[0].rate"].endswith("(line 16)")


# ------------------------------------------------------------------------------ inbound rules


def test_mtls_off_needs_oauth() -> None:
    problems = yaml_problems(_yaml_with_inbound_line("  mtls: off"))
    assert problems[0] == (
        "inbound.mtls",
        "'off' requires inbound.oauth or inbound.api_keys (an unauthenticated ingress is "
        "refused) (line 6)",
    )
    # a JWT-SVID alone is not enough either
    data = with_change("inbound.mtls", "off")
    data["inbound"]["allow_spiffe_ids"] = []
    data["inbound"]["jwt_svid"] = {"audiences": ["spiffe://example.org/ns/mcp/sa/math"]}
    assert only(problems_of(data)) == (
        "inbound.mtls",
        "'off' requires inbound.oauth or inbound.api_keys (an unauthenticated ingress is refused)",
    )


def test_mtls_boolean_and_typo() -> None:
    path, message = only(problems_of(with_change("inbound.mtls", False)))
    assert path == "inbound.mtls" and "quote it" in message
    path, message = only(problems_of(with_change("inbound.mtls", "requried")))
    assert (
        message == "expected 'required' or 'off', got string 'requried'; did you mean 'required'?"
    )


def test_empty_allowlist_admits_nobody() -> None:
    path, message = only(problems_of(with_change("inbound.allow_spiffe_ids", [])))
    assert path == "inbound.allow_spiffe_ids"
    assert message.startswith("empty: with mtls: required only peers")
    assert "nobody could" in message
    path, message = only(problems_of(with_change("inbound.allow_spiffe_ids", ...)))
    assert path == "inbound.allow_spiffe_ids"
    assert message.startswith("required: ")


def test_bad_spiffe_patterns_name_each_index() -> None:
    patterns = [
        "spiffe://example.org/ns/agents/sa/*",
        "spiffe://example.org/ns/*x",
        "spiffe://example.org/ns/ok",
        "https://example.org/x",
        42,
        "spiffe://*.example.org/x",
    ]
    problems = problems_of(with_change("inbound.allow_spiffe_ids", patterns))
    assert [path for path, _ in problems] == [
        "inbound.allow_spiffe_ids[1]",
        "inbound.allow_spiffe_ids[3]",
        "inbound.allow_spiffe_ids[4]",
        "inbound.allow_spiffe_ids[5]",
    ]
    assert problems[0][1].startswith("not a SPIFFE ID pattern: ")
    assert "whole segment" in problems[0][1]
    assert "spiffe://" in problems[1][1]
    assert problems[2][1] == (
        "expected a string like spiffe://example.org/ns/agents/sa/*, got integer 42"
    )
    assert "trust domain" in problems[3][1]
    assert only(problems_of(with_change("inbound.allow_spiffe_ids", "spiffe://a/b")))[1] == (
        "expected a list of SPIFFE ID patterns like spiffe://example.org/ns/agents/sa/*, "
        "got string 'spiffe://a/b'"
    )


def test_missing_upstream() -> None:
    path, message = only(problems_of(with_change("inbound.upstream", ...)))
    assert path == "inbound.upstream"
    assert message.startswith("required")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("https://127.0.0.1:8000", "must be an http:// URL"),
        ("127.0.0.1:8000", "not a URL"),
        ("http://127.0.0.1:8000/mcp", "without a path"),
        ("http://127.0.0.1:8000?x=1", "without a path, query or fragment"),
        ("http://user:pw@127.0.0.1:8000", "user info"),
        ("http://127.0.0.1:99999", "not a valid URL"),
        ("http://:8000", "has no host"),
        ("http://bad_host!:80", "bad host"),
        ("http://127.0.0.1:0", "port 0"),
        (["http://127.0.0.1"], "expected a string like http://127.0.0.1:8000, got list"),
    ],
)
def test_bad_inbound_upstream(value: object, fragment: str) -> None:
    path, message = only(problems_of(with_change("inbound.upstream", value)))
    assert path == "inbound.upstream"
    assert fragment in message


def test_upstreams_are_normalised_with_an_explicit_port() -> None:
    data = with_change("inbound.upstream", "HTTP://LocalHost")
    data["outbound"]["routes"][0]["upstream"] = "https://[::1]"
    config = parse_config(data)
    assert config.inbound is not None and config.outbound is not None
    assert config.inbound.upstream == "http://localhost:80"
    assert config.outbound.routes[0].upstream == "https://[::1]:443"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://App.Example.com", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://app.example.com:80", "http://app.example.com"),
        ("https://app.example.com:8443", "https://app.example.com:8443"),
        ("http://[::1]:3000", "http://[::1]:3000"),
    ],
)
def test_origins_are_normalised(value: str, expected: str) -> None:
    config = parse_config(with_change("inbound.allowed_origins", [value, value]))
    assert config.inbound is not None
    assert config.inbound.allowed_origins == (expected,)


@pytest.mark.parametrize(
    "value", ["*", "null", "app.example.com", "https://app.example.com/", "ftp://x", "https://a/b"]
)
def test_bad_origins(value: str) -> None:
    data = with_change("outbound.allowed_origins", ["https://ok.example.com", value])
    path, _ = only(problems_of(data))
    assert path == "outbound.allowed_origins[1]"


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "inbound.forward_authorization",
            "yes",
            "expected true or false, got string 'yes' (write true or false; "
            "yes/no/on/off are strings in this file)",
        ),
        ("inbound.forward_authorization", "true", "expected true or false, got string 'true'"),
        ("outbound.routes[0].strip_prefix", 1, "expected true or false, got integer 1"),
        ("outbound.allow_non_loopback", None, "expected true or false, got null (empty value)"),
        (
            "inbound",
            ["listen"],
            "expected a mapping with keys listen, upstream, public_url, mtls, "
            "allow_spiffe_ids, jwt_svid, oauth, allowed_origins, forward_authorization, limits, "
            "mcp_policy, rate_limits, api_keys, circuit_breakers, targets, prefix_mode, "
            "session_idle, max_sessions, target_wait; got list",
        ),
        ("outbound.routes", {"name": "math"}, "expected a list of routes, got mapping"),
        ("outbound.routes", [], "at least one route is required"),
        (
            "outbound.allowed_origins",
            "https://a.example",
            "expected a list of origins like "
            "https://app.example.com, got string 'https://a.example'",
        ),
        (
            "inbound.limits",
            "4MiB",
            "expected a mapping with keys max_request_body, "
            "max_header_size, header_timeout, keepalive_timeout, connect_timeout, idle_timeout, "
            "total_timeout, sse_heartbeat; got string '4MiB'",
        ),
        ("trust_domain", 3.5, "expected a string like example.org, got number 3.5"),
        (
            "outbound.routes[0].name",
            "Math",
            "'Math' is not a route name: use lowercase letters, "
            "digits, '-' and '_', starting with a letter or digit, at most 63 characters",
        ),
    ],
)
def test_wrong_types_name_the_expected_type(path: str, value: object, message: str) -> None:
    assert only(problems_of(_set(base(), path, value))) == (path, message)


def test_booleans_must_be_real_yaml_booleans() -> None:
    for spelling in ("yes", "on", "Y", "'true'"):
        path, message = only(
            yaml_problems(_yaml_with_inbound_line(f"  forward_authorization: {spelling}"))
        )
        assert path == "inbound.forward_authorization"
        assert message.startswith("expected true or false, got string")
    for spelling, value in (("true", True), ("True", True), ("FALSE", False)):
        config = load_config_text(_yaml_with_inbound_line(f"  forward_authorization: {spelling}"))
        assert config.inbound is not None
        assert config.inbound.forward_authorization is value


def test_top_level_shape() -> None:
    assert only(problems_of(None))[0] == ROOT
    assert only(problems_of(["trust_domain"])) == (
        ROOT,
        "expected a mapping with keys trust_domain, workload_api, admin, inbound, outbound, "
        "log, shutdown, process, tracing; got list",
    )
    assert only(yaml_problems(""))[1].startswith("the configuration is empty")
    problems = problems_of({"trust_domain": "example.org"})
    assert only(problems) == (
        ROOT,
        "at least one of 'inbound' (MCP server side) or 'outbound' (agent side) is required",
    )
    assert ("trust_domain", "required (the trust domain, e.g. example.org)") in problems_of(
        {"outbound": base()["outbound"]}
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("spiffe://example.org", "without 'spiffe://'"),
        ("Example.org", "not a valid trust domain: trust domain 'Example.org' contains invalid"),
        ("", "not a valid trust domain: trust domain is empty"),
    ],
)
def test_bad_trust_domain(value: str, fragment: str) -> None:
    path, message = only(problems_of(with_change("trust_domain", value)))
    assert path == "trust_domain"
    assert fragment in message


def test_workload_api_is_validated_and_optional() -> None:
    path, message = only(problems_of(with_change("workload_api", "http://127.0.0.1:1")))
    assert path == "workload_api"
    assert "unix:// or tcp://" in message
    assert only(problems_of(with_change("workload_api", "unix://relative/x")))[0] == "workload_api"
    assert parse_config(with_change("workload_api", "tcp://127.0.0.1:8081")).workload_api == (
        "tcp://127.0.0.1:8081"
    )
    assert parse_config(with_change("workload_api", None)).workload_api is None


def test_log_level() -> None:
    assert parse_config(_set(base(), "log", {"level": "Warning"})).log.level == "warning"
    path, message = only(problems_of(_set(base(), "log", {"level": "warn"})))
    assert path == "log.level"
    assert message == (
        "expected 'debug' or 'info' or 'warning' or 'error', got string 'warn'; "
        "did you mean 'warning'?"
    )


# -------------------------------------------------------------------------------- token layer


def test_token_layer_round_trips_to_the_expected_dataclasses() -> None:
    config = load_config_text(FULL_TOKENS)
    assert config.inbound is not None and config.outbound is not None
    inbound = config.inbound
    assert inbound.public_url == "https://mcp.example.com"
    assert inbound.jwt_svid == JwtSvidConfig(
        audiences=("spiffe://example.org/ns/mcp/sa/math", "https://mcp.example.com/mcp"),
        bind_to_peer=False,
        leeway=60.0,
        algorithms=("ES256", "PS512"),
    )
    assert inbound.oauth is not None and inbound.oauth.jwks is not None
    jwks = inbound.oauth.jwks
    assert inbound.oauth == OAuthConfig(
        issuer="https://Auth.Example.com/realms/mcp/",  # exactly as written: iss must match it
        audience="https://mcp.example.com/mcp",
        jwks_uri=None,
        jwks=jwks,
        discovery=False,
        required_scopes=("mcp:tools",),
        scopes_supported=("mcp:tools", "mcp:resources"),
        authorization_servers=("https://auth.example.com/realms/mcp/", "http://127.0.0.1:9000"),
        typ="at+jwt",
        leeway=0.0,
        algorithms=("RS256",),
        jwks_cache_ttl=600.0,
        jwks_refresh_interval=0.25,
        require_cnf=True,
        bind_actor_to_peer=True,
        roles_claim="realm_roles",
        groups_claim="grp",
    )
    # the inline JWKS is canonical JSON text (sorted keys), so the dataclass stays hashable
    assert json.loads(jwks) == {
        "keys": [
            {"kty": "RSA", "kid": "2024-05", "use": "sig", "alg": "RS256", "n": "abc", "e": "AQAB"},
            {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "xx", "y": "yy"},
        ]
    }
    assert jwks == json.dumps(json.loads(jwks), sort_keys=True, separators=(",", ":"))
    assert inbound.resource_metadata_url == (
        "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    )
    assert config.outbound.routes[0].jwt_svid_audience == "spiffe://example.org/ns/mcp/sa/math"


def test_token_layer_defaults() -> None:
    config = parse_config(base())
    assert config.inbound is not None and config.outbound is not None
    assert (config.inbound.jwt_svid, config.inbound.oauth, config.inbound.public_url) == (
        None,
        None,
        None,
    )
    assert config.inbound.resource_metadata_url is None
    assert config.outbound.routes[0].jwt_svid_audience is None
    config = parse_config(with_tokens())
    inbound = config.inbound
    assert inbound is not None
    # bind_to_peer defaults to true when mTLS is required
    assert inbound.jwt_svid == JwtSvidConfig(
        audiences=("spiffe://example.org/ns/mcp/sa/math",),
        bind_to_peer=True,
        leeway=30.0,
        algorithms=JWT_ALGORITHMS,
    )
    # discovery defaults to true when neither jwks_uri nor jwks is given
    assert inbound.oauth == OAuthConfig(
        issuer=ISSUER,
        audience=RESOURCE,
        jwks_uri=None,
        jwks=None,
        discovery=True,
        required_scopes=(),
        scopes_supported=(),
        authorization_servers=(ISSUER,),
        typ=None,
        leeway=30.0,
        algorithms=JWT_ALGORITHMS,
        jwks_cache_ttl=300.0,
        jwks_refresh_interval=30.0,
        require_cnf=False,
        bind_actor_to_peer=True,  # like bind_to_peer: on with mTLS
        roles_claim="roles",
        groups_claim="groups",
    )
    assert inbound.public_url == "https://mcp.example.com"  # the origin of oauth.audience
    assert JWT_ALGORITHMS == (
        "RS256",
        "RS384",
        "RS512",
        "ES256",
        "ES384",
        "ES512",
        "PS256",
        "PS384",
        "PS512",
    )


def test_scopes_supported_defaults_to_required_scopes() -> None:
    data = with_tokens()
    data["inbound"]["oauth"]["required_scopes"] = ["mcp:tools", "mcp:admin"]
    config = parse_config(data)
    assert config.inbound is not None and config.inbound.oauth is not None
    assert config.inbound.oauth.scopes_supported == ("mcp:tools", "mcp:admin")


def test_discovery_is_off_when_keys_are_configured() -> None:
    for source in ({"jwks_uri": f"{ISSUER}/jwks?v=2"}, {"jwks": {"keys": [RSA_KEY]}}):
        for explicit in ({}, {"discovery": False}):
            data = with_tokens()
            data["inbound"]["oauth"].update(source, **explicit)
            oauth = parse_config(data).inbound.oauth  # type: ignore[union-attr]
            assert oauth is not None and oauth.discovery is False
    oauth = parse_config(_set(with_tokens(), "inbound.oauth.discovery", True)).inbound.oauth  # type: ignore[union-attr]
    assert oauth is not None and oauth.discovery is True
    assert oauth.jwks_uri is None and oauth.jwks is None


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (
            {"jwks_uri": f"{ISSUER}/jwks", "jwks": {"keys": [RSA_KEY]}},
            "give one source of signing keys, not jwks_uri and jwks: jwks_uri, jwks and "
            "discovery: true are alternatives",
        ),
        (
            {"jwks_uri": f"{ISSUER}/jwks", "discovery": True},
            "give one source of signing keys, not jwks_uri and discovery: true: jwks_uri, jwks "
            "and discovery: true are alternatives",
        ),
        (
            {"discovery": False},
            "no source of signing keys: give jwks_uri or jwks, or leave discovery true (the "
            "issuer's metadata names its jwks_uri)",
        ),
    ],
)
def test_exactly_one_key_source(sources: dict[str, Any], message: str) -> None:
    data = with_tokens()
    data["inbound"]["oauth"].update(sources)
    assert only(problems_of(data)) == ("inbound.oauth", message)


def test_oauth_only_ingress_is_plain_http_without_peer_ids() -> None:
    config = parse_config(oauth_only())
    inbound = config.inbound
    assert inbound is not None and inbound.oauth is not None
    assert (inbound.mtls, len(inbound.allow_spiffe_ids), inbound.public_url) == (
        "off",
        0,
        "https://mcp.example.com",
    )
    assert inbound.oauth.jwks_uri == f"{ISSUER}/jwks"
    # an empty allowlist is fine; a JWT-SVID layer may be added, unbound by default
    data = oauth_only()
    data["inbound"]["allow_spiffe_ids"] = []
    data["inbound"]["jwt_svid"] = {"audiences": ["spiffe://example.org/ns/mcp/sa/math"]}
    inbound = parse_config(data).inbound
    assert inbound is not None and inbound.jwt_svid is not None
    assert inbound.jwt_svid.bind_to_peer is False
    assert "mTLS off (plain HTTP, no peer identity)" in "\n".join(parse_config(data).summary())


def test_mtls_off_refuses_peer_bound_settings() -> None:
    data = oauth_only()
    data["inbound"]["allow_spiffe_ids"] = ["spiffe://example.org/ns/agents/sa/*"]
    assert only(problems_of(data)) == (
        "inbound.allow_spiffe_ids",
        "must be empty or absent with mtls: 'off': without mTLS there is no peer SPIFFE ID to "
        "check, so the allowlist would be silently ignored",
    )
    data = oauth_only()
    data["inbound"]["jwt_svid"] = {"audiences": ["x"], "bind_to_peer": True}
    path, message = only(problems_of(data))
    assert path == "inbound.jwt_svid.bind_to_peer"
    assert message.startswith("cannot be true with inbound.mtls: 'off': there is no mTLS peer")
    data = oauth_only()
    data["inbound"]["oauth"]["require_cnf"] = True
    path, message = only(problems_of(data))
    assert path == "inbound.oauth.require_cnf"
    assert message.startswith("cannot be true with inbound.mtls: 'off': there is no client cert")
    data = oauth_only()
    data["inbound"]["oauth"]["bind_actor_to_peer"] = True
    path, message = only(problems_of(data))
    assert path == "inbound.oauth.bind_actor_to_peer"
    assert message.startswith("cannot be true with inbound.mtls: 'off': there is no mTLS peer")
    oauth_only_config = parse_config(oauth_only()).inbound
    assert oauth_only_config is not None and oauth_only_config.oauth is not None
    assert oauth_only_config.oauth.bind_actor_to_peer is False
    # with mTLS, both are fine
    data = with_tokens()
    data["inbound"]["jwt_svid"]["bind_to_peer"] = True
    data["inbound"]["oauth"]["require_cnf"] = True
    parse_config(data)


def test_mtls_required_still_needs_the_allowlist_with_a_token_layer() -> None:
    data = with_tokens()
    del data["inbound"]["allow_spiffe_ids"]
    path, message = only(problems_of(data))
    assert path == "inbound.allow_spiffe_ids" and message.startswith("required: ")
    data = with_tokens()
    data["inbound"]["allow_spiffe_ids"] = []
    path, message = only(problems_of(data))
    assert path == "inbound.allow_spiffe_ids" and message.startswith("empty: ")


def test_tokens_are_never_forwarded_upstream() -> None:
    for layer in ("jwt_svid", "oauth"):
        data = with_tokens()
        del data["inbound"]["oauth" if layer == "jwt_svid" else "jwt_svid"]
        data["inbound"]["forward_authorization"] = True
        path, message = only(problems_of(data))
        assert path == "inbound.forward_authorization"
        assert "must never be passed upstream" in message
    data = with_tokens()
    data["inbound"]["forward_authorization"] = False
    parse_config(data)


def test_public_url() -> None:
    data = with_tokens()
    data["inbound"]["public_url"] = "https://Public.Example.com:8443"
    inbound = parse_config(data).inbound
    assert inbound is not None
    assert inbound.public_url == "https://public.example.com:8443"
    assert inbound.resource_metadata_url == (
        "https://public.example.com:8443/.well-known/oauth-protected-resource/mcp"
    )
    path, message = only(problems_of(_set(base(), "inbound.public_url", "https://a.example")))
    assert path == "inbound.public_url"
    assert message.startswith("only used with inbound.oauth")


@pytest.mark.parametrize(
    ("audience", "public_url", "metadata"),
    [
        (
            "https://mcp.example.com",
            None,
            "https://mcp.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "https://mcp.example.com/",
            None,
            "https://mcp.example.com/.well-known/oauth-protected-resource",
        ),
        (
            "https://mcp.example.com:8443/a/mcp",
            None,
            "https://mcp.example.com:8443/.well-known/oauth-protected-resource/a/mcp",
        ),
        (
            "http://localhost:3000/mcp",
            None,
            "http://localhost:3000/.well-known/oauth-protected-resource/mcp",
        ),
        (
            "https://mcp.example.com/mcp",
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp",
        ),
    ],
)
def test_resource_metadata_url(audience: str, public_url: str | None, metadata: str) -> None:
    data = with_tokens()
    data["inbound"]["oauth"]["audience"] = audience
    if public_url is not None:
        data["inbound"]["public_url"] = public_url
    inbound = parse_config(data).inbound
    assert inbound is not None and inbound.oauth is not None
    assert inbound.oauth.audience == audience  # kept exactly
    assert inbound.resource_metadata_url == metadata


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/realms/mcp",
        "http://[::1]:9000",
        "http://localhost:9000/",
        "https://auth.example.com/tenant/v2.0",
    ],
)
def test_http_urls_are_fine_on_loopback(url: str) -> None:
    data = with_tokens()
    data["inbound"]["oauth"].update(issuer=url, jwks_uri=url + "/jwks")
    data["inbound"]["oauth"]["authorization_servers"] = [url]
    oauth = parse_config(data).inbound.oauth  # type: ignore[union-attr]
    assert oauth is not None
    assert (oauth.issuer, oauth.jwks_uri, oauth.authorization_servers) == (
        url,
        url + "/jwks",
        (url,),
    )


_LOOPBACK = "http:// is allowed only for a loopback host: 127.0.0.1, [::1] or localhost"


@pytest.mark.parametrize(
    ("path", "value", "problem_path", "fragment"),
    [
        # jwt_svid
        ("jwt_svid.audiences", [], "jwt_svid.audiences", "must not be empty"),
        ("jwt_svid.audiences", ["a", ""], "jwt_svid.audiences[1]", "must not be empty"),
        ("jwt_svid.audiences", "spiffe://x/y", "jwt_svid.audiences", "expected a list"),
        ("jwt_svid.audiences", ..., "jwt_svid.audiences", "required (the audiences"),
        ("jwt_svid.algorithms", ["RS256", "HS256"], "jwt_svid.algorithms[1]", "'HS256' is refused"),
        ("jwt_svid.algorithms", ["none"], "jwt_svid.algorithms[0]", "'none' (unsigned tokens)"),
        ("jwt_svid.algorithms", ["rs256"], "jwt_svid.algorithms[0]", "did you mean 'RS256'?"),
        ("jwt_svid.algorithms", ["EdDSA"], "jwt_svid.algorithms[0]", "expected one of RS256"),
        ("jwt_svid.algorithms", [], "jwt_svid.algorithms", "must not be empty"),
        ("jwt_svid.leeway", "6m", "jwt_svid.leeway", "must be from 0 to 5m (got 360 seconds)"),
        ("jwt_svid.leeway", -1, "jwt_svid.leeway", "must not be negative"),
        ("jwt_svid.bind_to_peer", "yes", "jwt_svid.bind_to_peer", "expected true or false"),
        # oauth URLs
        ("oauth.issuer", "http://auth.example.com", "oauth.issuer", _LOOPBACK),
        ("oauth.issuer", "http://127.0.0.1.nip.io", "oauth.issuer", _LOOPBACK),
        ("oauth.issuer", "auth.example.com", "oauth.issuer", "not a URL"),
        ("oauth.issuer", "https://auth.example.com#x", "oauth.issuer", "fragment"),
        ("oauth.issuer", "https://auth.example.com?tenant=1", "oauth.issuer", "query"),
        ("oauth.issuer", "https://u:p@auth.example.com", "oauth.issuer", "user info"),
        ("oauth.issuer", "https://auth.example.com/a b", "oauth.issuer", "printable ASCII"),
        ("oauth.issuer", "https://auth.example.com\n", "oauth.issuer", "printable ASCII"),
        ("oauth.issuer", "ftp://auth.example.com", "oauth.issuer", "must be an https:// URL"),
        ("oauth.issuer", ..., "oauth.issuer", "required"),
        ("oauth.audience", "http://mcp.example.com/mcp", "oauth.audience", _LOOPBACK),
        ("oauth.audience", "https://mcp.example.com/mcp#a", "oauth.audience", "fragment"),
        ("oauth.audience", ..., "oauth.audience", "required (this MCP server's resource URL"),
        ("oauth.jwks_uri", "http://keys.example.com/jwks", "oauth.jwks_uri", _LOOPBACK),
        ("oauth.authorization_servers", [], "oauth.authorization_servers", "must not be empty"),
        (
            "oauth.authorization_servers",
            [ISSUER, "http://as.example.com"],
            "oauth.authorization_servers[1]",
            _LOOPBACK,
        ),
        # inline JWKS
        ("oauth.jwks", "{keys: []}", "oauth.jwks", "expected a JWKS: a mapping with a 'keys'"),
        ("oauth.jwks", {}, "oauth.jwks.keys", "required (the JWKS 'keys' list)"),
        ("oauth.jwks", {"keys": []}, "oauth.jwks.keys", "must not be empty"),
        ("oauth.jwks", {"keys": ["k"]}, "oauth.jwks.keys[0]", "expected a JWK"),
        (
            "oauth.jwks",
            {"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]},
            "oauth.jwks.keys[0].kty",
            "'oct' (symmetric) keys are refused",
        ),
        (
            "oauth.jwks",
            {"keys": [{"kty": "RSA", "n": "abc", "e": "AQAB"}]},
            "oauth.jwks.keys[0].kid",
            "required in every inline key",
        ),
        ("oauth.jwks", {"keys": [{"kid": "a"}]}, "oauth.jwks.keys[0].kty", "required"),
        (
            "oauth.jwks",
            {"keys": [{**RSA_KEY, "kid": 7}]},
            "oauth.jwks.keys[0].kid",
            "expected a non-empty string, got integer 7",
        ),
        (
            "oauth.jwks",
            {"keys": [RSA_KEY, RSA_KEY]},
            "oauth.jwks.keys[1].kid",
            "duplicate kid 'k1' (also keys[0])",
        ),
        (
            "oauth.jwks",
            {"keys": [{**RSA_KEY, "d": "x", "p": "y"}]},
            "oauth.jwks.keys[0]",
            "contains private key material (d, p)",
        ),
        (
            "oauth.jwks",
            {"keys": [{**RSA_KEY, "exp": datetime.date(2030, 1, 1)}]},
            "oauth.jwks",
            "must be plain JSON data",
        ),
        (
            "oauth.jwks",
            {"keys": [{**RSA_KEY, "x": float("nan")}]},
            "oauth.jwks",
            "must be plain JSON data",
        ),
        ("oauth.jwks", {"keys": [{**RSA_KEY, 1: "x"}]}, "oauth.jwks", "must be plain JSON data"),
        # scopes, typ, timings, claims
        ("oauth.required_scopes", ["mcp:tools write"], "oauth.required_scopes[0]", "not a scope"),
        ("oauth.required_scopes", [""], "oauth.required_scopes[0]", "not a scope"),
        ("oauth.required_scopes", "mcp:tools", "oauth.required_scopes", "expected a list"),
        ("oauth.scopes_supported", [3], "oauth.scopes_supported[0]", "got integer 3"),
        ("oauth.typ", "at jwt", "oauth.typ", "not a media type like at+jwt"),
        ("oauth.typ", "", "oauth.typ", "not a media type"),
        ("oauth.leeway", "10m", "oauth.leeway", "must be from 0 to 5m"),
        ("oauth.algorithms", ["HS512"], "oauth.algorithms[0]", "'HS512' is refused"),
        ("oauth.jwks_cache_ttl", 0, "oauth.jwks_cache_ttl", "must be greater than 0"),
        ("oauth.jwks_refresh_interval", "0s", "oauth.jwks_refresh_interval", "greater than 0"),
        ("oauth.require_cnf", "on", "oauth.require_cnf", "yes/no/on/off are strings"),
        ("oauth.discovery", 1, "oauth.discovery", "expected true or false"),
        ("oauth.roles_claim", "", "oauth.roles_claim", "expected a claim name like roles"),
        ("oauth.groups_claim", "my groups", "oauth.groups_claim", "claim name like groups"),
        # public_url
        ("public_url", "https://mcp.example.com/mcp", "public_url", "without path"),
        ("public_url", "https://mcp.example.com/", "public_url", "without path (not even '/')"),
        ("public_url", "https://mcp.example.com?x", "public_url", "query"),
        ("public_url", "http://mcp.example.com", "public_url", _LOOPBACK),
    ],
)
def test_token_layer_errors_name_the_key(
    path: str, value: object, problem_path: str, fragment: str
) -> None:
    data = with_tokens()
    if value is ...:
        section, _, key = path.partition(".")
        del data["inbound"][section][key]
    else:
        _set(data, f"inbound.{path}", value)
    reported, message = only(problems_of(data))
    assert reported == f"inbound.{problem_path}"
    assert fragment in message, message


def test_scopes_supported_must_include_the_required_ones() -> None:
    data = with_tokens()
    data["inbound"]["oauth"].update(
        required_scopes=["mcp:tools", "mcp:admin"], scopes_supported=["mcp:tools"]
    )
    assert only(problems_of(data)) == (
        "inbound.oauth.scopes_supported",
        "must include every required scope (missing: mcp:admin); clients learn what to ask for "
        "from it",
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "must not be empty"),
        (5, "expected a string like spiffe://example.org/ns/mcp/sa/math, got integer 5"),
        (None, "got null"),
    ],
)
def test_bad_jwt_svid_audience(value: object, fragment: str) -> None:
    path, message = only(problems_of(with_change("outbound.routes[0].jwt_svid_audience", value)))
    assert path == "outbound.routes[0].jwt_svid_audience"
    assert fragment in message


def test_token_keys_in_the_wrong_place_are_pointed_home() -> None:
    cases = {
        "inbound.issuer": (
            "unknown key 'issuer'; it belongs under 'inbound.oauth' or "
            "'outbound.routes[i].token_exchange'"
        ),
        "inbound.audiences": "unknown key 'audiences'; it belongs under 'inbound.jwt_svid'",
        "inbound.leeway": (
            "unknown key 'leeway'; it belongs under 'inbound.jwt_svid' or 'inbound.oauth'"
        ),
        "outbound.jwt_svid_audience": (
            "unknown key 'jwt_svid_audience'; it belongs under 'outbound.routes[i]' or 'targets[i]'"
        ),
        "inbound.jwt_svid.audience": "unknown key 'audience'; did you mean 'audiences'?",
        "inbound.oauth.jwks_url": "unknown key 'jwks_url'; did you mean 'jwks_uri'?",
        "inbound.oauth.require_cfn": "unknown key 'require_cfn'; did you mean 'require_cnf'?",
    }
    for path, expected in cases.items():
        assert (path, expected) in problems_of(_set(with_tokens(), path, "x")), path


def test_token_layer_booleans_are_yaml_1_2() -> None:
    text = _yaml_with_inbound_line(
        "  jwt_svid: {audiences: [x], bind_to_peer: yes}\n"
        "  oauth: {issuer: 'https://a.example', audience: 'https://m.example', discovery: on}"
    )
    problems = yaml_problems(text)
    assert [path for path, _ in problems] == [
        "inbound.jwt_svid.bind_to_peer",
        "inbound.oauth.discovery",
    ]
    assert all("yes/no/on/off are strings" in message for _, message in problems)


def test_summary_mentions_the_token_layers() -> None:
    text = "\n".join(load_config_text(FULL_TOKENS).summary())
    assert (
        "  token layer: JWT-SVID, audience spiffe://example.org/ns/mcp/sa/math or "
        "https://mcp.example.com/mcp; algorithms ES256, PS512"
    ) in text
    assert (
        "  token layer: OAuth, issuer https://Auth.Example.com/realms/mcp/ (2 inline keys), "
        "audience https://mcp.example.com/mcp; required scopes: mcp:tools; cnf bound to the "
        "client certificate; algorithms RS256"
    ) in text
    assert (
        "  resource metadata: https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    ) in text
    assert (
        "route math: / -> https://math.mcp.svc:8443 (server spiffe://example.org/ns/mcp/sa/math); "
        "sends a JWT-SVID for spiffe://example.org/ns/mcp/sa/math"
    ) in text
    text = "\n".join(parse_config(with_tokens()).summary())
    assert (
        "JWT-SVID, audience spiffe://example.org/ns/mcp/sa/math; sub must be the mTLS peer\n"
        in text
    )
    assert f"OAuth, issuer {ISSUER} (keys by discovery)" in text
    assert "token layer: none" in "\n".join(parse_config(base()).summary())


# ----------------------------------------------------------------------------- outbound rules


def test_non_loopback_outbound_listen_is_an_error_unless_allowed() -> None:
    path, message = only(problems_of(with_change("outbound.listen", "0.0.0.0:15001")))
    assert path == "outbound.listen"
    assert "not a loopback address" in message
    assert "lends this workload's SPIFFE identity" in message
    assert "allow_non_loopback: true" in message
    data = with_change("outbound.listen", "10.1.2.3:15001")
    data["outbound"]["allow_non_loopback"] = True
    config = parse_config(data)
    assert config.outbound is not None and config.outbound.allow_non_loopback
    for loopback in ("[::1]:15001", "localhost:15001", "127.0.0.2:15001"):
        parse_config(with_change("outbound.listen", loopback))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("http://math.mcp.svc:8443", "must be an https:// URL (routes always originate mTLS"),
        ("math.mcp.svc:8443", "not a URL"),
        ("https://math.mcp.svc:8443/mcp", "without a path"),
    ],
)
def test_route_upstream_must_be_https(value: str, fragment: str) -> None:
    path, message = only(problems_of(with_change("outbound.routes[0].upstream", value)))
    assert path == "outbound.routes[0].upstream"
    assert fragment in message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("spiffe://example.org/ns/mcp/sa/*", "wildcards are not allowed"),
        ("spiffe://example.org", "not a SPIFFE ID: "),
        ("spiffe://example.org/ns//x", "not a SPIFFE ID: "),
        ("math", "not a SPIFFE ID: "),
    ],
)
def test_bad_server_spiffe_id(value: str, fragment: str) -> None:
    path, message = only(problems_of(with_change("outbound.routes[0].server_spiffe_id", value)))
    assert path == "outbound.routes[0].server_spiffe_id"
    assert fragment in message


def test_route_requires_its_fields() -> None:
    problems = problems_of(with_change("outbound.routes", [{}]))
    assert [path for path, _ in problems] == [
        "outbound.routes[0].name",
        "outbound.routes[0].upstream",
        "outbound.routes[0].server_spiffe_id",
    ]
    assert all(message.startswith("required") for _, message in problems)
    assert only(problems_of(with_change("outbound.routes", ...)))[0] == "outbound.routes"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("math", "must start with '/'"),
        ("/math/", "must not end with '/'"),
        ("/a//b", "not a plain URL path"),
        ("/a%2Fb", "not a plain URL path"),
        ("/a?x", "not a plain URL path"),
        ("/a/../b", "'.' or '..' segments"),
    ],
)
def test_bad_path_prefix(value: str, fragment: str) -> None:
    path, message = only(problems_of(with_change("outbound.routes[0].path_prefix", value)))
    assert path == "outbound.routes[0].path_prefix"
    assert fragment in message


def route(name: str, prefix: str = "/", host: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": name,
        "path_prefix": prefix,
        "upstream": f"https://{name}.mcp.svc:8443",
        "server_spiffe_id": f"spiffe://example.org/ns/mcp/sa/{name}",
    }
    if host is not None:
        data["host"] = host
    return data


def test_duplicate_routes() -> None:
    routes = [route("math", "/math"), route("math", "/other"), route("calc", "/math")]
    problems = problems_of(with_change("outbound.routes", routes))
    assert problems == [
        ("outbound.routes[1].name", "duplicate route name 'math' (also routes[0])"),
        (
            "outbound.routes[2].path_prefix",
            "routes[0] already has path_prefix '/math'; which route serves a request would be "
            "ambiguous",
        ),
    ]
    # the same host (after normalisation) and prefix collide too
    routes = [route("a", "/", "Math.Local"), route("b", "/", "math.local")]
    path, message = only(problems_of(with_change("outbound.routes", routes)))
    assert path == "outbound.routes[1].path_prefix"
    assert "and host 'math.local'" in message
    # a route that is broken elsewhere is still checked for uniqueness
    broken = route("math", "/math")
    broken["upstream"] = "http://x"
    problems = problems_of(with_change("outbound.routes", [route("math", "/math"), broken]))
    assert [path for path, _ in problems] == [
        "outbound.routes[1].upstream",
        "outbound.routes[1].name",
        "outbound.routes[1].path_prefix",
    ]


def test_overlapping_prefixes_and_other_hosts_are_fine() -> None:
    routes = [
        route("root", "/"),
        route("math", "/math"),
        route("math-v2", "/math/v2"),
        route("math-host", "/math", "math.local"),
        route("math-port", "/math", "math.local:15001"),
    ]
    config = parse_config(with_change("outbound.routes", routes))
    assert config.outbound is not None
    assert [r.name for r in config.outbound.routes] == [r["name"] for r in routes]


@pytest.mark.parametrize(
    ("upstream", "sni", "expected"),
    [
        ("https://Math.MCP.svc:8443", ..., "math.mcp.svc"),  # the URL's host name
        ("https://127.0.0.1:8443", ..., None),  # no IP literal as SNI
        ("https://[::1]:8443", ..., None),
        ("https://127.0.0.1:8443", "Math.Gateway.example", "math.gateway.example"),
        ("https://math.mcp.svc:8443", "other.example", "other.example"),
    ],
)
def test_route_sni(upstream: str, sni: object, expected: str | None) -> None:
    data = with_change("outbound.routes[0].upstream", upstream)
    if sni is not ...:
        data["outbound"]["routes"][0]["sni"] = sni
    outbound = parse_config(data).outbound
    assert outbound is not None
    assert outbound.routes[0].sni == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10.0.0.1", "must be a DNS name, not an IP address"),
        ("::1", "must be a DNS name, not an IP address"),
        ("ma th", "not a DNS name"),
        ("math.local:8443", "not a DNS name"),
        ("math.", "not a DNS name"),
        ("", "not a DNS name"),
        (5, "got integer 5"),
    ],
)
def test_bad_route_sni(value: object, fragment: str) -> None:
    path, message = only(problems_of(with_change("outbound.routes[0].sni", value)))
    assert path == "outbound.routes[0].sni"
    assert fragment in message


@pytest.mark.parametrize("value", ["math.local:0", "math.local:x", "ma th", "[::1", "a:1:2"])
def test_bad_route_host(value: str) -> None:
    path, _ = only(problems_of(with_change("outbound.routes[0].host", value)))
    assert path == "outbound.routes[0].host"


# ----------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (10, 10.0),
        (0.25, 0.25),
        (0, 0.0),
        ("250ms", 0.25),
        ("10s", 10.0),
        ("1.5m", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("24h", 86400.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("10", "not a duration: '10'"),
        ("10 s", "not a duration"),
        ("10sec", "not a duration"),
        ("1h30m", "not a duration"),
        ("-5s", "must not be negative"),
        (-1, "must not be negative"),
        ("25h", "at most 24h"),
        (10**6, "at most 24h"),
        (float("inf"), "expected a duration"),
        (float("nan"), "expected a duration"),
        (True, "got boolean true"),
        (None, "got null"),
        ([1], "got list"),
        ("\uff11\uff10s", "not a duration"),
    ],
)
def test_bad_durations(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "x.y")
    assert info.value.path == "x.y"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1024, 1024),
        ("512KiB", 512 * 1024),
        ("4MiB", 4 * 1024 * 1024),
        ("1MB", 1_000_000),
        ("1mb", 1_000_000),
        ("1.5MiB", 1572864),
        ("2 GiB", 2 * 1024**3),
        ("100B", 100),
        ("100", 100),
        ("0", 0),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("4M", "not a size"),
        ("4 MiBs", "not a size"),
        ("-1KiB", "not a size"),
        (-1, "must not be negative"),
        ("1.5B", "not a whole number of bytes"),
        ("0.1KiB", "not a whole number of bytes"),
        ("2000GiB", "too large"),
        (10**400, "a very large integer is too large"),
        (1.5, "got number 1.5"),
        (False, "got boolean false"),
        ({}, "got mapping"),
    ],
)
def test_bad_sizes(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, "x.y")
    assert info.value.path == "x.y"
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("max_request_body", 0, "must be from 1 byte to 1GiB"),
        ("max_request_body", "2GiB", "must be from 1 byte to 1GiB"),
        ("max_header_size", "512B", "must be from 1KiB to 1MiB"),
        ("max_header_size", "4 megs", "not a size"),
        ("header_timeout", 0, "must be greater than 0"),
        ("idle_timeout", "0ms", "must be greater than 0"),
        ("total_timeout", "forever", "not a duration"),
        ("connect_timeout", -1, "must not be negative"),
        ("keepalive_timeout", "", "not a duration"),
        ("sse_heartbeat", "-1s", "must not be negative"),
    ],
)
def test_limits_ranges(key: str, value: object, fragment: str) -> None:
    path, message = only(problems_of(with_change("outbound.limits", {key: value})))
    assert path == f"outbound.limits.{key}"
    assert fragment in message


def test_sse_heartbeat_zero_is_off_and_short_ones_are_allowed() -> None:
    config = parse_config(with_change("inbound.limits", {"sse_heartbeat": 0}))
    assert config.inbound is not None and config.inbound.limits.sse_heartbeat == 0.0
    config = parse_config(with_change("inbound.limits", {"sse_heartbeat": "200ms"}))
    assert config.inbound is not None and config.inbound.limits.sse_heartbeat == 0.2


def test_drain_timeout() -> None:
    assert parse_config(_set(base(), "shutdown", {"drain_timeout": "1.5s"})).drain_timeout == 1.5
    assert parse_config(_set(base(), "shutdown", {"drain_timeout": 0})).drain_timeout == 0.0
    assert only(problems_of(_set(base(), "shutdown", {"drain_timeout": "soon"})))[0] == (
        "shutdown.drain_timeout"
    )


_ANYTHING = st.one_of(
    st.text(),
    st.text(alphabet="0123456789.-+ eEkKmMgGiIbBsShH_"),
    st.from_regex(r"-?[0-9]{0,20}(\.[0-9]{0,12})? ?(ms|s|m|h|[kKmMgG]i?[bB]|B)?", fullmatch=True),
    st.integers(),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.binary(max_size=5),
)


@given(_ANYTHING)
@settings(max_examples=500, deadline=None)
def test_duration_parser_only_raises_config_errors(value: object) -> None:
    try:
        seconds = parse_duration(value, "d")
    except ConfigError as exc:
        assert exc.path == "d"
        assert len(exc.message) < 400
    else:
        assert isinstance(seconds, float)
        assert 0 <= seconds <= 86400


@given(_ANYTHING)
@settings(max_examples=500, deadline=None)
def test_size_parser_only_raises_config_errors(value: object) -> None:
    try:
        size = parse_size(value, "s")
    except ConfigError as exc:
        assert exc.path == "s"
        assert len(exc.message) < 400
    else:
        assert type(size) is int
        assert 0 <= size <= 1024**4


@given(st.integers(min_value=0, max_value=86400), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_units(amount: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    if amount * factor > 86400:
        with pytest.raises(ConfigError):
            parse_duration(f"{amount}{unit}")
    else:
        assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * factor)


@given(
    st.integers(min_value=0, max_value=1000),
    st.sampled_from(["B", "KB", "MB", "GB", "KiB", "MiB", "GiB", "kib", "mB"]),
)
def test_size_units(amount: int, unit: str) -> None:
    factor = {"b": 1, "kb": 1000, "mb": 10**6, "gb": 10**9, "kib": 1024, "mib": 2**20}.get(
        unit.lower(), 2**30
    )
    assert parse_size(f"{amount}{unit}") == amount * factor


# -------------------------------------------------------------------------------- many at once


def test_every_problem_is_reported_at_once() -> None:
    problems = yaml_problems(
        """\
        trust_domain: spiffe://example.org
        admn: {listen: 127.0.0.1:15000}
        inbound:
          listen: 8443
          upstream: https://127.0.0.1:8000
          mtls: off
          jwt_svid: {audiences: [x], bind_to_peer: true}
          allow_spiffe_ids: [spiffe://example.org/a, spiffe://example.org/b*]
          limits: {idle_timeout: 0, max_request_body: 4Mb}
        outbound:
          listen: 0.0.0.0:15001
          routes:
            - {name: math, upstream: http://m, server_spiffe_id: "spiffe://example.org/*"}
            - {name: math, upstream: https://m, server_spiffe_id: spiffe://example.org/m}
        log: {level: loud}
        """
    )
    paths = [path for path, _ in problems]
    assert sorted(paths) == sorted(
        [
            "trust_domain",
            "admn",
            "inbound.listen",
            "inbound.upstream",
            "inbound.mtls",
            "inbound.jwt_svid.bind_to_peer",
            "inbound.allow_spiffe_ids",
            "inbound.allow_spiffe_ids[1]",
            "inbound.limits.idle_timeout",
            "outbound.listen",
            "outbound.routes[0].upstream",
            "outbound.routes[0].server_spiffe_id",
            "outbound.routes[1].name",
            "outbound.routes[1].path_prefix",
            "log.level",
        ]
    )
    # problems that can be located carry their line number
    assert dict(problems)["inbound.listen"].endswith("(line 4)")
    assert dict(problems)["outbound.routes[1].name"].endswith("(line 14)")


# ------------------------------------------------------------------------------- YAML and files


def test_duplicate_keys_are_errors() -> None:
    problems = yaml_problems(
        """\
        trust_domain: example.org
        inbound:
          listen: 0.0.0.0:8443
          upstream: http://127.0.0.1:8000
          allow_spiffe_ids: [spiffe://example.org/a]
          allow_spiffe_ids: ["spiffe://example.org/**"]
        outbound:
          listen: 127.0.0.1:15001
          routes:
            - name: math
              upstream: https://m:1
              server_spiffe_id: spiffe://example.org/m
              upstream: https://evil:1
        trust_domain: evil.example
        """
    )
    assert problems == [
        (
            "inbound.allow_spiffe_ids",
            "duplicate key (first at line 5, again at line 6); a security config must not be "
            "ambiguous",
        ),
        (
            "outbound.routes[0].upstream",
            "duplicate key (first at line 11, again at line 13); a security config must not be "
            "ambiguous",
        ),
        (
            "trust_domain",
            "duplicate key (first at line 1, again at line 14); a security config must not be "
            "ambiguous",
        ),
    ]


def test_anchors_and_merge_keys_work() -> None:
    config = load_config_text(
        textwrap.dedent(
            """\
            trust_domain: example.org
            inbound:
              listen: 0.0.0.0:8443
              upstream: http://127.0.0.1:8000
              allow_spiffe_ids: [spiffe://example.org/a]
              limits: &limits {idle_timeout: 5s, total_timeout: 1m}
            outbound:
              listen: 127.0.0.1:15001
              limits:
                <<: *limits
                total_timeout: 2m
              routes:
                - {name: a, upstream: "https://a:1", server_spiffe_id: "spiffe://example.org/a"}
            """
        )
    )
    assert config.outbound is not None
    assert config.outbound.limits.idle_timeout == 5.0
    assert config.outbound.limits.total_timeout == 120.0


def test_alias_bombs_stay_cheap() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    problems = yaml_problems("\n".join(lines) + "\n")
    assert ROOT in [path for path, _ in problems]
    assert len(problems) < 20


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("trust_domain: [\n", "invalid YAML at line 2, column 1"),
        ("a: b\n  c: d\n", "invalid YAML at line 2"),
        ("--- a\n--- b\n", "invalid YAML at line"),
        ("x: !!python/object:os.system ls\n", "invalid YAML at line 1"),
        ("x: \x07\n", "invalid YAML"),
        (b"x: \xff\n", "invalid YAML"),
        ("[" * 5000 + "]" * 5000 + "\n", "invalid YAML"),
    ],
)
def test_yaml_syntax_errors(text: str | bytes, fragment: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config_text(text, source="conf.yaml")
    problem = only([(p.path, problem_detail(p)) for p in info.value.problems])
    assert problem[0] == "conf.yaml"
    assert fragment in problem[1]
    assert "\n" not in problem[1]


def test_load_config_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigErrors) as info:
        load_config(missing)
    assert only([(p.path, problem_detail(p)) for p in info.value.problems]) == (
        str(missing),
        "cannot read the file: No such file or directory",
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(tmp_path)
    assert info.value.problems[0].path == str(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("trust_domain: example.org\ninbound: {listen: 1\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(str(bad))
    problem = only([(p.path, problem_detail(p)) for p in info.value.problems])
    assert problem[0] == str(bad)
    assert "line 3" in problem[1]


def test_config_errors_message_lists_everything() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config({"trust_domain": 1})
    text = str(info.value)
    assert text.startswith("2 configuration problems:\n")
    assert "  trust_domain: expected a string like example.org, got integer 1" in text
    assert info.value.status == 500 and info.value.reason == "config_error"


# ---------------------------------------------------------------------------- never a traceback

_JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(),
        st.text(max_size=20),
        st.sampled_from(["0.0.0.0:1", "http://a", "https://a", "spiffe://example.org/x", "1s"]),
    ),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["listen", "name", "routes", "x"]), children, max_size=3)
    ),
    max_leaves=8,
)

_PATHS = [
    f"{section}.{key}" if section else key
    for section, keys in SCHEMA.items()
    for key in keys
    if section not in ("log", "shutdown", "admin")
]


@given(st.sampled_from(_PATHS), _JSONISH)
@settings(max_examples=300, deadline=None)
def test_any_value_anywhere_is_reported_not_raised(path: str, value: object) -> None:
    path = path.replace("[]", "[0]")
    data = base()
    try:
        _set(data, path, value)
    except (KeyError, TypeError):
        return
    try:
        parse_config(copy.deepcopy(data))
    except ConfigErrors as exc:
        assert exc.problems
        assert all(isinstance(p, ConfigError) and p.path for p in exc.problems)


def _yaml_with_inbound_line(line: str) -> str:
    return (
        "trust_domain: example.org\n"
        "inbound:\n"
        "  listen: 0.0.0.0:8443\n"
        "  upstream: http://127.0.0.1:8000\n"
        "  allow_spiffe_ids: [spiffe://example.org/a]\n"
        f"{line}\n"
    )


def test_empty_mcp_policy_is_an_error_not_a_silent_allow() -> None:
    with pytest.raises(ConfigErrors) as err:
        load_config_text(
            "trust_domain: example.org\n"
            "inbound:\n"
            "  listen: 0.0.0.0:8443\n"
            "  upstream: http://127.0.0.1:8000\n"
            "  allow_spiffe_ids: ['spiffe://example.org/ns/agents/**']\n"
            "  mcp_policy:\n"
        )
    assert [p.path for p in err.value.problems] == ["inbound.mcp_policy"]


# -- outbound.routes[i].token_exchange ----------------------------------------------------------

STS = "https://sts.example.com"


def with_exchange(**exchange: Any) -> dict[str, Any]:
    data = base()
    data["outbound"]["routes"][0]["token_exchange"] = exchange
    return data


def test_token_exchange_defaults() -> None:
    config = parse_config(with_exchange(issuer=STS, resource=RESOURCE))
    assert config.outbound is not None
    exchange = config.outbound.routes[0].token_exchange
    assert exchange == TokenExchangeConfig(
        issuer=STS,
        sts_audience=STS,  # the JWT-SVID for the STS is addressed to its issuer
        resource=RESOURCE,
    )
    assert exchange.client_auth == "jwt_svid" and exchange.actor_token is True
    assert exchange.subject_token_header == "Authorization"
    assert exchange.subject_token_type == "urn:ietf:params:oauth:token-type:access_token"
    assert (exchange.timeout, exchange.refresh_before, exchange.ca_file) == (5.0, 30.0, None)
    endpoint = parse_config(with_exchange(token_endpoint=f"{STS}/token", audience="math"))
    assert endpoint.outbound is not None
    exchange = endpoint.outbound.routes[0].token_exchange
    assert exchange is not None and exchange.sts_audience == f"{STS}/token"
    assert any("exchanges the user's token" in line for line in endpoint.summary())


def test_token_exchange_every_key(tmp_path: Path) -> None:
    from tests.certfactory import CertFactory

    ca_file = tmp_path / "sts-ca.pem"
    ca_file.write_text(CertFactory.root(uri=None, common_name="STS CA").pem())
    config = parse_config(
        with_exchange(
            issuer=STS,
            ca_file=str(ca_file),
            client_auth="client_secret",
            client_id="agent",
            client_secret_file="/var/run/secrets/sts/secret",
            sts_audience="sts",
            subject_token_header="X-User-Token",
            subject_token_type="jwt",
            actor_token=False,
            resource=RESOURCE,
            audience="math",
            scopes=["mcp:tools", "mcp:read"],
            timeout="2s",
            refresh_before="1m",
        )
    )
    assert config.outbound is not None
    exchange = config.outbound.routes[0].token_exchange
    assert exchange is not None
    assert exchange.subject_token_type == "urn:ietf:params:oauth:token-type:jwt"
    assert exchange.scopes == ("mcp:tools", "mcp:read") and exchange.refresh_before == 60.0
    assert exchange.target == (STS, RESOURCE, "math", ("mcp:tools", "mcp:read"))


def test_token_exchange_problems() -> None:
    p = "outbound.routes[0].token_exchange"
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"resource": RESOURCE}, p, "give exactly one of token_endpoint"),
        ({"issuer": STS, "token_endpoint": STS, "resource": RESOURCE}, p, "exactly one"),
        ({"issuer": STS}, p, "give resource"),
        ({"issuer": "http://sts.example.com", "resource": RESOURCE}, f"{p}.issuer", "https://"),
        (
            {"issuer": STS, "resource": RESOURCE, "client_auth": "client_secret"},
            f"{p}.client_id",
            "required with client_auth: client_secret",
        ),
        (
            {"issuer": STS, "resource": RESOURCE, "client_secret_file": "/s"},
            f"{p}.client_secret_file",
            "only used with client_auth: client_secret",
        ),
        (
            {"issuer": STS, "resource": RESOURCE, "client_secret": "inline!"},
            f"{p}.client_secret",
            "unknown key",
        ),
        (
            {"issuer": STS, "resource": RESOURCE, "subject_token_header": "Host"},
            f"{p}.subject_token_header",
            "cannot carry the user's token",
        ),
        (
            {"issuer": STS, "resource": RESOURCE, "subject_token_header": "X User"},
            f"{p}.subject_token_header",
            "not an HTTP header name",
        ),
        (
            {"issuer": STS, "resource": RESOURCE, "subject_token_type": "cookie"},
            f"{p}.subject_token_type",
            "expected one of access_token",
        ),
        ({"issuer": STS, "resource": RESOURCE, "scopes": ["a b"]}, f"{p}.scopes[0]", "not a scope"),
        (
            {"issuer": STS, "resource": RESOURCE, "ca_file": "/nonexistent/ca.pem"},
            f"{p}.ca_file",
            "cannot load CA certificates",
        ),
    ]
    for exchange, path, text in cases:
        found = problems_of(with_exchange(**exchange))
        assert any(where == path and text in what for where, what in found), (exchange, found)
    data = with_exchange(issuer=STS, resource=RESOURCE)
    data["outbound"]["routes"][0]["jwt_svid_audience"] = "spiffe://example.org/ns/mcp/sa/math"
    path, message = only(problems_of(data))
    assert path == f"{p}" and "cannot be combined with jwt_svid_audience" in message


# -- circuit breakers ----------------------------------------------------------------------------


def test_circuit_breakers_default_to_envoys_thresholds() -> None:
    config = parse_config(base())
    assert config.inbound is not None and config.outbound is not None
    envoy = CircuitBreakers(max_connections=1024, max_pending_requests=1024, max_requests=1024)
    assert config.inbound.circuit_breakers == envoy
    assert config.outbound.circuit_breakers == envoy
    assert config.outbound.routes[0].circuit_breakers == envoy


def test_a_route_overrides_the_outbound_circuit_breakers_key_by_key() -> None:
    data = base()
    data["outbound"]["circuit_breakers"] = {"max_requests": 200, "max_connections": 100}
    routes = data["outbound"]["routes"]
    routes.append({**routes[0], "name": "files", "path_prefix": "/files"})
    routes[0]["circuit_breakers"] = {"max_connections": 8, "max_pending_requests": 0}
    data["inbound"]["circuit_breakers"] = {"max_pending_requests": 5}
    config = parse_config(data)
    assert config.inbound is not None and config.outbound is not None
    math, files = config.outbound.routes
    assert math.circuit_breakers == CircuitBreakers(
        max_connections=8, max_pending_requests=0, max_requests=200
    )
    assert files.circuit_breakers == config.outbound.circuit_breakers
    assert files.circuit_breakers == CircuitBreakers(max_connections=100, max_requests=200)
    assert config.inbound.circuit_breakers == CircuitBreakers(max_pending_requests=5)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "inbound.circuit_breakers.max_requests",
            0,
            "must be from 1 to 1000000 (got 0)",
        ),
        (
            "outbound.circuit_breakers.max_connections",
            True,
            "expected a whole number from 1 to 1000000, got boolean true",
        ),
        (
            "outbound.routes[0].circuit_breakers.max_pending_requests",
            -1,
            "must be from 0 to 1000000 (got -1)",
        ),
        (
            "outbound.routes[0].circuit_breakers.max_requests",
            "100",
            "expected a whole number from 1 to 1000000, got string '100'",
        ),
        (
            "outbound.circuit_breakers.max_requests",
            1.5,
            "expected a whole number from 1 to 1000000, got number 1.5",
        ),
        (
            "inbound.circuit_breakers.max_connections",
            1_000_001,
            "must be from 1 to 1000000 (got 1000001)",
        ),
        (
            "outbound.circuit_breakers.max_request",
            5,
            "unknown key 'max_request'; did you mean 'max_requests'?",
        ),
        (
            "inbound.limits.max_requests",
            5,
            "unknown key 'max_requests'; it belongs under 'inbound.circuit_breakers' or "
            "'outbound.circuit_breakers' or 'outbound.routes[i].circuit_breakers'",
        ),
    ],
)
def test_bad_circuit_breakers_name_their_key(path: str, value: object, message: str) -> None:
    assert only(problems_of(_set(base(), path, value))) == (path, message)
