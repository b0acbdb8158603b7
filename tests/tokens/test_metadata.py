"""RFC 9728 protected resource metadata and the RFC 6750 challenge (MCP authorization)."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.tokens import (
    InsufficientScope,
    JwksUnavailable,
    TokenError,
    metadata_path,
    metadata_url,
    protected_resource_metadata,
    www_authenticate,
)

BASE = "/.well-known/oauth-protected-resource"


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        ("https://mcp.example.com/mcp", f"{BASE}/mcp"),
        ("https://mcp.example.com", BASE),
        ("https://mcp.example.com/", BASE),
        ("https://mcp.example.com:8443/a/b", f"{BASE}/a/b"),
        ("https://mcp.example.com/mcp/", f"{BASE}/mcp/"),  # RFC 9728 3.1: only the host's "/"
        ("http://127.0.0.1:8000/servers/math?tenant=1", f"{BASE}/servers/math"),
    ],
)
def test_metadata_path(resource: str, path: str) -> None:
    assert metadata_path(resource) == path


@pytest.mark.parametrize(
    ("public_url", "resource", "url"),
    [
        (
            "https://mcp.example.com",
            "https://mcp.example.com/mcp",
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp",
        ),
        (
            "https://edge.example.com:8443/ignored/path",
            "https://mcp.example.com/",
            "https://edge.example.com:8443/.well-known/oauth-protected-resource",
        ),
        (
            "http://127.0.0.1:8443",
            "https://mcp.example.com/t?tenant=1",
            "http://127.0.0.1:8443/.well-known/oauth-protected-resource/t?tenant=1",
        ),
    ],
)
def test_metadata_url(public_url: str, resource: str, url: str) -> None:
    assert metadata_url(public_url, resource) == url


@pytest.mark.parametrize(
    "resource", ["mcp.example.com/mcp", "/mcp", "ftp://x/y", "https://x/y#frag", "https://"]
)
def test_bad_resources_are_refused(resource: str) -> None:
    with pytest.raises(ValueError):
        metadata_path(resource)
    with pytest.raises(ValueError):
        metadata_url("https://ok.example.com", resource)


def test_bad_public_url_is_refused() -> None:
    with pytest.raises(ValueError):
        metadata_url("edge.example.com", "https://mcp.example.com/mcp")


def test_protected_resource_metadata_document() -> None:
    doc = protected_resource_metadata(
        "https://mcp.example.com/mcp", ("https://auth.example.com",), ["tools:call"]
    )
    assert doc == {
        "resource": "https://mcp.example.com/mcp",
        "authorization_servers": ["https://auth.example.com"],
        "scopes_supported": ["tools:call"],
        "bearer_methods_supported": ["header"],
    }
    assert json.loads(json.dumps(doc)) == doc


def test_www_authenticate_shapes() -> None:
    assert www_authenticate() == "Bearer"
    url = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
    assert www_authenticate(resource_metadata=url) == f'Bearer resource_metadata="{url}"'
    assert www_authenticate(
        resource_metadata=url,
        error="insufficient_scope",
        description="need more",
        scope="a b",
        realm="mcp",
    ) == (
        'Bearer realm="mcp", error="insufficient_scope", error_description="need more", '
        f'scope="a b", resource_metadata="{url}"'
    )


def test_www_authenticate_escapes_and_strips() -> None:
    value = www_authenticate(description='say "hi" \\ bye\r\nSet-Cookie: x=1\x00\x7f\u2028é')
    assert value == 'Bearer error_description="say \\"hi\\" \\\\ byeSet-Cookie: x=1?"'
    assert "\r" not in value and "\n" not in value


_PARAM_RE = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


@settings(deadline=None)
@given(
    description=st.text(),
    scope=st.text(),
    resource=st.text(),
)
def test_www_authenticate_never_breaks_the_header(
    description: str, scope: str, resource: str
) -> None:
    value = www_authenticate(resource_metadata=resource, description=description, scope=scope)
    assert value.isascii()
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)
    assert value.startswith("Bearer ")
    params = _PARAM_RE.findall(value[len("Bearer ") :])
    assert [name for name, _ in params] == ["error_description", "scope", "resource_metadata"]
    rebuilt = ", ".join(f'{name}="{quoted}"' for name, quoted in params)
    assert rebuilt == value[len("Bearer ") :]  # nothing outside the three quoted values
    unquoted = re.sub(r"\\(.)", r"\1", params[0][1])
    assert unquoted == "".join(
        c if c.isascii() else "?"
        for c in description
        if not (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029")
    )


def test_token_error_challenges() -> None:
    url = "https://m.example.com/.well-known/oauth-protected-resource"
    missing = TokenError("no bearer token", reason="missing_token", layer="oauth")
    assert missing.error is None
    assert missing.www_authenticate(resource_metadata=url) == f'Bearer resource_metadata="{url}"'
    expired = TokenError("token has expired", reason="expired", layer="oauth")
    assert expired.www_authenticate(resource_metadata=url) == (
        f'Bearer error="invalid_token", error_description="token has expired", '
        f'resource_metadata="{url}"'
    )
    assert expired.to_json() == {
        "error": "expired",
        "message": "token has expired",
        "status": 401,
        "layer": "oauth",
    }
    scope = InsufficientScope("token lacks a required scope", scope="a b")
    assert scope.status == 403
    assert 'error="insufficient_scope"' in scope.www_authenticate()
    assert 'scope="a b"' in scope.www_authenticate()
    down = JwksUnavailable("keys unavailable")
    assert down.status == 503 and down.error is None and down.layer == "oauth"
