"""Validation helpers shared by ``config``, ``mcp.policy`` and ``mcp.ratelimit``.

Every problem is collected (never stop at the first) as a ``ConfigError`` naming its key path;
unknown keys get a "did you mean" suggestion. ``ConfigErrors`` lives in ``sidecar.config``, which
will itself import ``sidecar.mcp.policy`` to parse ``inbound.mcp_policy``, so it is imported lazily
here (at raise time) to keep that import acyclic.

Also a tiny strict YAML loader (YAML 1.2 booleans, duplicate keys refused) for policy files read
on their own; ``config.py`` has the same rules but keeps its loader private.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

from sidecar.errors import ConfigError

_T = TypeVar("_T")

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def join(path: str, key: str) -> str:
    """``path.key``, or ``path['odd key']`` for keys that are not plain identifiers."""
    if not _PLAIN_KEY_RE.fullmatch(key):
        return f"{path}[{short(key)}]"
    return f"{path}.{key}" if path else key


def short(text: str) -> str:
    """Quote untrusted text for a message without echoing kilobytes of it."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def got(value: object) -> str:
    """Describe a value for a type error; containers by kind only (they may be huge)."""
    if value is None:
        return "null (empty value)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**20 else "a very large integer"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {short(value)}"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def parse_each(
    items: Sequence[object],
    path: str,
    parse: Callable[[object, str], _T],
    problems: list[ConfigError],
) -> tuple[_T, ...] | None:
    """``parse`` every item of a list (``path[index]`` names each), duplicates dropped; every
    failure is appended to ``problems``, and then the result is None."""
    result: list[_T] = []
    failed = False
    for index, item in enumerate(items):
        try:
            parsed = parse(item, f"{path}[{index}]")
        except ConfigError as exc:
            problems.append(exc)
            failed = True
            continue
        if parsed not in result:
            result.append(parsed)
    return None if failed else tuple(result)


def raise_config_errors(problems: Sequence[ConfigError]) -> NoReturn:
    from sidecar.config import ConfigErrors  # lazy: config.py imports this package

    raise ConfigErrors(problems)


class Problems:
    """Collects every problem of one document."""

    def __init__(self) -> None:
        self.items: list[ConfigError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(ConfigError(path, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise_config_errors(self.items)

    def mapping(
        self, value: object, path: str, known: Sequence[str], *, none_ok: bool = True
    ) -> dict[str, object] | None:
        """The known keys of ``value`` (unknown keys are recorded), or None if it is not a
        mapping. ``None`` (a key with everything under it commented out) is ``{}`` if
        ``none_ok``."""
        if value is None and none_ok:
            return {}
        if not isinstance(value, Mapping):
            self.add(path, f"expected a mapping with keys {', '.join(known)}; got {got(value)}")
            return None
        result: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.add(path, f"keys must be strings, got {got(key)}")
                continue
            if key not in known:
                message = f"unknown key {short(key)}"
                close = difflib.get_close_matches(key, known, n=1)
                if close:
                    message += f"; did you mean {close[0]!r}?"
                else:
                    message += f"; expected one of: {', '.join(known)}"
                self.add(join(path, key), message)
                continue
            result[key] = item
        return result

    def sequence(self, value: object, path: str, like: str) -> Sequence[object] | None:
        """A non-empty list, or None (problem recorded)."""
        if isinstance(value, str) or not isinstance(value, list | tuple):
            self.add(path, f"expected a list of {like}, got {got(value)}")
            return None
        if not value:
            self.add(path, f"must not be empty (omit the key instead); expected a list of {like}")
            return None
        return value

    def items_of(
        self, value: object, path: str, like: str, parse: Callable[[object, str], _T]
    ) -> tuple[_T, ...] | None:
        """Parse every item of a non-empty list; problems by index; None if any failed."""
        items = self.sequence(value, path, like)
        if items is None:
            return None
        return parse_each(items, path, parse, self.items)

    def boolean(self, value: object, path: str) -> bool | None:
        """``true`` / ``false`` only (YAML 1.2: ``yes`` / ``on`` are strings), or None."""
        if isinstance(value, bool):
            return value
        self.add(path, f"expected true or false, got {got(value)}")
        return None

    def choice(self, value: object, path: str, choices: Sequence[str]) -> str | None:
        if isinstance(value, str) and value in choices:
            return value
        message = f"expected {' or '.join(repr(c) for c in choices)}, got {got(value)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, choices, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        self.add(path, message)
        return None


def non_empty_string(like: str) -> Callable[[object, str], str]:
    def parse(value: object, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(path, f"expected a non-empty string like {like}, got {got(value)}")
        return value

    return parse


# ---------------------------------------------------------------------------------------- YAML

_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (only true/false) that refuses duplicate keys."""

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        first: dict[tuple[str, str], int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue  # a '<<' merge may be overridden by explicit keys, as in YAML
            identity = (key_node.tag, str(key_node.value))
            line = key_node.start_mark.line + 1
            if identity in first:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {short(str(key_node.value))} (first at line "
                    f"{first[identity]}); a security config must not be ambiguous",
                    key_node.start_mark,
                )
            first[identity] = line
        return super().construct_mapping(node, deep)


_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str | bytes, *, source: str) -> object:
    """Parse one YAML document strictly; any problem is ``ConfigErrors`` naming ``source``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join((exc.problem or exc.context or "syntax error").split())
        raise_config_errors([ConfigError(source, f"invalid YAML{where}: {what}")])
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise_config_errors([ConfigError(source, f"invalid YAML: {message}")])
    except RecursionError:
        raise_config_errors([ConfigError(source, "invalid YAML: nested too deeply")])
