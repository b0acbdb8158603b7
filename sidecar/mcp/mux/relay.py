"""Which target a client message goes to, and how messages are rewritten on the way (pure).

**Client to target.** ``tools/call`` and ``prompts/get`` go to the target their name names
(``sidecar.mcp.mux.names``; with ``prefix_mode: never`` the owner table's), with the target's
own name; ``resources/read`` and ``resources/(un)subscribe`` to the target their URI names, with
the original URI; ``completion/complete`` by its ``ref`` (a prompt name or a resource URI).
``notifications/cancelled`` goes to the target(s) that have the request, ``notifications/
progress`` to the target whose request carries that progress token, other notifications to
every target. A client's answer to a server-to-client request goes to the target that asked,
with the target's own id.

**Target to client.** A server-to-client request (elicitation, sampling, roots, ping) gets an
id of the endpoint's session, so two targets' ids never collide; the target's
``notifications/cancelled`` for it is rewritten to that id. Resource URIs in answers
(``resources/read`` contents, resource links and embedded resources in tool results and prompt
messages) and in ``notifications/resources/updated`` are mapped to the URIs the client knows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sidecar.mcp.mux.names import Naming
from sidecar.mcp.mux.session import MuxSession, NameKind

INVALID_PARAMS: Final = -32602
LIST_CHANGED: Final[Mapping[str, NameKind | None]] = {
    "notifications/tools/list_changed": "tool",
    "notifications/prompts/list_changed": "prompt",
    "notifications/resources/list_changed": None,
}
NAME_METHODS: Final[Mapping[str, NameKind]] = {"tools/call": "tool", "prompts/get": "prompt"}
URI_METHODS: Final = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
ROUTED_METHODS: Final = frozenset({*NAME_METHODS, *URI_METHODS, "completion/complete"})


@dataclass(frozen=True, slots=True)
class Routed:
    target: str
    params: dict[str, Any]
    """The params to send the target (names and URIs as the target knows them)."""


@dataclass(frozen=True, slots=True)
class Unroutable:
    """The client named nothing this endpoint can route: an error for the client."""

    message: str
    reason: str
    code: int = INVALID_PARAMS


@dataclass(frozen=True, slots=True)
class Unknown:
    """``prefix_mode: never``: the name is not in the owner table (yet); learn the lists."""

    kind: NameKind
    name: str


def route(
    naming: Naming, session: MuxSession, method: str, params: Mapping[str, Any]
) -> Routed | Unroutable | Unknown:
    """Where a ``ROUTED_METHODS`` request goes (``params`` as parsed: a mapping)."""
    if method in NAME_METHODS:
        return _by_name(naming, session, NAME_METHODS[method], params, "name", dict(params))
    if method in URI_METHODS:
        return _by_uri(naming, params, "uri", dict(params))
    ref = params.get("ref")
    if not isinstance(ref, Mapping):
        return Unroutable("completion/complete needs params.ref", "bad_ref")
    if ref.get("type") == "ref/prompt":
        routed = _by_name(naming, session, "prompt", ref, "name", dict(ref))
    elif ref.get("type") == "ref/resource":
        routed = _by_uri(naming, ref, "uri", dict(ref))
    else:
        return Unroutable("completion/complete: unknown ref type", "bad_ref")
    if isinstance(routed, Routed):
        return Routed(routed.target, {**params, "ref": routed.params})
    return routed


def _by_name(
    naming: Naming,
    session: MuxSession,
    kind: NameKind,
    holder: Mapping[str, Any],
    key: str,
    params: dict[str, Any],
) -> Routed | Unroutable | Unknown:
    name = holder.get(key)
    if not isinstance(name, str) or not name:
        return Unroutable(f"a non-empty {kind} name is required", "bad_name")
    split = naming.split_name(name)
    if split is None and naming.needs_owner_table:
        if session.names.is_ambiguous(kind, name):
            return Unroutable(
                f"{kind} {name!r} is served by several targets; it cannot be called through "
                "this endpoint (prefix_mode: never)",
                "ambiguous_name",
            )
        owner = session.names.owner(kind, name)
        if owner is None:
            return Unknown(kind, name)
        split = (owner, name)
    if split is None:
        return Unroutable(
            f"unknown {kind} {name!r}: it names no target of this endpoint", "no_target"
        )
    return Routed(split[0], {**params, key: split[1]})


def _by_uri(
    naming: Naming, holder: Mapping[str, Any], key: str, params: dict[str, Any]
) -> Routed | Unroutable:
    uri = holder.get(key)
    if not isinstance(uri, str) or not uri:
        return Unroutable("a non-empty resource URI is required", "bad_uri")
    split = naming.split_uri(uri)
    if split is None:
        return Unroutable(
            f"unknown resource {uri!r}: its URI names no target of this endpoint "
            "(URIs look like target+scheme:...)",
            "no_target",
        )
    return Routed(split[0], {**params, key: split[1]})


# ---------------------------------------------------------------------------- target -> client


def from_target(
    message: Any,
    target: str,
    session: MuxSession,
    naming: Naming,
    answering: str | None = None,
) -> Any:
    """The message (or batch) a target sent, as the client must see it; None to drop it.
    ``answering`` is the method of the client request the stream answers (its response's
    result is rewritten by that method)."""
    if isinstance(message, list):
        out = [m for m in (_one(item, target, session, naming, answering) for item in message)]
        kept = [m for m in out if m is not None]
        return kept or None
    return _one(message, target, session, naming, answering)


def _one(
    message: Any, target: str, session: MuxSession, naming: Naming, answering: str | None
) -> Any:
    if not isinstance(message, dict):
        return None
    method = message.get("method")
    if isinstance(method, str):
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        if "id" in message:
            meta = params.get("_meta")
            token = meta.get("progressToken") if isinstance(meta, dict) else None
            gateway_id = session.server_requests.add(target, message["id"], token)
            return {**message, "id": gateway_id}
        return _notification(message, method, params, target, session, naming)
    if answering is not None and isinstance(message.get("result"), dict):
        return {**message, "result": _result(answering, message["result"], target, naming)}
    return message


def _notification(
    message: dict[str, Any],
    method: str,
    params: dict[str, Any],
    target: str,
    session: MuxSession,
    naming: Naming,
) -> dict[str, Any] | None:
    if method == "notifications/cancelled":
        gateway_id = session.server_requests.gateway_id(target, params.get("requestId"))
        if gateway_id is None:
            return None  # it cancels nothing the client was asked
        session.server_requests.forget(gateway_id)
        return {**message, "params": {**params, "requestId": gateway_id}}
    if method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
        return {**message, "params": {**params, "uri": naming.public_uri(target, params["uri"])}}
    if method in LIST_CHANGED:
        kind = LIST_CHANGED[method]
        if kind is not None:
            session.names.forget(kind)
    return message


def _result(method: str, result: dict[str, Any], target: str, naming: Naming) -> dict[str, Any]:
    if not naming.uris_mapped:
        return result
    if method == "resources/read" and isinstance(result.get("contents"), list):
        return {**result, "contents": [_uri(c, target, naming) for c in result["contents"]]}
    if method == "tools/call" and isinstance(result.get("content"), list):
        return {**result, "content": [_block(b, target, naming) for b in result["content"]]}
    if method == "prompts/get" and isinstance(result.get("messages"), list):
        return {
            **result,
            "messages": [_prompt_message(m, target, naming) for m in result["messages"]],
        }
    return result


def _prompt_message(message: Any, target: str, naming: Naming) -> Any:
    if isinstance(message, dict) and "content" in message:
        return {**message, "content": _block(message["content"], target, naming)}
    return message


def _block(block: Any, target: str, naming: Naming) -> Any:
    """A content block: resource links and embedded resources carry URIs."""
    if not isinstance(block, dict):
        return block
    if block.get("type") == "resource_link":
        return _uri(block, target, naming)
    if block.get("type") == "resource" and isinstance(block.get("resource"), dict):
        return {**block, "resource": _uri(block["resource"], target, naming)}
    return block


def _uri(item: Any, target: str, naming: Naming) -> Any:
    if isinstance(item, dict) and isinstance(item.get("uri"), str):
        return {**item, "uri": naming.public_uri(target, item["uri"])}
    return item


# ---------------------------------------------------------------------------- client -> target


def answer_to_target(
    session: MuxSession, message: Mapping[str, Any]
) -> tuple[str, dict[str, Any]] | None:
    """A client's answer to a server-to-client request: (target, the answer with the target's
    own id), or None if no such request is pending."""
    pending = session.server_requests.take(message.get("id"))
    if pending is None:
        return None
    return pending.target, {**message, "id": pending.original_id}


def notification_targets(
    session: MuxSession, method: str, params: Mapping[str, Any] | None
) -> tuple[str, ...]:
    """The targets a client notification goes to (possibly none)."""
    params = params or {}
    if method == "notifications/cancelled":
        request_id = params.get("requestId")
        if isinstance(request_id, str | int) and not isinstance(request_id, bool):
            return session.in_flight.get(request_id, ())
        return ()
    if method == "notifications/progress":
        target = session.server_requests.target_of_progress(params.get("progressToken"))
        return (target,) if target is not None else ()
    return tuple(session.targets)
