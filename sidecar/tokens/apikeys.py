"""Static API keys for the inbound side (``inbound.api_keys``): the simple alternative to OAuth.

A key looks like ``mcpk_<id>_<secret>``: ``id`` (12 hex digits) names its entry in the key file
and is not secret; ``secret`` is 32 random bytes (base64url). The file (a mounted Kubernetes
Secret) holds only a salted scrypt hash of every key (``scrypt$ln=14,r=8,p=1$<salt>$<hash>``),
each mapped to a principal name with roles and scopes the MCP policy can use::

    keys:
      - id: 3f9a1c2b7d4e
        name: ci-bot
        hash: scrypt$ln=14,r=8,p=1$...$...
        roles: [deployer]
        scopes: [mcp:tools]
        expires: "2026-01-01T00:00:00Z"    # optional

Verification: the id finds the entry (an unknown id is refused without any hashing), then the
presented key is hashed with the entry's salt and parameters and compared with
``hmac.compare_digest``. scrypt costs ~55 ms here, far too much per request, so a verified key is
remembered — as a SHA-256 digest, compared in constant time too — for the key set it was verified
against: a reloaded file is a new ``ApiKeys`` object and forgets everything, so a removed or
replaced key is refused from the first request after the reload. Key derivations run in a thread
(they release the GIL), at most ``MAX_CONCURRENT_KDF`` at a time, so a flood of wrong secrets for
a known id cannot stall the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from sidecar import schema
from sidecar.config_values import SCOPE
from sidecar.errors import ConfigError, ConfigErrors
from sidecar.schema import (
    NOT_EMPTY,
    Key,
    Section,
    Value,
    got,
    list_of,
    non_empty_string,
    parse_items,
    read,
    repeated,
    section_value,
)
from sidecar.strict_yaml import parse_file
from sidecar.tokens.bearer import bearer_token
from sidecar.tokens.claims import VerifiedToken, freeze
from sidecar.tokens.errors import TokenError, TokenLayer

__all__ = [
    "KEY_PREFIX",
    "ApiKey",
    "ApiKeyVerifier",
    "ApiKeys",
    "hash_key",
    "load_api_key_file",
    "new_key",
    "parse_api_keys",
    "presented_key",
]

LAYER: Final[TokenLayer] = "api_key"
KEY_PREFIX: Final = "mcpk_"
ID_HEX: Final = 12
SCRYPT_LN: Final = 14
"""Default scrypt cost: N = 2**14, r = 8, p = 1 (16 MiB, ~55 ms here)."""
MAX_CONCURRENT_KDF: Final = 2
NEVER: Final = dt.datetime.max.replace(tzinfo=dt.UTC)

_KEY_RE = re.compile(rf"{KEY_PREFIX}([0-9a-f]{{{ID_HEX}}})_([A-Za-z0-9_-]{{43}})", re.ASCII)
_ID_RE = re.compile(rf"[0-9a-f]{{{ID_HEX}}}", re.ASCII)
_HASH_RE = re.compile(
    r"scrypt\$ln=([0-9]{1,2}),r=([0-9]{1,2}),p=([0-9])\$([A-Za-z0-9_-]{16,88})\$([A-Za-z0-9_-]{43})",
    re.ASCII,
)


@dataclass(frozen=True, slots=True)
class KeyHash:
    """A salted scrypt hash (RFC 7914) of one key."""

    ln: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def derive(self, key: str) -> bytes:
        return hashlib.scrypt(
            key.encode("ascii"),
            salt=self.salt,
            n=2**self.ln,
            r=self.r,
            p=self.p,
            maxmem=256 * 1024 * 1024,
            dklen=len(self.digest),
        )

    def __str__(self) -> str:
        return f"scrypt$ln={self.ln},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"


def _key_id(value: object, path: str) -> str:
    if not (isinstance(value, str) and _ID_RE.fullmatch(value)):
        raise ConfigError(path, f"expected {ID_HEX} hex digits, got {got(value)}")
    return value


def _principal_name(value: object, path: str) -> str:
    if not (isinstance(value, str) and value.strip() == value and value):
        raise ConfigError(path, f"expected a principal name, got {got(value)}")
    return value


def _key_hash(value: object, path: str) -> KeyHash:
    match = _HASH_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            path,
            "expected a hash as printed by 'mcp-sidecar api-key create' "
            "(scrypt$ln=14,r=8,p=1$<salt>$<hash>), never the key itself",
        )
    ln, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if not (10 <= ln <= 20 and 1 <= r <= 32 and 1 <= p <= 4):
        raise ConfigError(path, "scrypt parameters out of range (ln 10..20, r 1..32, p 1..4)")
    try:
        salt, digest = _unb64(match.group(4)), _unb64(match.group(5))
    except (ValueError, binascii.Error):
        raise ConfigError(path, "salt or hash is not base64url") from None
    return KeyHash(ln, r, p, salt, digest)


def _expires(value: object, path: str) -> dt.datetime:
    when: Any = value
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            when = None
    if not isinstance(when, dt.datetime) or when.tzinfo is None:
        raise ConfigError(
            path,
            f"expected a date and time with a zone like 2026-01-01T00:00:00Z, got {got(value)}",
        )
    return when.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One entry of the key file."""

    id: str = schema.key(
        Value(_key_id, "string", {"type": "string", "pattern": f"^[0-9a-f]{{{ID_HEX}}}$"}),
        f"The {ID_HEX} hex digits after `{KEY_PREFIX}` in the key (not secret): they find the "
        "entry.",
        required="",
    )
    name: str = schema.key(
        Value(_principal_name, "string", {"type": "string", "minLength": 1}),
        "The principal the key authenticates: what `when.sub` of the MCP policy matches.",
        required="",
    )
    hash: KeyHash = schema.key(
        Value(_key_hash, "string", {"type": "string", "pattern": "^scrypt\\$"}),
        "The salted scrypt hash printed by `mcp-sidecar api-key create` "
        "(`scrypt$ln=14,r=8,p=1$<salt>$<hash>`), never the key itself.",
        required="",
    )
    roles: tuple[str, ...] = schema.key(
        list_of(non_empty_string("admin"), "roles", empty=NOT_EMPTY, label="list of strings"),
        "The principal's roles, for `when.roles`.",
        default=(),
    )
    scopes: frozenset[str] = schema.key(
        list_of(SCOPE, "scopes", empty=NOT_EMPTY, label="list of scopes"),
        "The principal's scopes, for `when.scopes`.",
        default=frozenset(),
    )
    expires: dt.datetime | None = schema.key(
        Value(_expires, "date and time", {"type": "string"}),
        "When the key stops working, with a zone: `2026-01-01T00:00:00Z`.",
        default=None,
        shown="never",
    )


