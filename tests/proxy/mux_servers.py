"""Two real MCP servers (official SDK) for the multiplexing tests: ``math`` and ``clock``.

``math.wait_for_release`` reports progress, then waits on ``gate`` (set by the test when the
first progress event reached the client), so "streamed, not buffered" is shown by an event,
not by timing. ``math.confirm`` asks the client through elicitation. Both serve a resource, a
resource template and a prompt; both have ``echo`` (a name collision for ``prefix_mode: never``).
"""

from __future__ import annotations

import asyncio

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import SamplingMessage, TextContent
from pydantic import BaseModel


class Answer(BaseModel):
    ok: bool


def math_server(gate: asyncio.Event, calls: list[str]) -> MCPServer:
    """``calls`` records every tool that ran (``math.add``...)."""
    mcp: MCPServer = MCPServer("math", instructions="Adds numbers.")

    @mcp.tool(description="Add two numbers.")
    def add(a: float, b: float) -> float:
        calls.append("math.add")
        return a + b

    @mcp.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        calls.append("math.echo")
        return f"math: {text}"

    @mcp.tool(description="Report progress, then wait until the test releases the gate.")
    async def wait_for_release(ctx: Context) -> str:
        await ctx.report_progress(1, 2, "waiting for the gate")
        try:
            await gate.wait()
        except BaseException:  # the client's notifications/cancelled reached this server
            calls.append("math.wait_for_release cancelled")
            raise
        await ctx.report_progress(2, 2, "released")
        return "released"

    @mcp.tool(description="Ask the user a yes/no question (elicitation).")
    async def confirm(question: str, ctx: Context) -> str:
        result = await ctx.elicit(question, Answer)
        if result.action == "accept":
            return f"accepted: ok={result.data.ok}"
        return result.action

    @mcp.tool(description="Tell the client the tool list changed (on its GET stream).")
    async def announce(ctx: Context) -> str:
        await ctx.request_context.session.send_tool_list_changed()
        return "announced"

    @mcp.resource("memo://notes", name="notes", mime_type="text/plain")
    def notes() -> str:
        return "pi is about 3.14159"

    @mcp.resource("memo://topics/{topic}", name="topic")
    def topic(topic: str) -> str:
        return f"all about {topic}"

    @mcp.prompt(description="Explain a topic.")
    def explain(topic: str) -> str:
        return f"Explain {topic} simply."

    return mcp


def clock_server(calls: list[str]) -> MCPServer:
    mcp: MCPServer = MCPServer("clock", instructions="Tells the time.")

    @mcp.tool(description="Current time (always noon here).")
    def get_time() -> str:
        calls.append("clock.get_time")
        return "12:00"

    @mcp.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        calls.append("clock.echo")
        return f"clock: {text}"

    @mcp.tool(description="Ask the client's model (sampling, on this call's stream).")
    async def ask_model(question: str, ctx: Context) -> str:
        answer = await ctx.request_context.session.create_message(
            messages=[
                SamplingMessage(role="user", content=TextContent(type="text", text=question))
            ],
            max_tokens=16,
            related_request_id=ctx.request_id,
        )
        return answer.content.text if isinstance(answer.content, TextContent) else "?"

    @mcp.tool(description="The client's roots (asked on the GET stream).")
    async def roots(ctx: Context) -> str:
        listed = await ctx.request_context.session.list_roots()
        return ",".join(str(root.uri) for root in listed.roots)

    @mcp.resource("memo://notes", name="zones", mime_type="text/plain")
    def zones() -> str:
        return "UTC, CET"

    @mcp.prompt(description="Plan a day.")
    def schedule(day: str) -> str:
        return f"Plan {day}."

    return mcp
