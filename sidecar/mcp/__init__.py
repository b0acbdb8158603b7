"""MCP awareness, pure: JSON-RPC parsing, policy decisions, list filtering. No I/O."""
