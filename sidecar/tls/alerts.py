"""TLS alerts: send ours when a handshake we serve fails, and name the ones a server sends us.

**Sending.** When OpenSSL fails a server-side handshake (e.g. the client's certificate chains to
no trusted CA) it writes a fatal alert (``unknown_ca``, ``certificate_required``...) into the
outgoing memory BIO and returns an error; asyncio's and uvloop's SSL protocols then close the
connection without writing what was left there. The client sees a bare reset and cannot tell an
identity refusal from a crash. Server contexts are therefore ``AlertingContext``s: their
``wrap_bio`` (public API) hands out ``AlertingSSLObject``s (``SSLContext.sslobject_class``)
that keep the outgoing BIO, and the connection that created the SSL protocol claims the object
(``arm``) and gives it the raw transport's ``write``. A handshake that fails writes the pending
alert through it before the SSL protocol closes the connection.

**Receiving.** OpenSSL names an alert received from the peer in the error's ``reason``
(``TLSV1_ALERT_UNKNOWN_CA``, ``SSLV3_ALERT_BAD_CERTIFICATE``, ``TLSV13_ALERT_CERTIFICATE_REQUIRED``
...); ``received_alert`` turns that into the alert's RFC 8446 name, from a closed set (a metric
label), or ``None`` when the error is not an alert from the peer.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any

ALERTS = frozenset(
    {
        "unexpected_message",
        "bad_record_mac",
        "decryption_failed",
        "record_overflow",
        "decompression_failure",
        "handshake_failure",
        "no_certificate",
        "bad_certificate",
        "unsupported_certificate",
        "certificate_revoked",
        "certificate_expired",
        "certificate_unknown",
        "illegal_parameter",
        "unknown_ca",
        "access_denied",
        "decode_error",
        "decrypt_error",
        "export_restriction",
        "protocol_version",
        "insufficient_security",
        "internal_error",
        "inappropriate_fallback",
        "user_canceled",
        "no_renegotiation",
        "missing_extension",
        "unsupported_extension",
        "certificate_unobtainable",
        "unrecognized_name",
        "bad_certificate_status_response",
        "bad_certificate_hash_value",
        "unknown_psk_identity",
        "certificate_required",
        "no_application_protocol",
    }
)
"""Every alert of TLS 1.0-1.3 (RFC 8446 section 6 and its predecessors) but close_notify."""

#: Certificate-related alerts: the server refused the identity we presented.
CERTIFICATE_ALERTS = frozenset(
    {
        "bad_certificate",
        "unsupported_certificate",
        "certificate_revoked",
        "certificate_expired",
        "certificate_unknown",
        "unknown_ca",
        "access_denied",
        "certificate_required",
        "no_certificate",
    }
)

_RECEIVED = re.compile(r"(?:SSLV3|TLSV1|TLSV13)_(?:ALERT_)?([A-Z_]+)", re.ASCII)
_SPELLINGS = {"user_cancelled": "user_canceled"}


def received_alert(exc: BaseException | None) -> str | None:
    """The name of the TLS alert the peer sent, if ``exc`` reports one; else ``None``."""
    if not isinstance(exc, ssl.SSLError) or isinstance(exc, ssl.SSLCertVerificationError):
        return None
    match = _RECEIVED.fullmatch(str(exc.reason or ""))
    if match is None:
        return None
    name = match.group(1).lower()
    name = _SPELLINGS.get(name, name)
    return name if name in ALERTS else None


class AlertingSSLObject(ssl.SSLObject):
    """An ``SSLObject`` whose failed handshake writes its pending alert through ``alert_sink``
    (see the module docstring). The sink is dropped once the handshake is over either way, so
    the object never keeps the transport alive."""

    outgoing: ssl.MemoryBIO | None = None
    alert_sink: Callable[[bytes], object] | None = None

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError:
            sink, self.alert_sink = self.alert_sink, None
            pending = self.outgoing.read() if self.outgoing is not None else b""
            if sink is not None and pending:
                sink(pending)
            raise
        self.alert_sink = None


class AlertingContext(ssl.SSLContext):
    """An ``SSLContext`` whose ``wrap_bio`` objects can send their handshake alerts."""

    sslobject_class = AlertingSSLObject
    _created: AlertingSSLObject | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(obj, AlertingSSLObject):
            obj.outgoing = outgoing
            self._created = obj
        return obj


def arm(context: ssl.SSLContext, sink: Callable[[bytes], object]) -> AlertingSSLObject | None:
    """Give the SSL object just created from ``context`` (by an SSL protocol constructed and
    started synchronously right before this call) the ``sink`` for its handshake alert.
    Returns the object, so that its owner can ``disarm`` it; ``None`` for other contexts."""
    if not isinstance(context, AlertingContext):
        return None
    obj, context._created = context._created, None
    if obj is not None:
        obj.alert_sink = sink
    return obj


def disarm(obj: Any) -> None:
    """Drop the sink of an armed object whose handshake never finished (reset, timeout)."""
    if obj is not None:
        obj.alert_sink = None
