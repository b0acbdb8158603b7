"""What a validated token tells us, and who the caller is (mTLS identity + token).

Pure: no I/O. ``VerifiedToken`` is only ever built by the validators after the signature and the
claims were checked; ``Principal`` is what the MCP policy and the audit log see.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sidecar.spiffe.ids import SpiffeId
from sidecar.tokens.errors import TokenError, TokenLayer

SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+", re.ASCII)  # RFC 6749 sec. 3.3
_HEX_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature, header and claims were validated."""

    layer: TokenLayer
    subject: str
    issuer: str | None
    audience: tuple[str, ...]
    expires_at: dt.datetime
    scopes: frozenset[str] = frozenset()
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False, hash=False
    )
    """Every claim, deeply read-only (objects are mappings, arrays are tuples)."""
    cnf_x5t_s256: str | None = None
    """RFC 8705 certificate binding: base64url (no padding) SHA-256 of the client cert DER."""
    actors: tuple[str, ...] = ()
    """RFC 8693 delegation chain from the ``act`` claim: the current actor (``act.sub``) first,
    then prior actors (``act.act.sub``, ...); empty when the token is not delegated."""


def freeze(value: Any) -> Any:
    """A deeply read-only copy of parsed JSON."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def parse_scopes(claims: Mapping[str, Any], layer: TokenLayer) -> frozenset[str]:
    """Scopes from ``scope`` (RFC 8693/9068: space-separated string) and/or ``scp`` (a list, or a
    space-separated string as some issuers send it). A malformed value refuses the token."""
    scopes: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            items = [s for s in value.split(" ") if s]
        elif isinstance(value, list) and all(isinstance(s, str) for s in value):
            items = list(value)
        else:
            raise TokenError(
                f"claim '{name}' is not a string or a list of strings",
                reason="malformed_claim",
                layer=layer,
            )
        for item in items:
            if not SCOPE_TOKEN_RE.fullmatch(item):
                raise TokenError(
                    f"claim '{name}' contains an invalid scope token",
                    reason="malformed_claim",
                    layer=layer,
                )
        scopes.update(items)
    return frozenset(scopes)


def claim_strings(claims: Mapping[str, Any], name: str, layer: TokenLayer) -> tuple[str, ...]:
    """A claim holding a string or a list of strings (roles, groups), as a tuple; absent -> ().

    ``name`` is looked up as a top-level claim first (``https://example.com/roles`` style names
    contain dots); if absent and it contains dots, as a path into nested objects
    (``realm_access.roles``).
    """
    if not name:
        return ()
    if name in claims:
        value = claims[name]
    else:
        value = None
        if "." in name:
            node: Any = claims
            for part in name.split("."):
                if not isinstance(node, Mapping) or part not in node:
                    node = None
                    break
                node = node[part]
            value = node
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TokenError(
        f"claim '{name}' is not a string or a list of strings",
        reason="malformed_claim",
        layer=layer,
    )


MAX_ACTORS = 8
"""Longest delegation chain accepted (nested ``act`` claims); a deeper one is refused."""


def delegation_chain(claims: Mapping[str, Any], layer: TokenLayer) -> tuple[str, ...]:
    """The actors of an RFC 8693 delegated token (section 4.1): ``act.sub`` is the current
    actor, a nested ``act`` inside it names the actor before, and so on. Every ``act`` must be
    an object with a non-empty string ``sub``: an actor we cannot name could not be checked
    against the mTLS peer or the policy, so such a token is refused (fail closed)."""
    chain: list[str] = []
    node: Any = claims
    while "act" in node:
        act = node["act"]
        if not isinstance(act, Mapping):
            raise TokenError("claim 'act' is not an object", reason="malformed_claim", layer=layer)
        actor = act.get("sub")
        if not isinstance(actor, str) or not actor:
            raise TokenError(
                "claim 'act' has no 'sub' naming the actor", reason="malformed_claim", layer=layer
            )
        chain.append(actor)
        if len(chain) > MAX_ACTORS:
            raise TokenError(
                f"delegation chain longer than {MAX_ACTORS} actors",
                reason="malformed_claim",
                layer=layer,
            )
        node = act
    return tuple(chain)


def cert_thumbprint(peer_cert_sha256_hex: str) -> str:
    """RFC 8705 ``x5t#S256`` from a hex SHA-256 digest of the certificate DER."""
    if not _HEX_SHA256_RE.fullmatch(peer_cert_sha256_hex):
        raise ValueError("expected the hex SHA-256 digest of the client certificate")
    digest = binascii.unhexlify(peer_cert_sha256_hex)
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_cnf(token: VerifiedToken, peer_cert_sha256_hex: str | None, *, required: bool) -> None:
    """RFC 8705 sec. 3: a certificate-bound token is only valid over a TLS connection whose client
    certificate is the bound one.

    * the token has ``cnf.x5t#S256``: it must equal the client certificate's thumbprint; without a
      client certificate that is a mismatch too (``cnf_mismatch``);
    * the token has none: fine unless ``required`` (``cnf_missing``).
    """
    bound = token.cnf_x5t_s256
    if bound is None:
        if required:
            raise TokenError(
                "token is not bound to a client certificate (cnf.x5t#S256 required)",
                reason="cnf_missing",
                layer=token.layer,
            )
        return
    if peer_cert_sha256_hex is None:
        raise TokenError(
            "token is bound to a client certificate, but none was presented",
            reason="cnf_mismatch",
            layer=token.layer,
        )
    actual = cert_thumbprint(peer_cert_sha256_hex)
    if not hmac.compare_digest(bound.encode("ascii", "replace"), actual.encode("ascii")):
        raise TokenError(
            "token is bound to another client certificate",
            reason="cnf_mismatch",
            layer=token.layer,
        )


