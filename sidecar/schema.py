"""Configuration keys, each defined once, and the reader that follows them.

A mapping of a YAML document (``inbound``, ``outbound.routes[i]``, a policy rule) is read into a
frozen dataclass whose fields carry their key (``key(...)``): the value type (``Value``: its
parser, the type the docs name, its JSON Schema), the default (the field's own), whether it is
required, and its documentation. A ``Section`` gathers the keys of one mapping. From it come the
reader (``Fields``: unknown keys with a "did you mean", required keys, defaults, every value
parsed), ``sidecar.config.SCHEMA``, the key tables of docs/configuration.md and the published JSON
Schema (``sidecar.config_docs``). Rules between keys (``upstream`` or ``targets``, ``mtls: off``
needs a token layer) are not key definitions: they stay explicit code in each section's parser.

Every problem is collected (never stop at the first) as a ``ConfigError`` naming its key path; a
parser raises ``ConfigErrors`` with all of them (both live in ``sidecar.errors``, so the modules
that parse import this one and never each other).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sidecar.errors import ConfigError, ConfigErrors

__all__ = [
    "BOOLEAN",
    "ROOT",
    "Fields",
    "Key",
    "Parse",
    "Problems",
    "Schema",
    "Section",
    "Value",
    "as_string",
    "choice",
    "got",
    "join",
    "key",
    "keys_of",
    "list_of",
    "non_empty_string",
    "parse_each",
    "parse_items",
    "read",
    "repeated",
    "short",
    "string",
    "whole_number",
]

_T = TypeVar("_T")
Parse = Callable[[object, str], _T]
"""Parses one value found at a key path: returns it, or raises ``ConfigError`` (one problem) or
``ConfigErrors`` (several, e.g. a whole section)."""

ROOT = "<root>"
"""The path of problems that concern the document as a whole."""

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_KEY = "sidecar.schema.key"
"""The name of a dataclass field's metadata entry that holds its ``Key``."""


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


# ------------------------------------------------------------------------------ definitions


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()
"""The default of a key that has none (required, or derived from other keys)."""


@dataclass(frozen=True, slots=True)
class Value(Generic[_T]):
    """A kind of value: how it is parsed, how the docs name it, its JSON Schema."""

    parse: Parse[_T]
    label: str
    """The docs' "type" column (markdown): ``duration > 0``, ``list of origins``."""
    json: Mapping[str, object]
    """JSON Schema of the value as written (for editors; the parser has the last word)."""
    show: Callable[[Any], str] | None = None
    """How the docs write a default of this kind (``300.0`` -> ``5m``); None: as YAML would."""
    sections: tuple[Section, ...] = ()
    """The sections a value of this kind is made of (nested mappings, list items)."""

    def but(self, parse: Parse[_T]) -> Value[_T]:
        """The same kind with another parser (a stricter range, a different message)."""
        return dataclasses.replace(self, parse=parse)


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    """One key of a section. Made by ``key(...)`` on a dataclass field, or directly for a key
    that is not one field (``shutdown``, whose one key is ``Config.drain_timeout``)."""

    value: Value[Any]
    doc: str
    """What the key does, for people: the "meaning" column of its docs table (markdown)."""
    name: str = ""
    """The YAML key; the field's name unless given."""
    attr: str | None = None
    """The dataclass field it fills (set by ``keys_of``)."""
    owner: type | None = None
    """The dataclass ``attr`` belongs to."""
    required: str | None = None
    """If set, an absent key is the problem "required (<this>)" (just "required" if empty)."""
    when: str | None = None
    """Required only in some cases (checked by the section's parser): the docs say which, e.g.
    "unless `targets`"; the JSON Schema then does not require it."""
    default: object = NO_DEFAULT
    """The value of an absent key (the field's default, set by ``keys_of``)."""
    shown: str | None = None
    """The docs' "default" column when the default is not a plain value ("see below",
    "`true` with `mtls: required`...")."""


