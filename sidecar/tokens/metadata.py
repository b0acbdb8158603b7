"""What an MCP server (OAuth protected resource) tells clients: RFC 9728 metadata and the RFC 6750
``WWW-Authenticate`` challenge (MCP authorization spec 2025-06-18 / 2025-11-25). Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "WELL_KNOWN_PATH",
    "metadata_path",
    "metadata_url",
    "protected_resource_metadata",
    "www_authenticate",
]

WELL_KNOWN_PATH = "/.well-known/oauth-protected-resource"

# C0 and C1 controls, DEL, and the Unicode line/paragraph separators: never in a header value.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")


def _resource_parts(resource: str) -> SplitResult:
    parts = urlsplit(resource)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"resource {resource!r} is not an absolute http(s) URL")
    if parts.fragment or "#" in resource:
        raise ValueError(f"resource {resource!r} must not have a fragment (RFC 8707 sec. 2)")
    return parts


def protected_resource_metadata(
    resource: str, authorization_servers: Sequence[str], scopes_supported: Sequence[str]
) -> dict[str, Any]:
    """The RFC 9728 section 2 document served at ``metadata_path(resource)``."""
    _resource_parts(resource)
    return {
        "resource": resource,
        "authorization_servers": list(authorization_servers),
        "scopes_supported": list(scopes_supported),
        "bearer_methods_supported": ["header"],
    }


def metadata_path(resource: str) -> str:
    """RFC 9728 section 3.1: ``/.well-known/oauth-protected-resource`` followed by the resource's
    path; a bare ``/`` after the host adds nothing (``https://mcp.example.com/mcp`` ->
    ``/.well-known/oauth-protected-resource/mcp``). A query, if any, is not part of the path (see
    ``metadata_url``)."""
    path = _resource_parts(resource).path
    return WELL_KNOWN_PATH + ("" if path in ("", "/") else path)


def metadata_url(public_url: str, resource: str) -> str:
    """The absolute metadata URL at the origin where clients reach us (``public_url``), e.g. for
    ``WWW-Authenticate: Bearer resource_metadata="..."``. A query of ``resource`` is kept, after
    the path, as RFC 9728 section 3.1 says."""
    public = urlsplit(public_url)
    if public.scheme not in ("https", "http") or not public.netloc:
        raise ValueError(f"public URL {public_url!r} is not an absolute http(s) URL")
    query = _resource_parts(resource).query
    return f"{public.scheme}://{public.netloc}{metadata_path(resource)}" + (
        f"?{query}" if query else ""
    )


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string: controls removed, non-ASCII replaced, ``\\`` and ``"`` escaped."""
    clean = _NON_ASCII_RE.sub("?", _CONTROL_RE.sub("", value))
    return '"' + clean.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    *,
    resource_metadata: str | None = None,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
    realm: str | None = None,
) -> str:
    """A ``Bearer`` challenge (RFC 6750 section 3, RFC 9728 section 5.1). Every value is quoted
    and sanitised, so no input can end the header or inject another one."""
    params: list[tuple[str, str | None]] = [
        ("realm", realm),
        ("error", error),
        ("error_description", description),
        ("scope", scope),
        ("resource_metadata", resource_metadata),
    ]
    rendered = [f"{name}={_quoted(value)}" for name, value in params if value is not None]
    return "Bearer " + ", ".join(rendered) if rendered else "Bearer"
