"""SSL contexts from identity snapshots, rebuilt (never mutated) on every Workload API update.

Python 3.11's ``ssl`` has no verify callback, so verification is two-stage:

1. OpenSSL, with the CAs of *every* trusted trust domain loaded, rejects strangers, expired and
   self-signed certificates at the handshake;
2. after the handshake, ``verify_peer`` re-validates the peer's chain against the bundle of the
   peer ID's *own* trust domain and applies the X509-SVID leaf rules and the allowlist
   (``sidecar.spiffe``), so a CA of federated domain B can never vouch for ``spiffe://A/...``.

Rotation: each update builds fresh server and client contexts and swaps them with one attribute
assignment. Listeners keep a single long-lived context whose ``sni_callback`` (which OpenSSL calls
for every ClientHello, with or without SNI) moves each new handshake onto the current server
context; connections already open keep the context they were accepted with. Session tickets are
disabled because resumed sessions carry no peer chain to re-verify.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.compat import unverified_chain_der
from sidecar.errors import SidecarError
from sidecar.identity.snapshot import X509Snapshot, X509Svid, certificates_to_pem
from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist
from sidecar.spiffe.verify import VerificationError, verify_x509_svid_der
from sidecar.tls.alerts import AlertingContext

ALPN_HTTP1 = ["http/1.1"]


class PeerRejected(SidecarError):
    """The handshake succeeded but the peer's identity is not acceptable (403)."""

    status = 403
    reason = "peer_not_allowed"

    def __init__(self, message: str, *, reason: str | None = None, peer: SpiffeId | None = None):
        super().__init__(message, reason=reason)
        self.peer = peer


class NotReady(SidecarError):
    """No usable SVID — none yet (``no_svid``) or ours expired (``svid_expired``, e.g. a long
    Workload API outage): nothing may be presented, so no TLS is spoken (503)."""

    status = 503
    reason = "no_svid"


