"""Typed errors shared by every layer.

Each error carries the HTTP status it maps to and a short machine-readable ``reason`` that is used
as a metric label and in JSON error bodies, so a refusal always says why in the same words.
"""

from __future__ import annotations


class SidecarError(Exception):
    """Base class: ``status`` is the HTTP status a proxy answers with, ``reason`` a stable label."""

    status: int = 500
    reason: str = "internal_error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def to_json(self) -> dict[str, object]:
        """The JSON body of the HTTP refusal."""
        return {"error": self.reason, "message": self.message, "status": self.status}


class ConfigError(SidecarError):
    """Invalid configuration; ``path`` names the offending key (e.g. ``inbound.listen``)."""

    status = 500
    reason = "config_error"

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class StartupError(ConfigError):
    """The sidecar cannot start as configured: a listener cannot bind, the Workload API socket's
    directory does not exist... ``path`` names the key; ``mcp-sidecar run`` prints it as one
    line and exits 1."""

    reason = "startup_error"
