"""Demo workloads for the local mesh demo and end-to-end tests.

``mcp_server`` is a real MCP server and ``mcp_client`` a thin real MCP client, both built on the
official MCP Python SDK and speaking Streamable HTTP only, so our sidecars can be put between them.
"""
