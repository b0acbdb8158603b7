"""MCP awareness, pure: JSON-RPC parsing, policy decisions, list filtering, rate limits. No I/O
(``explain``, the CLI on top of them, is the one module that reads a file)."""