def key(
    value: Value[Any],
    doc: str,
    *,
    default: object = dataclasses.MISSING,
    default_factory: Callable[[], object] | None = None,
    required: str | None = None,
    when: str | None = None,
    shown: str | None = None,
    name: str = "",
    compare: bool = True,
) -> Any:
    """A dataclass field that is a configuration key (see ``Key``)."""
    metadata = {
        _KEY: Key(value=value, doc=doc, name=name, required=required, when=when, shown=shown)
    }
    if default_factory is not None:
        return dataclasses.field(
            default_factory=default_factory, metadata=metadata, compare=compare
        )
    return dataclasses.field(default=default, metadata=metadata, compare=compare)


def keys_of(cls: type, *names: str) -> tuple[Key, ...]:
    """The keys of ``cls``'s fields (``names`` only, in that order, if given)."""
    found: dict[str, Key] = {}
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(_KEY)
        if meta is None:
            continue
        if field.default is not dataclasses.MISSING:
            default: object = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = NO_DEFAULT
        found[field.name] = dataclasses.replace(
            meta, name=meta.name or field.name, attr=field.name, owner=cls, default=default
        )
    return tuple(found[name] for name in names) if names else tuple(found.values())


@dataclass(frozen=True, slots=True)
class Section:
    """The keys of one mapping, in the order the docs list them."""

    name: str
    """Where it sits (``inbound.jwt_svid``, ``outbound.routes[]``, ``""`` for the top level);
    for a ``shared`` section the name of its docs table (``limits``)."""
    keys: tuple[Key, ...]
    shared: bool = False
    """It sits at several places (``inbound.limits``, ``outbound.limits``): a reader names it
    by where it is."""
    defaults: bool = True
    """Its docs table has a "default" column."""

    def __post_init__(self) -> None:
        names = [k.name for k in self.keys]
        assert len(set(names)) == len(names) and all(names), f"keys of {self.name!r}: {names}"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    def key(self, name: str) -> Key:
        for candidate in self.keys:
            if candidate.name == name:
                return candidate
        raise KeyError(f"{self.name or 'the top level'} has no key {name!r}")

    def where(self, path: str) -> str:
        """Its place in ``Schema`` when read at ``path``."""
        return re.sub(r"\[[0-9]+\]", "[]", path) if self.shared else self.name


@dataclass(frozen=True, slots=True)
class Schema:
    """Every section of a document by place: an unknown key that is known at another place is
    pointed there ("it belongs under 'inbound.oauth'"), a key of a feature that is designed but
    not built yet is refused as such."""

    places: Mapping[str, Section]
    unsupported: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """``place.key`` -> what the feature would do."""

    def names(self) -> dict[str, tuple[str, ...]]:
        return {place: section.names for place, section in self.places.items()}

    def unknown_key(self, key: str, section: Section, where: str) -> str:
        homes = [
            place
            for place, other in self.places.items()
            if other is not section and key in other.names
        ]
        homes += [k.rpartition(".")[0] for k in self.unsupported if k.rpartition(".")[2] == key]
        return unknown_key_message(key, section.names, homes)


def unknown_key_message(key: str, known: Sequence[str], homes: Sequence[str] = ()) -> str:
    message = f"unknown key {short(key)}"
    # a real key of another section is a typo only if nearly the same as one here
    # (``audience`` for ``audiences``), not when merely alike (``max_requests`` in ``limits``)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.9 if homes else 0.6)
    if close:
        return f"{message}; did you mean {close[0]!r}?"
    if homes:
        where = " or ".join(repr(_display(home)) for home in homes)
        return f"{message}; it belongs under {where}"
    return f"{message}; expected one of: {', '.join(known)}"


def _display(place: str) -> str:
    return place.replace("[]", "[i]") if place else "the top level"


# ---------------------------------------------------------------------------------- reading


