"""The one error the HTTP/1.1 parser raises."""

from __future__ import annotations


class HttpParseError(Exception):
    """A malformed or refused HTTP message; ``status`` is the HTTP status to answer with."""

    def __init__(
        self, message: str, *, status: int = 400, reason: str = "malformed_request"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.reason = reason

    def __repr__(self) -> str:
        return f"HttpParseError({self.message!r}, status={self.status}, reason={self.reason!r})"
