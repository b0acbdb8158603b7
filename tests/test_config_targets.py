"""Config of multiplexing endpoints: ``targets:`` on an outbound route and on an edge-gateway
inbound; every problem named by its key path."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.config import MuxConfig, TargetConfig, parse_config
from sidecar.errors import ConfigErrors, problem_detail
from sidecar.spiffe.ids import SpiffeId

MATH = {
    "name": "math",
    "upstream": "https://math.mcp.svc:8443",
    "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/math",
}
CLOCK = {
    "name": "clock",
    "upstream": "https://Clock.MCP.svc",
    "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/clock",
    "path": "/mcp",
    "jwt_svid_audience": "spiffe://example.org/ns/mcp/sa/clock",
}


def outbound(**route: Any) -> dict[str, Any]:
    return {
        "trust_domain": "example.org",
        "outbound": {
            "listen": "127.0.0.1:15001",
            "routes": [{"name": "tools", "path_prefix": "/tools", **route}],
        },
    }


def gateway(**inbound: Any) -> dict[str, Any]:
    return {
        "trust_domain": "example.org",
        "inbound": {
            "listen": "0.0.0.0:8443",
            "mtls": "off",
            "oauth": {"issuer": "https://auth.example.com", "audience": "https://gw.example/mcp"},
            **inbound,
        },
    }


def problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(data)
    return [(p.path, problem_detail(p)) for p in info.value.problems]


def test_a_route_with_targets() -> None:
    config = parse_config(outbound(targets=[MATH, CLOCK], prefix_mode="always", max_sessions=5))
    assert config.outbound is not None
    route = config.outbound.routes[0]
    assert route.upstream is None and route.server_spiffe_id is None
    assert route.mux == MuxConfig(
        targets=(
            TargetConfig(
                name="math",
                upstream="https://math.mcp.svc:8443",
                server_spiffe_id=SpiffeId.parse("spiffe://example.org/ns/mcp/sa/math"),
                sni="math.mcp.svc",
            ),
            TargetConfig(
                name="clock",
                upstream="https://clock.mcp.svc:443",
                server_spiffe_id=SpiffeId.parse("spiffe://example.org/ns/mcp/sa/clock"),
                path="/mcp",
                jwt_svid_audience="spiffe://example.org/ns/mcp/sa/clock",
                sni="clock.mcp.svc",
            ),
        ),
        prefix_mode="always",
        max_sessions=5,
    )
    summary = "\n".join(config.summary())
    assert "route tools: /tools -> 2 targets multiplexed (prefix_mode always)" in summary
    assert "target clock: https://clock.mcp.svc:443/mcp" in summary


def test_an_edge_gateway() -> None:
    config = parse_config(gateway(targets=[MATH], session_idle="5m", target_wait="2s"))
    assert config.inbound is not None
    assert config.inbound.upstream is None
    mux = config.inbound.mux
    assert mux is not None and mux.session_idle == 300.0 and mux.target_wait == 2.0
    assert mux.prefix_mode == "multiple"
    assert "edge gateway, 1 target multiplexed" in "\n".join(config.summary())


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        (
            {"targets": [MATH], "upstream": "https://x.svc"},
            [("outbound.routes[0].upstream", "give either upstream (one server) or targets")],
        ),
        (
            {"targets": [MATH], "server_spiffe_id": "spiffe://example.org/x"},
            [("outbound.routes[0].server_spiffe_id", "each target has its own server_spiffe_id")],
        ),
        (
            {"targets": [MATH], "jwt_svid_audience": "x"},
            [("outbound.routes[0].jwt_svid_audience", "each target has its own")],
        ),
        (
            {
                "prefix_mode": "always",
                "upstream": "https://x.svc",
                "server_spiffe_id": MATH["server_spiffe_id"],
            },
            [("outbound.routes[0].prefix_mode", "only used with targets")],
        ),
        (
            {},
            [
                ("outbound.routes[0].upstream", "required"),
                ("outbound.routes[0].server_spiffe_id", "required"),
            ],
        ),
        ({"targets": []}, [("outbound.routes[0].targets", "at least one target is required")]),
        ({"targets": MATH}, [("outbound.routes[0].targets", "expected a list of targets")]),
        (
            {"targets": [MATH, {**CLOCK, "name": "math"}]},
            [("outbound.routes[0].targets[1].name", "duplicate target name 'math' (also")],
        ),
        (
            {"targets": [MATH, {**MATH, "name": "math2", "upstream": "https://MATH.mcp.svc:8443"}]},
            [("outbound.routes[0].targets[1].upstream", "the same server as")],
        ),
        (
            {"targets": [{**MATH, "name": "my__math"}]},
            [("outbound.routes[0].targets[0].name", "contains '_': target names join")],
        ),
        (
            {"targets": [{**MATH, "name": "Math"}]},
            [("outbound.routes[0].targets[0].name", "is not a target name")],
        ),
        (
            {"targets": [{"name": "math"}]},
            [
                ("outbound.routes[0].targets[0].upstream", "required"),
                ("outbound.routes[0].targets[0].server_spiffe_id", "required"),
            ],
        ),
        (
            {"targets": [{**MATH, "upstream": "http://math:80", "path": "mcp", "extra": 1}]},
            [
                ("outbound.routes[0].targets[0].extra", "unknown key 'extra'"),
                ("outbound.routes[0].targets[0].upstream", "must be an https:// URL"),
                ("outbound.routes[0].targets[0].path", "must start with '/'"),
            ],
        ),
        (
            {"targets": [MATH], "prefix_mode": "sometimes", "max_sessions": 0},
            [
                ("outbound.routes[0].prefix_mode", "expected 'always' or 'multiple' or 'never'"),
                ("outbound.routes[0].max_sessions", "must be from 1 to 1000000 (got 0)"),
            ],
        ),
    ],
)
def test_bad_targets_are_named_by_key_path(
    route: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    found = problems(outbound(**route))
    assert len(found) == len(expected), found
    for (path, message), (want_path, fragment) in zip(sorted(found), sorted(expected), strict=True):
        assert path == want_path
        assert fragment in message, message


def test_edge_gateway_problems() -> None:
    data = gateway(targets=[MATH], upstream="http://127.0.0.1:8000", forward_authorization=True)
    found = dict(problems(data))
    assert "give either upstream" in found["inbound.upstream"]
    assert "authenticates to its targets" in found["inbound.forward_authorization"]
    no_upstream = dict(problems(gateway()))
    assert "or targets" in no_upstream["inbound.upstream"]


def test_every_mux_key_is_rejected_without_targets() -> None:
    data = copy.deepcopy(gateway(upstream="http://127.0.0.1:8000"))
    data["inbound"].update(prefix_mode="never", session_idle="1m", max_sessions=3, target_wait=1)
    found = problems(data)
    assert sorted(p for p, _ in found) == [
        "inbound.max_sessions",
        "inbound.prefix_mode",
        "inbound.session_idle",
        "inbound.target_wait",
    ]


def test_check_config_names_bad_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            trust_domain: example.org
            outbound:
              listen: 127.0.0.1:15001
              routes:
                - name: tools
                  upstream: https://x.svc
                  targets:
                    - {name: math, upstream: https://math.svc, server_spiffe_id: spiffe://example.org/m}
                    - {name: a_b, upstream: https://math.svc, server_spiffe_id: spiffe://example.org/m}
            """
        )
    )
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("outbound.routes[0].targets[1].name: 'a_b' contains '_'")
    assert err[1].startswith("outbound.routes[0].upstream: give either upstream")