ENTRY_SECTION = Section("keys[]", schema.keys_of(ApiKey))
ENTRY_KEYS: Final = ENTRY_SECTION.names


class ApiKeys:
    """The key set of one version of the file: id -> entry. Immutable; a reload makes a new one."""

    def __init__(self, keys: tuple[ApiKey, ...] = ()) -> None:
        self._by_id: Mapping[str, ApiKey] = MappingProxyType({key.id: key for key in keys})

    def get(self, key_id: str) -> ApiKey | None:
        return self._by_id.get(key_id)

    def __len__(self) -> int:
        return len(self._by_id)


# ---------------------------------------------------------------------------------- creation


def new_key() -> tuple[str, str]:
    """A fresh key: (id, the whole key ``mcpk_<id>_<secret>``)."""
    key_id = secrets.token_hex(ID_HEX // 2)
    return key_id, f"{KEY_PREFIX}{key_id}_{_b64(secrets.token_bytes(32))}"


def hash_key(key: str, *, ln: int = SCRYPT_LN, r: int = 8, p: int = 1) -> KeyHash:
    """A salted hash of ``key`` for the key file (a new random salt each time)."""
    template = KeyHash(ln, r, p, secrets.token_bytes(16), b"\0" * 32)
    return KeyHash(ln, r, p, template.salt, template.derive(key))


# ------------------------------------------------------------------------------- verification


class ApiKeyVerifier:
    """Checks presented keys against the current ``ApiKeys``, remembering verified ones."""

    def __init__(self) -> None:
        self._keys: ApiKeys | None = None
        self._remembered: dict[str, tuple[bytes, ApiKey]] = {}  # id -> (sha256 of key, entry)
        self._kdf_slots = asyncio.Semaphore(MAX_CONCURRENT_KDF)
        self.derivations = 0

    def verify_now(
        self, presented: str, keys: ApiKeys, *, now: dt.datetime | None = None
    ) -> VerifiedToken | None:
        """``verify`` without deriving a hash: a refusal, a key verified before, or None
        (only ``verify`` can tell)."""
        entry, fingerprint = self._entry(presented, keys, now)
        remembered = self._remembered.get(entry.id)
        if remembered is None or not hmac.compare_digest(remembered[0], fingerprint):
            return None
        return _verified(entry)

    def _entry(
        self, presented: str, keys: ApiKeys, now: dt.datetime | None
    ) -> tuple[ApiKey, bytes]:
        """The key file's entry for ``presented`` (refusals: malformed, unknown, expired) and
        the presented key's fingerprint."""
        match = _KEY_RE.fullmatch(presented)
        if match is None:
            raise TokenError(
                "not an API key of this sidecar", reason="malformed_api_key", layer=LAYER
            )
        if keys is not self._keys:  # the file was reloaded: verify everything again
            self._keys, self._remembered = keys, {}
        entry = keys.get(match.group(1))
        if entry is None:
            raise TokenError("unknown API key", reason="unknown_api_key", layer=LAYER)
        now = now or dt.datetime.now(dt.UTC)
        if entry.expires is not None and now >= entry.expires:
            raise TokenError("API key has expired", reason="expired_api_key", layer=LAYER)
        return entry, hashlib.sha256(presented.encode("ascii")).digest()

    async def verify(
        self, presented: str, keys: ApiKeys, *, now: dt.datetime | None = None
    ) -> VerifiedToken:
        entry, fingerprint = self._entry(presented, keys, now)
        remembered = self._remembered.get(entry.id)
        if remembered is None or not hmac.compare_digest(remembered[0], fingerprint):
            async with self._kdf_slots:
                self.derivations += 1
                derived = await asyncio.to_thread(entry.hash.derive, presented)
            if self._keys is not keys:  # reloaded while we were hashing: judge by the new file
                return await self.verify(presented, self._keys or ApiKeys(), now=now)
            if not hmac.compare_digest(derived, entry.hash.digest):
                raise TokenError("wrong API key", reason="unknown_api_key", layer=LAYER)
            self._remembered[entry.id] = (fingerprint, entry)
        return _verified(entry)


def _verified(entry: ApiKey) -> VerifiedToken:
    return VerifiedToken(
        layer=LAYER,
        subject=entry.name,
        issuer=None,
        audience=(),
        expires_at=entry.expires or NEVER,
        scopes=entry.scopes,
        roles=entry.roles,
        claims=freeze({"api_key_id": entry.id}),
    )


def presented_key(values: list[str], header: str) -> str | None:
    """The API key among the values of ``header``, or None when the request carries none (it
    may carry another kind of token). In ``Authorization`` a key is a bearer token with the
    ``mcpk_`` prefix; any other header holds the bare key."""
    if header.lower() == "authorization":
        if not any(
            value.split()[-1:] and value.split()[-1].startswith(KEY_PREFIX) for value in values
        ):
            return None
        return bearer_token(values, layer=LAYER)
    if not values:
        return None
    if len(values) > 1:
        raise TokenError(
            f"more than one {header} header",
            reason="multiple_authorization_headers",
            layer=LAYER,
            error="invalid_request",
        )
    return values[0].strip(" \t")


# ------------------------------------------------------------------------------------ the file


def _entry(value: object, path: str) -> ApiKey:
    f = read(ENTRY_SECTION, value, path, none_ok=False)
    scopes = f.get("scopes")
    return f.build(ApiKey, scopes=frozenset(scopes))


def _entries(value: object, path: str) -> tuple[ApiKey, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list of key entries, got {got(value)}")
    problems: list[ConfigError] = []
    entries = parse_items(value, path, _entry, problems)
    for index, entry, first in repeated(entries, lambda entry: entry.id):
        problems.append(
            ConfigError(f"{path}[{index}].id", f"duplicate id {entry.id!r} (also keys[{first}])")
        )
    if problems:
        raise ConfigErrors(problems)
    return tuple(entry for _, entry in entries)


FILE_SECTION = Section(
    "",
    (
        Key(
            name="keys",
            value=section_value(ENTRY_SECTION, _entries, many="list of key entries"),
            doc="The keys, each an entry as printed by `mcp-sidecar api-key create`.",
            required="a list of key entries, may be empty",
        ),
    ),
)
FILE_KEYS: Final = FILE_SECTION.names


def parse_api_keys(data: object, *, path: str = "api_keys") -> ApiKeys:
    """Validate a key file document; ``ConfigErrors`` naming every problem's key path."""
    f = read(FILE_SECTION, data, path, none_ok=False)
    entries = f.get("keys")
    f.check()
    return ApiKeys(entries)


def load_api_key_file(path: str | Path) -> ApiKeys:
    """Read and validate the key file; ``ConfigErrors`` naming the file on any problem (each
    with its line)."""
    return parse_file(path, lambda data, source: parse_api_keys(data, path=source))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
