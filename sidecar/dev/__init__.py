"""Development-only parts: the dev CA and the dev SPIFFE Workload API (``mcp-sidecar
dev-workload-api``), stand-ins for a SPIRE server and agent on a laptop, in tests and the demo.
``mcp-sidecar run`` never imports this package."""
