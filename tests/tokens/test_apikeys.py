"""API keys: hashed key file, verification (constant-time, remembered per key set), reload
semantics (a removed key is refused after the next reload), and the ``api-key create`` CLI."""

from __future__ import annotations

import datetime as dt
import hmac
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.cli import main
from sidecar.config import ConfigErrors
from sidecar.proxy.policy_reload import PolicyHolder
from sidecar.tokens.apikeys import (
    ApiKeys,
    ApiKeyVerifier,
    hash_key,
    load_api_key_file,
    new_key,
    parse_api_keys,
    presented_key,
)
from sidecar.tokens.errors import TokenError

LOW_COST = {"ln": 10}  # keys in tests: cheaper scrypt, same code path


def entry(key_id: str, key: str, name: str = "ci-bot", **extra: Any) -> dict[str, Any]:
    return {"id": key_id, "name": name, "hash": str(hash_key(key, **LOW_COST)), **extra}


def keyset(*entries: dict[str, Any]) -> ApiKeys:
    return parse_api_keys({"keys": list(entries)})


async def reason(verifier: ApiKeyVerifier, key: str, keys: ApiKeys) -> str:
    with pytest.raises(TokenError) as info:
        await verifier.verify(key, keys)
    assert info.value.layer == "api_key" and info.value.status == 401
    return info.value.reason


async def test_a_key_maps_to_its_principal_and_is_hashed_once() -> None:
    key_id, key = new_key()
    keys = keyset(entry(key_id, key, roles=["deployer"], scopes=["mcp:tools"]))
    verifier = ApiKeyVerifier()
    token = await verifier.verify(key, keys)
    assert token.layer == "api_key" and token.subject == "ci-bot"
    assert token.roles == ("deployer",) and token.scopes == {"mcp:tools"}
    assert token.claims["api_key_id"] == key_id
    for _ in range(3):
        assert (await verifier.verify(key, keys)).subject == "ci-bot"
    assert verifier.derivations == 1  # remembered after the first scrypt


async def test_unknown_wrong_malformed_and_expired_keys() -> None:
    key_id, key = new_key()
    other_id, other = new_key()
    keys = keyset(
        entry(key_id, key),
        entry(other_id, other, name="old", expires="2020-01-01T00:00:00Z"),
    )
    verifier = ApiKeyVerifier()
    assert await reason(verifier, new_key()[1], keys) == "unknown_api_key"
    assert verifier.derivations == 0  # an unknown id costs no hashing
    wrong = f"{key[:-43]}{'A' * 43}"  # the right id, a wrong secret
    assert await reason(verifier, wrong, keys) == "unknown_api_key"
    assert verifier.derivations == 1
    assert await reason(verifier, "mcpk_short", keys) == "malformed_api_key"
    assert await reason(verifier, other, keys) == "expired_api_key"
    # a remembered key is still compared in full: a wrong secret never rides on the memo
    await verifier.verify(key, keys)
    assert await reason(verifier, wrong, keys) == "unknown_api_key"