class Problems:
    """Collects every problem of one document (or one section of it)."""

    def __init__(self) -> None:
        self.items: list[ConfigError] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(ConfigError(path or ROOT, message))

    def attempt(self, parse: Parse[_T], value: object, path: str) -> _T | None:
        """``parse(value, path)``, or None with its problems recorded (see ``failed``)."""
        try:
            return parse(value, path)
        except ConfigError as exc:
            self.items.append(exc)
        except ConfigErrors as exc:
            self.items.extend(exc.problems)
        return None

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigErrors(self.items)

    def fields(
        self, section: Section, value: object, path: str, *, none_ok: bool = True
    ) -> Fields | None:
        """``value`` read as ``section`` (problems go here), or None if it is not a mapping."""
        try:
            return Fields(section, value, path, problems=self, none_ok=none_ok)
        except _NotAMapping:
            return None


class _NotAMapping(Exception):
    """Recorded already; nothing of the section can be read."""


class Fields:
    """One mapping read as a ``Section``: unknown (and unsupported) keys are recorded at once;
    each key is parsed by its ``Value`` on first use, an absent one is its default, or the
    problem "required (...)". Problems go to ``problems``; ``failed`` says if any was found
    since this mapping was opened."""

    def __init__(
        self,
        section: Section,
        value: object,
        path: str,
        *,
        problems: Problems,
        schema: Schema | None = None,
        none_ok: bool = True,
    ) -> None:
        self.section = section
        self.path = path
        self.problems = problems
        self._start = len(problems.items)
        self._parsed: dict[str, object] = {}
        self._bad: set[str] = set()
        if value is None and none_ok:  # "admin:" with everything under it commented out
            value = {}
        if not isinstance(value, Mapping):
            listed = ", ".join(section.names)
            problems.add(path, f"expected a mapping with keys {listed}; got {got(value)}")
            raise _NotAMapping
        where = section.where(path)
        self.data: dict[str, object] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                problems.add(path, f"keys must be strings, got {got(name)}")
                continue
            place = f"{where}.{name}" if where else name
            if schema is not None and place in schema.unsupported:
                problems.add(
                    join(path, name),
                    f"not supported by this version yet ({schema.unsupported[place]}); remove "
                    "it: an ignored security policy would silently allow what it should deny",
                )
            elif name not in section.names:
                message = (
                    schema.unknown_key(name, section, where)
                    if schema is not None
                    else unknown_key_message(name, section.names)
                )
                problems.add(join(path, name), message)
            else:
                self.data[name] = item

    @property
    def failed(self) -> bool:
        return len(self.problems.items) > self._start

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def bad(self, name: str) -> bool:
        """Whether key ``name`` had problems (it then reads as its default)."""
        return name in self._bad and name in self.data

    def raw(self, name: str) -> object:
        """The value of ``name`` as written (None if absent), for rules between keys."""
        return self.data.get(name)

    def at(self, name: str) -> str:
        """The key path of ``name``."""
        return join(self.path, name)

    def error(self, message: str, name: str | None = None) -> None:
        """A problem of the mapping, or of its key ``name``."""
        self.problems.add(self.path if name is None else self.at(name), message)

    def get(
        self, name: str, parse: Parse[Any] | None = None, *, default: object = NO_DEFAULT
    ) -> Any:
        """The parsed value of ``name`` (by ``parse`` if given: a parser that needs context);
        absent, ``default`` or the key's own (None if it has none, after recording "required"
        for a required key); the default too if it has problems (recorded)."""
        definition = self.section.key(name)
        if default is NO_DEFAULT:
            default = None if definition.default is NO_DEFAULT else definition.default
        if name in self._parsed:
            return self._parsed[name]
        if name in self._bad:
            return default
        if name not in self.data:
            if definition.required is not None:
                hint = f" ({definition.required})" if definition.required else ""
                self.problems.add(self.at(name), f"required{hint}")
                self._bad.add(name)
            return default
        before = len(self.problems.items)
        result = self.problems.attempt(
            parse or definition.value.parse, self.data[name], self.at(name)
        )
        if len(self.problems.items) > before:
            self._bad.add(name)
            return default
        self._parsed[name] = result
        return result

    def values(self, cls: type, **given: object) -> dict[str, Any]:
        """The fields of ``cls``: ``given``, then every key of ``cls`` that is present (parsed
        now unless read already); absent keys are left to the dataclass's defaults."""
        result: dict[str, Any] = {}
        for definition in self.section.keys:
            if definition.owner is not cls or definition.attr is None:
                continue
            if definition.attr in given:
                continue
            value = self.get(definition.name)
            if definition.name in self._parsed:
                result[definition.attr] = value
        result.update(given)
        return result

    def check(self) -> None:
        """Raise every problem found so far (``ConfigErrors``), if any."""
        if self.failed:
            raise ConfigErrors(self.problems.items)

    def build(self, cls: type[_T], **given: object) -> _T:
        """``cls`` from its keys (see ``values``) and ``given``; ``ConfigErrors`` if this
        mapping had any problem."""
        values = self.values(cls, **given)
        self.check()
        return cls(**values)


