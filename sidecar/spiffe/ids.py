"""SPIFFE ID parsing per the SPIFFE-ID spec (section 2), strict where the spec says MUST.

Unlike py-spiffe's ``SpiffeId`` we never normalise: an uppercase trust domain, a percent-escape or a
``.``/``..`` segment is an error, not something to fix up, because a normalised ID is a different
ID from the one a peer presented.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from sidecar.errors import SidecarError

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255

_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")
_PATH_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")


class SpiffeIdError(SidecarError):
    """A string that is not a valid SPIFFE ID (or trust domain); maps to 403 on a peer."""

    status = 403
    reason = "invalid_spiffe_id"


def validate_trust_domain(name: str) -> str:
    """Return ``name`` if it is a valid trust domain name (``[a-z0-9.-_]``), else raise."""
    if not name:
        raise SpiffeIdError("trust domain is empty", reason="empty_trust_domain")
    # surrogatepass: a lone surrogate must end up as bad_trust_domain_chars, not UnicodeEncodeError
    if len(name.encode("utf-8", "surrogatepass")) > MAX_TRUST_DOMAIN_BYTES:
        raise SpiffeIdError(
            f"trust domain longer than {MAX_TRUST_DOMAIN_BYTES} bytes",
            reason="trust_domain_too_long",
        )
    bad = sorted(set(name) - _TRUST_DOMAIN_CHARS)
    if bad:
        raise SpiffeIdError(
            f"trust domain {name!r} contains invalid characters {''.join(bad)!r}"
            " (allowed: lowercase letters, digits, '.', '-', '_')",
            reason="bad_trust_domain_chars",
        )
    return name


def trust_domain_from_bundle_key(key: str) -> str:
    """Accept ``spiffe://td`` (what the Workload API sends) or a bare ``td``; return ``td``."""
    if key.startswith(SCHEME_PREFIX):
        sid = SpiffeId.parse(key)
        if sid.path:
            raise SpiffeIdError(f"bundle key {key!r} has a path", reason="bundle_key_has_path")
        return sid.trust_domain
    return validate_trust_domain(key)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A syntactically valid SPIFFE ID. ``path`` is ``""`` or starts with ``/``."""

    trust_domain: str
    path: str

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse ``text`` strictly; the trust-domain ID ``spiffe://td`` (empty path) is allowed."""
        if not isinstance(text, str):
            raise SpiffeIdError("SPIFFE ID must be a string")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID longer than {MAX_ID_BYTES} bytes", reason="id_too_long")
        if not text.startswith(SCHEME_PREFIX):
            raise SpiffeIdError(
                f"{_short(text)} does not start with 'spiffe://'", reason="bad_scheme"
            )
        rest = text[len(SCHEME_PREFIX) :]
        for char, what in (("?", "query"), ("#", "fragment"), ("@", "userinfo"), (":", "port")):
            if char in rest:
                raise SpiffeIdError(
                    f"{_short(text)} must not contain a {what} ({char!r})", reason=f"has_{what}"
                )
        slash = rest.find("/")
        trust_domain, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
        validate_trust_domain(trust_domain)
        if path:
            _validate_path(path, text)
        return cls(trust_domain, path)

    @classmethod
    def parse_workload(cls, text: str) -> SpiffeId:
        """Parse an ID that names a workload: the path must not be empty (no root-path IDs)."""
        sid = cls.parse(text)
        if not sid.path:
            raise SpiffeIdError(
                f"{_short(text)} names a trust domain, not a workload (empty path)",
                reason="root_path_id",
            )
        return sid

    @property
    def segments(self) -> tuple[str, ...]:
        """Path segments, e.g. ``("ns", "a", "sa", "b")``; empty for a trust-domain ID."""
        return tuple(self.path[1:].split("/")) if self.path else ()

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"


def _validate_path(path: str, text: str) -> None:
    if path.endswith("/"):
        raise SpiffeIdError(f"{_short(text)} has a trailing '/'", reason="trailing_slash")
    for segment in path[1:].split("/"):
        if not segment:
            raise SpiffeIdError(f"{_short(text)} has an empty path segment", reason="empty_segment")
        if segment in (".", ".."):
            raise SpiffeIdError(
                f"{_short(text)} has a relative path segment {segment!r}", reason="dot_segment"
            )
        bad = sorted(set(segment) - _PATH_SEGMENT_CHARS)
        if bad:
            raise SpiffeIdError(
                f"{_short(text)} path contains invalid characters {''.join(bad)!r}"
                " (allowed: letters, digits, '.', '-', '_')",
                reason="bad_path_chars",
            )


def _short(text: str) -> str:
    """Quote an untrusted ID for an error message without echoing kilobytes of it."""
    return repr(text if len(text) <= 120 else text[:117] + "...")
