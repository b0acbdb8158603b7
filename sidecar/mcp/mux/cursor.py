"""Pagination cursors of merged lists (pure).

A page of a merged list is one page of every target that still has pages; the cursor handed to
the client carries each such target's own cursor. It is opaque and tamper-evident: the JSON of
``{target: target's cursor}`` in base64url, then ``.`` and an HMAC-SHA256 (truncated to 128
bits) over the session id, the list method and that JSON, keyed with a random per-process key.
So a client can neither forge or edit a cursor, nor use one of another session or another list
method; after a restart old cursors are refused (the sessions are gone anyway). A refused cursor
is a JSON-RPC invalid-params error (-32602), as the MCP spec asks for an invalid cursor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from typing import Final

from sidecar.errors import SidecarError

MAX_CURSOR: Final = 16 * 1024
"""Longest cursor accepted (characters)."""
_MAC_BYTES: Final = 16


class CursorError(SidecarError):
    """A cursor this endpoint did not issue (or issued for another session or method)."""

    status = 400
    reason = "invalid_cursor"


class CursorCodec:
    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def encode(self, session_id: str, method: str, positions: Mapping[str, str]) -> str:
        """The cursor of the next page: ``positions`` maps each target with more pages to its
        own cursor (targets without an entry have no more pages)."""
        payload = json.dumps(dict(positions), separators=(",", ":"), sort_keys=True).encode()
        mac = self._mac(session_id, method, payload)
        return f"{_b64(payload)}.{_b64(mac)}"

    def decode(self, session_id: str, method: str, cursor: object) -> dict[str, str]:
        """The per-target cursors of a cursor this codec issued for ``session_id`` and
        ``method``; ``CursorError`` otherwise."""
        if not isinstance(cursor, str) or len(cursor) > MAX_CURSOR:
            raise CursorError("invalid cursor: not a string this server issued")
        payload_text, dot, mac_text = cursor.partition(".")
        try:
            payload = _unb64(payload_text)
            mac = _unb64(mac_text)
        except (ValueError, binascii.Error):
            raise CursorError("invalid cursor: not issued by this server") from None
        if not dot or not hmac.compare_digest(mac, self._mac(session_id, method, payload)):
            raise CursorError("invalid cursor: not issued by this server for this session and list")
        positions = json.loads(payload)
        assert isinstance(positions, dict)  # we signed what we wrote
        return {str(k): str(v) for k, v in positions.items()}

    def _mac(self, session_id: str, method: str, payload: bytes) -> bytes:
        message = session_id.encode() + b"\0" + method.encode() + b"\0" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
