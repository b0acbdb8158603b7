"""Merging the answers of several targets into one (pure).

**initialize.** The endpoint answers as itself (``serverInfo`` names the gateway and, in
``title``, its targets), with the lowest protocol version its targets chose (versions are
dates, so they order as strings; never above the client's), the union of the targets'
capabilities, and their ``instructions`` one after the other, each under its target's name.
``tools``, ``prompts`` and ``resources`` always say ``listChanged: true``: lists change when a
target comes or goes, and the endpoint then tells the client. A target that did not answer is
assumed to have all three (it may come back later), so they are always advertised.

**Lists.** One page of a merged list is one page of each target that still has pages; names
are prefixed and resource URIs mapped (``sidecar.mcp.mux.names``); a target that answers "method
not found" simply has nothing of that kind; a target that failed is left out and named in the
result's ``_meta`` (``UNAVAILABLE_META``), so a client (or a person) can tell an empty list from
an unreachable server. With ``prefix_mode: never`` a name two targets serve is left out (and
reported): a call to it could not be routed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.mcp.mux.names import SEPARATOR, URI_JOIN, Naming
from sidecar.mcp.mux.session import NameKind, OwnerTable

UNAVAILABLE_META: Final = "mcp-sidecar/unavailable-targets"
"""``_meta`` key of a merged answer listing the targets left out: ``[{target, reason}]``."""
AMBIGUOUS_META: Final = "mcp-sidecar/ambiguous-names"
"""``_meta`` key listing names left out because several targets serve them (``never``)."""
GATEWAY_NAME: Final = "mcp-sidecar"
METHOD_NOT_FOUND: Final = -32601
ALWAYS_ADVERTISED: Final = ("tools", "prompts", "resources")


@dataclass(frozen=True, slots=True)
class ListShape:
    """Where a list method's items are and which field names them."""

    key: str
    name_field: str
    kind: NameKind | None
    """``tool`` / ``prompt`` (names prefixed), None for resources (URIs mapped)."""


LISTS: Final[Mapping[str, ListShape]] = {
    "tools/list": ListShape("tools", "name", "tool"),
    "prompts/list": ListShape("prompts", "name", "prompt"),
    "resources/list": ListShape("resources", "uri", None),
    "resources/templates/list": ListShape("resourceTemplates", "uriTemplate", None),
}


class MergeError(Exception):
    """A target's answer does not have the shape its method requires."""


def merge_initialize(
    naming: Naming,
    answers: Mapping[str, Mapping[str, Any]],
    unavailable: Mapping[str, str],
    client_version: str,
    gateway_version: str,
) -> dict[str, Any]:
    """The ``initialize`` result for the client from the targets' results (target -> result)."""
    versions = [
        v
        for answer in answers.values()
        if isinstance(v := answer.get("protocolVersion"), str) and v
    ]
    version = min([client_version, *versions]) if versions else client_version
    capabilities: dict[str, Any] = {}
    for answer in answers.values():
        caps = answer.get("capabilities")
        if isinstance(caps, Mapping):
            _union(capabilities, caps)
    for name in ALWAYS_ADVERTISED:
        section = capabilities.setdefault(name, {})
        if isinstance(section, dict):
            section["listChanged"] = True
    instructions = [
        f"[{target}]\n{text.strip()}"
        for target, answer in answers.items()
        if isinstance(text := answer.get("instructions"), str) and text.strip()
    ]
    targets = sorted([*answers, *unavailable])
    result: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {
            "name": GATEWAY_NAME,
            "title": f"mcp-sidecar gateway to {', '.join(targets)}",
            "version": gateway_version,
        },
        "instructions": "\n\n".join([_preface(naming), *instructions]),
    }
    if unavailable:
        result["_meta"] = {UNAVAILABLE_META: _unavailable(unavailable)}
    return result


def _preface(naming: Naming) -> str:
    example = naming.targets[0]
    text = f"One endpoint for the MCP servers {', '.join(naming.targets)}."
    if naming.prefixed:
        text += f" Tool and prompt names carry their server's name ({example}{SEPARATOR}tool)."
    if naming.uris_mapped:
        text += f" Resource URIs too ({example}{URI_JOIN}scheme:...)."
    return text


def _union(into: dict[str, Any], caps: Mapping[str, Any]) -> None:
    """Capabilities of several servers: an object is the union of its keys (recursively), a
    ``true`` flag wins over ``false``."""
    for key, value in caps.items():
        mine = into.get(key)
        if isinstance(value, Mapping):
            if not isinstance(mine, dict):
                mine = {}
                into[key] = mine
            _union(mine, value)
        elif value is True or key not in into:
            into[key] = value


@dataclass
class MergedPage:
    """One page of a merged list."""

    items: list[Any] = field(default_factory=list)
    positions: dict[str, str] = field(default_factory=dict)
    """Targets with more pages -> their cursor (empty: this is the last page)."""
    unavailable: dict[str, str] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)

    def result(self, shape: ListShape, next_cursor: str | None) -> dict[str, Any]:
        result: dict[str, Any] = {shape.key: self.items}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        meta: dict[str, Any] = {}
        if self.unavailable:
            meta[UNAVAILABLE_META] = _unavailable(self.unavailable)
        if self.ambiguous:
            meta[AMBIGUOUS_META] = sorted(self.ambiguous)
        if meta:
            result["_meta"] = meta
        return result


def merge_page(
    method: str,
    naming: Naming,
    answers: Mapping[str, Mapping[str, Any]],
    unavailable: Mapping[str, str],
    owners: OwnerTable,
) -> MergedPage:
    """Merge one page: ``answers`` maps each target that answered to its JSON-RPC response
    (``result`` or ``error``), in target order; ``unavailable`` the targets that did not."""
    shape = LISTS[method]
    page = MergedPage(unavailable=dict(unavailable))
    kept: list[tuple[str, list[Mapping[str, Any]]]] = []
    for target, response in answers.items():
        if "error" in response:
            error = response["error"]
            if isinstance(error, Mapping) and error.get("code") == METHOD_NOT_FOUND:
                continue  # this target has nothing of that kind
            page.unavailable[target] = f"answered {method} with an error: {_error_text(error)}"
            continue
        result = response.get("result")
        items = result.get(shape.key, []) if isinstance(result, Mapping) else None
        if not isinstance(items, list):
            page.unavailable[target] = f"answered {method} with a result of the wrong shape"
            continue
        valid = [
            item
            for item in items
            if isinstance(item, Mapping) and isinstance(item.get(shape.name_field), str)
        ]
        kept.append((target, valid))
        cursor = result.get("nextCursor") if isinstance(result, Mapping) else None
        if isinstance(cursor, str) and cursor:
            page.positions[target] = cursor
    if shape.kind is not None and naming.needs_owner_table:
        for target, items in kept:
            page.ambiguous |= owners.learn(
                shape.kind, target, [item[shape.name_field] for item in items]
            )
    for target, items in kept:
        for item in items:
            name = item[shape.name_field]
            if shape.kind is None:
                public = naming.public_uri(target, name)
            elif name in page.ambiguous:
                continue
            else:
                public = naming.public_name(target, name)
            page.items.append({**item, shape.name_field: public})
    return page


def _unavailable(targets: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"target": name, "reason": reason} for name, reason in sorted(targets.items())]


def _error_text(error: object) -> str:
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("code")
        return f"{code} {message}" if isinstance(message, str) else str(code)
    return "malformed error"