def test_gateway_rules_must_name_multiplexed_names() -> None:
    policy = {
        "default": "deny",
        "rules": [
            {"name": "ok", "tools": ["math__add", "*__echo", "clock__*", "m?th__x"]},
            {"name": "bare", "effect": "deny", "tools": ["rm"]},
            {"name": "typo", "prompts": ["maht__explain"]},
        ],
    }
    found = problems(gateway(targets=[MATH, CLOCK], mcp_policy=policy))
    assert found == [
        (
            "inbound.mcp_policy.rules[1].tools",
            "'rm' can never match: names here carry their target (math__rm); targets: math, clock",
        ),
        (
            "inbound.mcp_policy.rules[2].prompts",
            "'maht__explain' names no target; targets: math, clock",
        ),
    ]
    # unprefixed endpoints keep bare names
    assert parse_config(gateway(targets=[MATH], mcp_policy=policy)).inbound is not None
    never = gateway(targets=[MATH, CLOCK], prefix_mode="never", mcp_policy=policy)
    assert parse_config(never).inbound is not None


def test_targets_send_their_host_name_as_sni_but_never_an_ip() -> None:
    by_ip = {**MATH, "name": "ip", "upstream": "https://10.0.0.7:8443"}
    config = parse_config(outbound(targets=[MATH, CLOCK, by_ip]))
    assert config.outbound is not None
    mux = config.outbound.routes[0].mux
    assert mux is not None
    assert [t.sni for t in mux.targets] == ["math.mcp.svc", "clock.mcp.svc", None]


def test_sni_is_refused_on_a_route_with_targets() -> None:
    assert problems(outbound(targets=[MATH], sni="math.mcp.svc")) == [
        (
            "outbound.routes[0].sni",
            "not used with targets: each target is reached by its own upstream's host name",
        )
    ]