def check_actor(token: VerifiedToken, peer: SpiffeId | None) -> None:
    """``bind_actor_to_peer``: a delegated token (RFC 8693 ``act``) may only be presented by its
    current actor, so an exchanged token copied off the agent that obtained it is useless over
    any other workload's connection. Tokens without ``act`` are not affected."""
    if not token.actors:
        return
    if peer is None or token.actors[0] != str(peer):
        raise TokenError(
            "token's current actor (act.sub) is not the mTLS peer's SPIFFE ID",
            reason="actor_mismatch",
            layer=token.layer,
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the mTLS peer's SPIFFE ID (None without mTLS) and the validated token
    (None when no token layer is configured)."""

    spiffe_id: SpiffeId | None = None
    token: VerifiedToken | None = None

    @property
    def sub(self) -> str | None:
        """The token's subject (None without a token; the mTLS identity is ``spiffe_id``)."""
        return self.token.subject if self.token is not None else None

    @property
    def actor(self) -> str | None:
        """The current actor of a delegated token (``act.sub``): who acts for ``sub``."""
        return self.token.actors[0] if self.token is not None and self.token.actors else None

    @property
    def actors(self) -> tuple[str, ...]:
        """The whole delegation chain, current actor first (empty: not delegated)."""
        return self.token.actors if self.token is not None else ()

    @property
    def scopes(self) -> frozenset[str]:
        return self.token.scopes if self.token is not None else frozenset()

    @property
    def roles(self) -> tuple[str, ...]:
        return self.token.roles if self.token is not None else ()

    @property
    def groups(self) -> tuple[str, ...]:
        return self.token.groups if self.token is not None else ()

    def to_log(self) -> dict[str, Any]:
        """For the audit log: identities and authorizations, never the raw token."""
        return {
            "spiffe_id": str(self.spiffe_id) if self.spiffe_id is not None else None,
            "token_layer": self.token.layer if self.token is not None else None,
            "sub": self.sub,
            "actor": self.actor,
            "actor_chain": list(self.actors),
            "scopes": sorted(self.scopes),
            "roles": list(self.roles),
            "groups": list(self.groups),
        }
