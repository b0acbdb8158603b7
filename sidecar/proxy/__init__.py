"""The I/O layer: listeners, the inbound and outbound proxies, the admin endpoints."""