async def test_secrets_are_compared_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both comparisons (scrypt output, remembered fingerprint) go through
    hmac.compare_digest: with it answering False, even the right key is refused."""
    key_id, key = new_key()
    keys = keyset(entry(key_id, key))
    calls: list[tuple[bytes, bytes]] = []

    def refusing(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return False

    monkeypatch.setattr(hmac, "compare_digest", refusing)  # the module apikeys calls
    assert await reason(ApiKeyVerifier(), key, keys) == "unknown_api_key"
    stored = keys.get(key_id)
    assert stored is not None
    assert len(calls) == 1 and calls[0][1] == stored.hash.digest
    monkeypatch.undo()
    verifier = ApiKeyVerifier()
    await verifier.verify(key, keys)  # now remembered
    monkeypatch.setattr(hmac, "compare_digest", refusing)  # the module apikeys calls
    calls.clear()
    assert await reason(verifier, key, keys) == "unknown_api_key"
    assert len(calls[0][0]) == 32  # the remembered SHA-256 fingerprint was compared


async def test_a_removed_key_is_refused_after_the_next_reload(tmp_path: Path) -> None:
    (kept_id, kept), (gone_id, gone) = new_key(), new_key()
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry(kept_id, kept), entry(gone_id, gone, "gone")]}))
    holder = PolicyHolder(
        load_api_key_file(path), path=path, loader=load_api_key_file, on_missing=ApiKeys
    )
    verifier = ApiKeyVerifier()
    assert (await verifier.verify(gone, holder.current)).subject == "gone"  # remembered now
    path.write_text(yaml.safe_dump({"keys": [entry(kept_id, kept)]}))
    assert holder.check_now()  # what the reload task does every reload_interval
    assert await reason(verifier, gone, holder.current) == "unknown_api_key"
    assert (await verifier.verify(kept, holder.current)).subject == "ci-bot"
    # the same id with a new key (rotation): the old key is refused, the new one accepted
    _, rotated = new_key()
    rotated = f"mcpk_{kept_id}_{rotated[-43:]}"
    path.write_text(yaml.safe_dump({"keys": [entry(kept_id, rotated)]}))
    assert holder.check_now()
    assert await reason(verifier, kept, holder.current) == "unknown_api_key"
    assert (await verifier.verify(rotated, holder.current)).subject == "ci-bot"
    # an invalid file keeps the last good keys; a file that disappears admits nobody
    path.write_text("keys: [{id: nope}]")
    assert not holder.check_now()
    assert (await verifier.verify(rotated, holder.current)).subject == "ci-bot"
    path.unlink()
    assert holder.check_now()
    assert await reason(verifier, rotated, holder.current) == "unknown_api_key"


def test_presented_key() -> None:
    key = new_key()[1]
    assert presented_key([f"Bearer {key}"], "Authorization") == key
    assert presented_key(["Bearer eyJhbGciOi.x.y"], "Authorization") is None  # another token
    assert presented_key([], "Authorization") is None
    assert presented_key([f" {key} "], "X-API-Key") == key
    assert presented_key([], "X-API-Key") is None
    with pytest.raises(TokenError):
        presented_key([key, key], "X-API-Key")
    with pytest.raises(TokenError):
        presented_key([f"Bearer {key}", "Bearer x"], "Authorization")


def test_key_file_problems_name_their_paths(tmp_path: Path) -> None:
    key_id, key = new_key()
    with pytest.raises(ConfigErrors) as info:
        parse_api_keys(
            {
                "keys": [
                    entry(key_id, key),
                    entry(key_id, key, name="dup"),
                    {"id": "XYZ", "name": "", "hash": key},  # the key itself is not a hash
                    {
                        "id": "0123456789ab",
                        "name": "n",
                        "hash": str(hash_key(key, **LOW_COST)),
                        "expires": "2026-01-01T00:00:00",
                        "rolez": [],
                    },
                ]
            },
            path="keys.yaml",
        )
    found = {p.path: p.message for p in info.value.problems}
    assert "duplicate id" in found["keys.yaml.keys[1].id"]
    assert "hex digits" in found["keys.yaml.keys[2].id"]
    assert "principal name" in found["keys.yaml.keys[2].name"]
    assert "never the key itself" in found["keys.yaml.keys[2].hash"]
    assert "with a zone" in found["keys.yaml.keys[3].expires"]
    assert "did you mean 'roles'" in found["keys.yaml.keys[3].rolez"]
    with pytest.raises(ConfigErrors):
        load_api_key_file(tmp_path / "missing.yaml")
    assert len(parse_api_keys({"keys": []})) == 0


async def test_cli_creates_a_key_and_its_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        main(
            [
                "api-key",
                "create",
                "--name",
                "ci-bot",
                "--roles",
                "a,b",
                "--scopes",
                "mcp:tools",
                "--expires",
                "2099-01-01T00:00:00Z",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    key = next(line.strip() for line in out.splitlines() if line.strip().startswith("mcpk_"))
    document = yaml.safe_load(out[out.index("- id:") :])
    assert key not in out[out.index("- id:") :]  # the entry holds the hash, not the key
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": document}))
    token = await ApiKeyVerifier().verify(key, load_api_key_file(path))
    assert token.subject == "ci-bot" and token.roles == ("a", "b")
    assert token.expires_at == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    assert main(["api-key", "create", "--name", "x", "--expires", "2099-01-01"]) == 1
    assert "time zone" in capsys.readouterr().err
