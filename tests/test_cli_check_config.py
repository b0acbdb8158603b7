"""``mcp-sidecar check-config FILE``: every problem on stderr (exit 1) or a summary (exit 0)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_valid_inbound_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLES / "inbound.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{EXAMPLES / 'inbound.yaml'}: OK\n")
    assert "inbound: 0.0.0.0:8443 -> http://127.0.0.1:8000" in out
    assert "2 allowed SPIFFE ID patterns" in out
    assert "admin: 127.0.0.1:15000" in out


def test_valid_outbound_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLES / "outbound.yaml")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "outbound: 127.0.0.1:15001; 3 routes" in out
    assert (
        "route math: /math -> https://math.mcp.svc:8443 (server spiffe://example.org/ns/mcp/sa/math)"
        in out
    )
    assert "workload API: $SPIFFE_ENDPOINT_SOCKET" in out


def test_every_problem_is_printed_as_path_colon_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        textwrap.dedent(
            """\
            trust_domain: example.org
            inbound:
              listne: 0.0.0.0:8443
              upstream: http://127.0.0.1:8000
              allow_spiffe_ids: [spiffe://example.org/a, "spiffe://example.org/b*"]
              mcp_policy: {default: deny}
            outbound:
              listen: 0.0.0.0:15001
              routes:
                - {name: math, upstream: "http://math:80", server_spiffe_id: "spiffe://example.org/m"}
            """
        )
    )
    assert main(["check-config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines == [
        "inbound.listne: unknown key 'listne'; did you mean 'listen'? (line 3)",
        "inbound.mcp_policy: not supported by this version yet (per-tool MCP policy); "
        "remove it: an ignored security policy would silently allow what it should deny (line 6)",
        "inbound.listen: required (the mTLS listen address, e.g. 0.0.0.0:8443)",
        "inbound.allow_spiffe_ids[1]: not a SPIFFE ID pattern: SPIFFE ID pattern "
        "'spiffe://example.org/b*': a wildcard must be a whole segment ('*' or a final '**'), "
        "not 'b*' (line 5)",
        "outbound.routes[0].upstream: must be an https:// URL (routes always originate mTLS to "
        "the server's sidecar), got http:// (line 10)",
        "outbound.listen: 0.0.0.0:15001 is not a loopback address: the outbound side is plain "
        "HTTP and lends this workload's SPIFFE identity to whoever connects; listen on "
        "127.0.0.1, [::1] or localhost, or set allow_non_loopback: true if the network in front "
        "is trusted (line 8)",
    ]


def test_duplicate_keys_and_syntax_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "dup.yaml"
    config.write_text(
        "trust_domain: example.org\n"
        "outbound:\n"
        "  listen: 127.0.0.1:15001\n"
        "  routes: [{name: a, upstream: 'https://a:1', server_spiffe_id: 'spiffe://example.org/a'}]\n"
        "  listen: 0.0.0.0:15001\n"
    )
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == (
        "outbound.listen: duplicate key (first at line 3, again at line 5); "
        "a security config must not be ambiguous"
    )
    config.write_text("trust_domain: example.org\ninbound: {listen: [\n")
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{config}: invalid YAML at line 3")
    assert len(err.splitlines()) == 1


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["check-config", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"{missing}: cannot read the file: No such file or directory\n")


def test_file_argument_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["check-config"])
    assert info.value.code == 2
    assert "FILE" in capsys.readouterr().err