def read(
    section: Section,
    value: object,
    path: str,
    *,
    schema: Schema | None = None,
    none_ok: bool = True,
) -> Fields:
    """Open ``value`` as ``section`` with problems of its own; ``ConfigErrors`` at once if it
    is not a mapping (nothing of it can be read). ``None`` (a key with everything under it
    commented out) is an empty mapping if ``none_ok``."""
    problems = Problems()
    try:
        return Fields(section, value, path, problems=problems, schema=schema, none_ok=none_ok)
    except _NotAMapping:
        raise ConfigErrors(problems.items) from None


# ------------------------------------------------------------------------------- value kinds


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        hint = ""
        if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
            hint = " (write true or false; yes/no/on/off are strings in this file)"
        raise ConfigError(path, f"expected true or false, got {got(value)}{hint}")
    return value


BOOLEAN: Value[bool] = Value(_boolean, "boolean", {"type": "boolean"})
"""``true`` / ``false`` only: YAML 1.2, so ``yes`` / ``on`` are strings (and refused here)."""


def choice(*options: _T, fold: Callable[[str], str] | None = None) -> Value[_T]:
    """One of ``options`` (compared with their type: ``1`` is not ``"1"``); ``fold`` maps a
    string first (``str.lower``: case-insensitive)."""

    def parse(value: object, path: str) -> _T:
        if fold is not None and isinstance(value, str):
            value = fold(value)
        for option in options:
            if value == option and type(value) is type(option):
                return option
        message = f"expected {' or '.join(repr(o) for o in options)}, got {got(value)}"
        if isinstance(value, str):
            close = difflib.get_close_matches(value, [str(o) for o in options], n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        raise ConfigError(path, message)

    label = " | ".join(f"`{o}`" for o in options)
    return Value(parse, label, {"enum": list(options)})


def as_string(value: object, path: str, like: str) -> str:
    """``value`` if it is a string; the type error names ``like``, an example."""
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string like {like}, got {got(value)}")
    return value


def string(like: str, *, label: str = "string", pattern: str | None = None) -> Value[str]:
    """Any string (``like`` is the example a type error names)."""
    json: dict[str, object] = {"type": "string"}
    if pattern is not None:
        json["pattern"] = pattern
    return Value(lambda value, path: as_string(value, path, like), label, json)


def non_empty_string(like: str, *, label: str = "string") -> Value[str]:
    def parse(value: object, path: str) -> str:
        if not as_string(value, path, like):
            raise ConfigError(path, f"must not be empty; expected a non-empty string like {like}")
        return value  # type: ignore[return-value]

    return Value(parse, label, {"type": "string", "minLength": 1})


def whole_number(low: int, high: int, *, label: str | None = None) -> Value[int]:
    def parse(value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                path, f"expected a whole number from {low} to {high}, got {got(value)}"
            )
        if not low <= value <= high:
            raise ConfigError(path, f"must be from {low} to {high} (got {value})")
        return value

    json = {"type": "integer", "minimum": low, "maximum": high}
    return Value(parse, label or f"integer {low} .. {high}", json)


def parse_items(
    items: Sequence[object], path: str, parse: Parse[_T], problems: list[ConfigError]
) -> list[tuple[int, _T]]:
    """``parse`` every item of a list (``path[index]`` names each): those that parse, with
    their index; the problems of the others are appended to ``problems``."""
    parsed: list[tuple[int, _T]] = []
    for index, item in enumerate(items):
        try:
            parsed.append((index, parse(item, f"{path}[{index}]")))
        except ConfigError as exc:
            problems.append(exc)
        except ConfigErrors as exc:
            problems.extend(exc.problems)
    return parsed


def repeated(
    items: Iterable[tuple[int, _T]], identity: Callable[[_T], Hashable]
) -> Iterator[tuple[int, _T, int]]:
    """``(index, item, first)`` of every item whose ``identity`` the item at ``first`` had
    already (for "duplicate name 'x' (also routes[0])")."""
    first: dict[Hashable, int] = {}
    for index, item in items:
        seen = first.setdefault(identity(item), index)
        if seen != index:
            yield index, item, seen


def parse_each(
    items: Sequence[object],
    path: str,
    parse: Parse[_T],
    problems: list[ConfigError],
) -> tuple[_T, ...] | None:
    """``parse`` every item of a list (``path[index]`` names each), duplicates dropped; every
    failure is appended to ``problems``, and then the result is None."""
    before = len(problems)
    parsed = parse_items(items, path, parse, problems)
    if len(problems) > before:
        return None
    result: list[_T] = []
    for _, value in parsed:
        if value not in result:
            result.append(value)
    return tuple(result)


NOT_EMPTY = "must not be empty (omit the key instead); expected a list of {like}"
"""The usual message for an empty list where one must hold something (``{like}``: the items)."""


def list_of(
    item: Value[_T],
    like: str,
    *,
    empty: str | None = None,
    label: str | None = None,
) -> Value[tuple[_T, ...]]:
    """A list (never a lone string) of ``item`` values, every bad item named by its index,
    duplicates dropped. ``empty``: the message if an empty list is an error (``{like}`` is
    replaced), None if it is fine."""

    def parse(value: object, path: str) -> tuple[_T, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(path, f"expected a list of {like}, got {got(value)}")
        if not value and empty is not None:
            raise ConfigError(path, empty.replace("{like}", like))
        problems: list[ConfigError] = []
        result = parse_each(value, path, item.parse, problems)
        if result is None:
            raise ConfigErrors(problems)
        return result

    json: dict[str, object] = {"type": "array", "items": dict(item.json)}
    if empty is not None:
        json["minItems"] = 1
    return Value(parse, label or f"list of {like}", json, sections=item.sections)


def section_value(
    section: Section, parse: Parse[_T], *, label: str = "mapping", many: str | None = None
) -> Value[_T]:
    """A value that is a mapping read as ``section`` (``many``: a list of them, named so in
    the docs' type column, e.g. "list of routes")."""
    ref = {"$ref": f"#/$defs/{definition_name(section)}"}
    json: Mapping[str, object] = {"type": "array", "items": ref} if many else ref
    return Value(parse, many or label, json, sections=(section,))


def definition_name(section: Section) -> str:
    """The section's name in the JSON Schema's ``$defs``."""
    return section.name.replace("[]", "_item").replace(".", "_") or "config"


def all_sections(roots: Iterable[Section]) -> list[Section]:
    """``roots`` and every section below them, each once, depth first."""
    seen: list[Section] = []

    def visit(section: Section) -> None:
        if any(section is other for other in seen):
            return
        seen.append(section)
        for definition in section.keys:
            for inner in definition.value.sections:
                visit(inner)

    for root in roots:
        visit(root)
    return seen
