"""``mcp-sidecar api-key create``: make a new API key for ``inbound.api_keys``.

Prints the key once (give it to the client; it is not stored anywhere) and the entry to add to
the key file, which holds only a salted scrypt hash of it. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys

import yaml

from sidecar.tokens.apikeys import hash_key, new_key

DESCRIPTION = __doc__
_LIST_ITEM_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+", re.ASCII)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="create a key: print it once, and the hash entry for the key file",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("--name", required=True, help="the principal name (policy: when.sub)")
    create.add_argument("--roles", default="", help="comma-separated roles (policy: when.roles)")
    create.add_argument("--scopes", default="", help="comma-separated scopes (when.scopes)")
    create.add_argument(
        "--expires", default=None, help="expiry, ISO 8601 with a zone: 2026-01-01T00:00:00Z"
    )


def _items(text: str, flag: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if not _LIST_ITEM_RE.fullmatch(item):
            raise ValueError(f"{flag}: {item!r} has spaces, quotes or non-ASCII characters")
    return items


def run_from_args(args: argparse.Namespace) -> int:
    try:
        name = args.name.strip()
        if not name:
            raise ValueError("--name must not be empty")
        entry: dict[str, object] = {"id": "", "name": name, "hash": ""}
        roles, scopes = _items(args.roles, "--roles"), _items(args.scopes, "--scopes")
        if roles:
            entry["roles"] = roles
        if scopes:
            entry["scopes"] = scopes
        if args.expires is not None:
            expires = dt.datetime.fromisoformat(args.expires)
            if expires.tzinfo is None:
                raise ValueError("--expires needs a time zone, e.g. 2026-01-01T00:00:00Z")
            entry["expires"] = expires.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError as exc:
        print(f"api-key create: {exc}", file=sys.stderr)
        return 1
    key_id, key = new_key()
    entry["id"], entry["hash"] = key_id, str(hash_key(key))
    print("API key (shown only now; give it to the client, store it as a secret):")
    print(f"  {key}")
    print("\nAdd this entry under 'keys:' in the inbound.api_keys file:\n")
    print(yaml.safe_dump([entry], sort_keys=False, default_flow_style=None, width=200), end="")
    return 0
