"""What the docs derive from the key definitions (``sidecar.schema``): the key tables of
docs/configuration.md, between ``<!-- keys:NAME -->`` and ``<!-- /keys -->``, and the JSON
Schemas for editors, docs/config.schema.json (a configuration file) and docs/policy.schema.json
(a policy file of ``inbound.mcp_policy.file``).

``make docs`` (``python -m sidecar.config_docs``) rewrites them after a key changed;
``--check`` only lists the stale ones and exits 1 (tests/test_config_docs.py fails the same way).
A development tool: ``mcp-sidecar run`` never imports it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sidecar import config
from sidecar.mcp import policy, ratelimit
from sidecar.schema import NO_DEFAULT, Key, Section, all_sections, definition_name
from sidecar.tokens import apikeys
from sidecar.tracing.config import TRACING_SECTION

TABLES: Mapping[str, tuple[Section, ...]] = {
    "top": (config.TOP,),
    "admin": (config.ADMIN,),
    "inbound": (config.INBOUND,),
    "inbound.jwt_svid": (config.JWT_SVID,),
    "inbound.oauth": (config.OAUTH,),
    "inbound.api_keys": (config.API_KEYS,),
    "inbound.mcp_policy": (policy.POLICY_SECTION, config.POLICY_FILE),
    "inbound.mcp_policy.rules[i]": (policy.RULE_SECTION,),
    "inbound.mcp_policy.rules[i].when": (policy.WHEN_SECTION,),
    "inbound.mcp_policy.rules[i].arguments.NAME": (policy.ARGUMENTS_SECTION,),
    "inbound.rate_limits[i]": (ratelimit.RATE_LIMIT_SECTION,),
    "keys[i]": (apikeys.ENTRY_SECTION,),
    "outbound": (config.OUTBOUND,),
    "outbound.routes[i]": (config.ROUTE,),
    "outbound.routes[i].token_exchange": (config.TOKEN_EXCHANGE,),
    "targets[i]": (config.TARGET,),
    "limits": (config.LIMITS,),
    "circuit_breakers": (config.CIRCUIT_BREAKERS,),
    "log": (config.LOG,),
    "tracing": (TRACING_SECTION,),
    "shutdown": (config.SHUTDOWN,),
    "process": (config.PROCESS,),
}
"""The docs' key tables by marker name (``<!-- keys:inbound -->``), each of the keys of these
sections."""

SCHEMAS: Mapping[str, tuple[Section, str]] = {
    "config.schema.json": (config.TOP, "mcp-sidecar configuration"),
    "policy.schema.json": (policy.POLICY_SECTION, "mcp-sidecar MCP policy file"),
}
"""The published JSON Schemas (file name in docs/ -> root section, title)."""

_MARKERS = re.compile(r"(<!-- keys:(?P<name>[^>]+?) -->\n)(?P<body>.*?)(<!-- /keys -->)", re.DOTALL)


# ------------------------------------------------------------------------------------ tables


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def default_text(definition: Key) -> str:
    """The docs' "default" column of a key."""
    if definition.shown is not None:
        return definition.shown
    if definition.required is not None:
        return "**required**" + (f" {definition.when}" if definition.when else "")
    default = definition.default
    if default is NO_DEFAULT or default is None:
        return "none"
    if definition.value.show is not None:
        return f"`{definition.value.show(default)}`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple | frozenset) and not default:
        return "`[]`"
    return f"`{default}`"


def table(sections: Sequence[Section]) -> str:
    """The markdown table of the keys of ``sections`` (in order)."""
    defaults = all(section.defaults for section in sections)
    if defaults:
        lines = ["| key | type | default | meaning |", "|-----|------|---------|---------|"]
    else:
        lines = ["| key | type | meaning |", "|-----|------|---------|"]
    for section in sections:
        for definition in section.keys:
            cells = [f"`{definition.name}`", _cell(definition.value.label)]
            if defaults:
                cells.append(_cell(default_text(definition)))
            cells.append(_cell(definition.doc))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` (docs/configuration.md) with every key table regenerated. A marker naming no
    table is an error (``KeyError``), and so is a table without its marker (``ValueError``)."""
    found: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        found.append(name)
        return match[1] + table(TABLES[name]) + match[4]

    result = _MARKERS.sub(replace, text)
    missing = [name for name in TABLES if name not in found]
    if missing:
        raise ValueError(f"no <!-- keys:NAME --> marker for: {', '.join(missing)}")
    return result


# ------------------------------------------------------------------------------- JSON Schema


def _json_default(definition: Key) -> object:
    default = definition.default
    if definition.shown is not None or default is NO_DEFAULT or default is None:
        return NO_DEFAULT
    if isinstance(default, bool | int | float | str):
        return default
    if isinstance(default, tuple | frozenset) and not default:
        return []
    return NO_DEFAULT


def _object(section: Section) -> dict[str, object]:
    properties: dict[str, object] = {}
    for definition in section.keys:
        prop: dict[str, object] = {"description": " ".join(definition.doc.split())}
        prop.update(definition.value.json)
        default = _json_default(definition)
        if default is not NO_DEFAULT:
            prop["default"] = default
        properties[definition.name] = prop
    result: dict[str, object] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    required = [k.name for k in section.keys if k.required is not None and k.when is None]
    if required:
        result["required"] = required
    return result


def json_schema(root: Section, title: str) -> dict[str, object]:
    """A JSON Schema (2020-12) of documents made of ``root`` (for editors: the parser has the
    last word, e.g. on rules between keys)."""
    below = [section for section in all_sections([root]) if section is not root]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "description": "Generated from the key definitions by make docs (sidecar/config_docs.py); "
        "every key is described in docs/configuration.md.",
        **_object(root),
        "$defs": {definition_name(section): _object(section) for section in below},
    }


def schema_text(name: str) -> str:
    root, title = SCHEMAS[name]
    return json.dumps(json_schema(root, title), indent=2, ensure_ascii=False) + "\n"


# -------------------------------------------------------------------------------- the command


def generated(docs: Path) -> dict[Path, str]:
    """Every generated file under ``docs`` with what it must contain."""
    files = {docs / "configuration.md": render((docs / "configuration.md").read_text("utf-8"))}
    files.update({docs / name: schema_text(name) for name in SCHEMAS})
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.config_docs",
        description="Regenerate the key tables of docs/configuration.md and the JSON Schemas "
        "in docs/ from the key definitions.",
    )
    parser.add_argument(
        "--docs",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs",
        help="the docs directory (default: %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="only list stale files; exit 1")
    args = parser.parse_args(argv)
    stale = [
        path
        for path, text in generated(args.docs).items()
        if not path.exists() or path.read_text("utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(f"{path}: stale, run: make docs", file=sys.stderr)
        return 1 if stale else 0
    for path, text in generated(args.docs).items():
        if path in stale:
            path.write_text(text, "utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