def _base_context(
    protocol: int, snapshot: X509Snapshot, cls: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    ctx = cls(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # identity is the SPIFFE ID, never a hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Bundles may hold intermediates (SPIRE behind an upstream CA): trust them as anchors.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION
    ctx.load_verify_locations(cadata=certificates_to_pem(snapshot.all_cas()))
    _load_svid(ctx, snapshot.svid)
    ctx.set_alpn_protocols(ALPN_HTTP1)
    return ctx


def build_server_context(snapshot: X509Snapshot) -> ssl.SSLContext:
    """Server side: requires a client certificate chaining to some trusted bundle; a client
    refused at the handshake gets OpenSSL's alert (``sidecar.tls.alerts``), not a bare reset."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, snapshot, AlertingContext)
    ctx.num_tickets = 0
    return ctx


def build_client_context(snapshot: X509Snapshot) -> ssl.SSLContext:
    """Client side: presents our SVID; no system CAs, no hostname check."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, snapshot)


def _load_svid(ctx: ssl.SSLContext, svid: X509Svid) -> None:
    """``load_cert_chain`` only reads files: hand it an anonymous in-memory file (memfd) so the
    private key never touches a disk; fall back to a private temp file where memfd is missing."""
    pem = (svid.chain_pem() + svid.key_pem()).encode("ascii")
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("svid", os.MFD_CLOEXEC)
        try:
            _write_all(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="mcp-sidecar-") as tmp:  # pragma: no cover - non-Linux
        path = os.path.join(tmp, "svid.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, pem)
        finally:
            os.close(fd)
        ctx.load_cert_chain(path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def peer_chain_der(ssl_object: Any) -> list[bytes]:
    """DER chain the peer sent, leaf first.

    Falls back to the leaf alone (e.g. a resumed TLS 1.2 session); then verification can only
    succeed if the leaf chains directly to a bundle CA.
    """
    chain = unverified_chain_der(ssl_object)
    if chain:
        return chain
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


@dataclass(frozen=True, slots=True)
class ContextSet:
    """Contexts built from one snapshot; replaced as a whole so they always agree."""

    snapshot: X509Snapshot
    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def build(cls, snapshot: X509Snapshot) -> ContextSet:
        return cls(snapshot, build_server_context(snapshot), build_client_context(snapshot))


class RotatingTls:
    """Current TLS contexts for a workload, swapped atomically on every identity update.

    Wire it to the identity source with ``source.subscribe(tls.update)``.
    """

    def __init__(
        self, snapshot: X509Snapshot | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._current: ContextSet | None = None
        self._expires_at = 0.0  # unix time of the current SVID's notAfter
        self._clock = clock
        self._listener_context: ssl.SSLContext | None = None
        self.swaps = 0
        if snapshot is not None:
            self.update(snapshot)

    def update(self, snapshot: X509Snapshot) -> None:
        """Build new contexts for ``snapshot`` and make them current (one assignment)."""
        self._current = ContextSet.build(snapshot)
        self._expires_at = snapshot.svid.not_after.timestamp()
        self.swaps += 1

    @property
    def current(self) -> ContextSet:
        """The contexts of our SVID — only while it is valid: an expired SVID (the Workload
        API could not renew it) is never presented, so every new handshake, in or out, and
        every request that needs our identity is refused until a valid one arrives."""
        current = self._current
        if current is None:
            raise NotReady("no X.509-SVID received from the Workload API yet")
        if self._clock() >= self._expires_at:
            raise NotReady(
                f"our X.509-SVID expired at {current.snapshot.svid.not_after.isoformat()} and "
                "the Workload API has not renewed it",
                reason="svid_expired",
            )
        return current

    @property
    def expired(self) -> bool:
        """Whether we hold an SVID that has expired (not: whether we have none yet)."""
        return self._current is not None and self._clock() >= self._expires_at

    @property
    def snapshot(self) -> X509Snapshot:
        return self.current.snapshot

    def client_context(self) -> ssl.SSLContext:
        """Context for a new outgoing connection (take one per connection attempt)."""
        return self.current.client

    def listener_context(self) -> ssl.SSLContext:
        """A long-lived context for a listening socket that serves the current SVID to each new
        handshake: its ``sni_callback`` switches the handshake to the current server context."""
        if self._listener_context is None:
            ctx = build_server_context(self.current.snapshot)
            ctx.sni_callback = self._select_server_context
            self._listener_context = ctx
        return self._listener_context

    def _select_server_context(
        self, ssl_object: Any, server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        try:
            ssl_object.context = self.current.server
        except NotReady:  # nothing valid to present: end the handshake with an alert
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    def verify_peer(self, ssl_object: Any, allowlist: Allowlist | None = None) -> SpiffeId:
        """SPIFFE-verify the peer of a completed handshake against the *current* bundles, then
        the allowlist. Raises ``PeerRejected`` (403) with a stable reason; fails closed."""
        return verify_peer(ssl_object, self.current.snapshot, allowlist)

    def verify_server(self, ssl_object: Any, expected: SpiffeId) -> SpiffeId:
        """Client side: the server must present exactly ``expected`` (never a hostname check)."""
        peer = verify_peer(ssl_object, self.current.snapshot)
        if peer != expected:
            raise PeerRejected(
                f"server presented {peer}, expected {expected}",
                reason="unexpected_server_id",
                peer=peer,
            )
        return peer


def verify_peer(
    ssl_object: Any, snapshot: X509Snapshot, allowlist: Allowlist | None = None
) -> SpiffeId:
    """Stage two of verification (see module docstring) for one completed handshake."""
    if ssl_object is None:
        raise PeerRejected("connection is not TLS", reason="no_tls")
    chain = peer_chain_der(ssl_object)
    if not chain:
        raise PeerRejected("peer presented no certificate", reason="no_peer_certificate")
    try:
        peer = verify_x509_svid_der(chain, snapshot.bundles)
    except VerificationError as exc:
        raise PeerRejected(exc.message, reason=exc.reason) from exc
    if allowlist is not None and not allowlist.allows(peer):
        raise PeerRejected(f"{peer} is not in the allowlist", reason="not_allowlisted", peer=peer)
    return peer
