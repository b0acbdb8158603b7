"""The README's main command, ``mcp-sidecar demo``, runs end to end and exits 0."""

from __future__ import annotations

from tests.processes import run_module


async def test_demo_command_exits_zero_with_a_report() -> None:
    code, report, err = await run_module("sidecar.cli", "demo", timeout=90)
    assert code == 0, report + err
    assert "result: OK" in report
    assert "[ok ] rogue     tools/list" in report and "not_allowlisted" in report
    assert "FAIL" not in report
    # one endpoint for two MCP servers, and the talk's role rule at the edge gateway
    assert "[ok ] agent     tools/list on /tools (2 servers)" in report
    assert "clock__get_time" in report and "math__add" in report
    assert "[ok ] user      tools/list via the gateway         clock__get_time\n" in report
    assert "[ok ] user      tools/call math__echo(text='hi')   -> refused: -32001" in report
    assert "[ok ] admin     tools/call math__echo(text='hi')   -> hi" in report
    # the tracing extra is part of dev: one tool call's trace across both sidecars
    assert "tools/call add(a=20, b=22), traced" in report
    trace = report[report.index("traced across both sidecars") :].splitlines()
    assert trace[1].startswith("trace ")
    tree = [line.split()[:3] for line in trace[2:4]]
    assert tree == [
        ["agent-outbound", "SERVER", "tools/call"],
        ["math-inbound", "SERVER", "tools/call"],
    ]
    # the inbound span indented under its parent, the agent's
    indents = [len(line) - len(line.lstrip()) for line in trace[2:4]]
    assert indents[0] < indents[1]
