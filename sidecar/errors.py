"""Typed errors shared by every layer.

Each error carries the HTTP status it maps to and a short machine-readable ``reason`` that is used
as a metric label and in JSON error bodies, so a refusal always says why in the same words.
"""

from __future__ import annotations

from collections.abc import Iterable


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


class ConfigErrors(SidecarError):
    """A configuration (or a policy, key or manifest file) has problems; ``problems`` lists
    every one (each with ``.path``). Parsers collect them all instead of stopping at the first."""

    status = 500
    reason = "config_error"

    def __init__(self, problems: Iterable[ConfigError]) -> None:
        self.problems: tuple[ConfigError, ...] = tuple(problems)
        count = len(self.problems)
        super().__init__(
            f"{count} configuration problem{'' if count == 1 else 's'}:\n"
            + "\n".join(f"  {problem}" for problem in self.problems)
        )


def problem_detail(problem: ConfigError) -> str:
    """The message of ``problem`` without its ``path: `` prefix."""
    prefix = f"{problem.path}: "
    return problem.message[len(prefix) :] if problem.message.startswith(prefix) else problem.message


class StartupError(ConfigError):
    """The sidecar cannot start as configured: a listener cannot bind, the Workload API socket's
    directory does not exist... ``path`` names the key; ``mcp-sidecar run`` prints it as one
    line and exits 1."""

    reason = "startup_error"
