"""The one YAML loader: the configuration, policy files, API key files and Kubernetes manifests.

Strict because a security configuration must never be ambiguous or read differently from how it
was meant:

* duplicate keys are problems (PyYAML would keep the last one silently), each named by its key
  path with the lines of both;
* every other problem is located too: the line of each key path is kept, and a problem that the
  caller's parser reports at a path gets "(line N)";
* YAML syntax errors, bad encodings and absurd nesting are problems (``ConfigErrors``), never
  another exception;
* only safe tags (PyYAML's ``SafeLoader``); aliases are walked once (no billion laughs).

Two dialects. Our own files (``Strict``): YAML 1.2 booleans, so only ``true`` / ``false`` are
booleans (``mtls: off`` is the string "off", ``forward_authorization: yes`` a type error instead
of a silent ``true``). Kubernetes manifests (``Manifest``): booleans as Kubernetes itself reads
them (YAML 1.1: ``yes`` / ``on`` are ``true``), so that what we write back means what the input
meant, and timestamps stay strings (they go back out exactly as they came in).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from sidecar.errors import ConfigError, ConfigErrors, problem_detail
from sidecar.schema import join

__all__ = ["Manifest", "Strict", "load_documents", "parse_document", "parse_file"]

_T = TypeVar("_T")
_BOOL_TAG = "tag:yaml.org,2002:bool"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_LOCATED_RE = re.compile(r"\bline [0-9]+[),]")
"""A problem that names its line already: ``... (line 3)``, ``duplicate key (first at line 1,
again at line 9)``, a YAML error ``at line 4, column 2`` or ``(while scanning ... at line 4)``."""


def _without(loader: type[yaml.SafeLoader], tag: str) -> None:
    loader.yaml_implicit_resolvers = {
        first: [(t, regexp) for t, regexp in resolvers if t != tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


class Strict(yaml.SafeLoader):
    """Our files: only true/false are booleans (YAML 1.2)."""


_without(Strict, _BOOL_TAG)
Strict.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class Manifest(yaml.SafeLoader):
    """Kubernetes manifests: YAML 1.1 booleans, as the API machinery reads them; timestamps stay
    strings."""


_without(Manifest, _TIMESTAMP_TAG)


def parse_document(
    text: str | bytes,
    parse: Callable[[object], _T],
    *,
    source: str,
    root: str = "",
) -> _T:
    """Load one YAML document and ``parse`` it (``ConfigErrors`` naming key paths below
    ``root``). Every problem is raised together as one ``ConfigErrors``: YAML errors name
    ``source``; duplicate keys and what ``parse`` finds carry their line."""
    try:
        ((data, lines, problems),) = _load(text, Strict, lambda _: root, single=True)
    except ConfigErrors as exc:
        raise ConfigErrors([_at(source, problem) for problem in exc.problems]) from None
    try:
        result = parse(data)
    except ConfigErrors as exc:
        problems.extend(_with_line(problem, lines) for problem in exc.problems)
    if problems:
        raise ConfigErrors(problems)
    return result


def parse_file(
    path: str | Path, parse: Callable[[object, str], _T], *, root: str | None = None
) -> _T:
    """Read a YAML file and ``parse(data, source)``, key paths below ``root``: by default the
    file's name (``policy.yaml.rules[0].name``, for a file named by the configuration); an
    unreadable file is a problem too."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigErrors([ConfigError(source, f"cannot read the file: {reason}")]) from None
    return parse_document(
        raw, lambda data: parse(data, source), source=source, root=source if root is None else root
    )


def load_documents(text: str, *, source: str) -> list[Any]:
    """Every non-empty document of a (multi-document) Kubernetes manifest, read with
    ``Manifest``; duplicate keys (paths below ``document N``) and syntax errors are
    ``ConfigErrors``."""
    try:
        documents = _load(text, Manifest, lambda index: f"document {index + 1}", single=False)
    except ConfigErrors as exc:
        raise ConfigErrors([_at(source, problem) for problem in exc.problems]) from None
    problems = [problem for _, _, duplicates in documents for problem in duplicates]
    if problems:
        raise ConfigErrors(problems)
    return [data for data, _, _ in documents if data is not None]


# ------------------------------------------------------------------------------- internals


_Document = tuple[object, dict[str, int], list[ConfigError]]
"""The data of one document, the line of each key path, its duplicate keys."""


def _load(
    text: str | bytes,
    dialect: type[yaml.SafeLoader],
    root: Callable[[int], str],
    *,
    single: bool,
) -> list[_Document]:
    """Compose, scan (before constructing: that merges ``<<`` keys into their mappings) and
    construct each document; key paths of document ``i`` start at ``root(i)``. YAML errors are
    ``ConfigErrors`` at path ""."""

    def document(loader: yaml.SafeLoader, node: Node | None, index: int) -> _Document:
        if node is None:
            return None, {}, []
        lines, duplicates = _scan(node, root(index))
        return loader.construct_document(node), lines, duplicates

    try:
        loader = dialect(text)  # may raise ReaderError (bad encoding, control characters)
        try:
            if single:
                return [document(loader, loader.get_single_node(), 0)]
            documents: list[_Document] = []
            while loader.check_node():
                documents.append(document(loader, loader.get_node(), len(documents)))
            return documents
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        message = _yaml_message(exc)
    except yaml.YAMLError as exc:
        message = f"invalid YAML: {' '.join(str(exc).split())}"  # one line per problem
    except RecursionError:
        message = "invalid YAML: nested too deeply"
    raise ConfigErrors([ConfigError("", message)])


def _at(source: str, problem: ConfigError) -> ConfigError:
    return ConfigError(source, problem.message)


def _scan(root: Node, prefix: str) -> tuple[dict[str, int], list[ConfigError]]:
    """Walk a composed document: the line of every key path, and every duplicate key."""
    lines: dict[str, int] = {}
    duplicates: list[tuple[int, ConfigError]] = []
    seen: set[int] = set()
    stack: list[tuple[Node, str]] = [(root, prefix)]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:  # aliases share nodes: visit each once (no billion laughs)
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                item_path = f"{path}[{index}]"
                lines.setdefault(item_path, item.start_mark.line + 1)
                stack.append((item, item_path))
        elif isinstance(node, MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:  # '<<: *defaults' merges into this very mapping
                    merged = (
                        value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                    )
                    stack.extend((item, path) for item in merged)
                    continue
                if not isinstance(key_node, ScalarNode):
                    continue
                line = key_node.start_mark.line + 1
                key_path = join(path, str(key_node.value))
                identity = (key_node.tag, str(key_node.value))
                if identity in first_line:
                    duplicates.append(
                        (
                            line,
                            ConfigError(
                                key_path,
                                f"duplicate key (first at line {first_line[identity]}, again at "
                                f"line {line}); a security config must not be ambiguous",
                            ),
                        )
                    )
                    continue
                first_line[identity] = line
                lines.setdefault(key_path, line)
                stack.append((value_node, key_path))
    duplicates.sort(key=lambda item: item[0])
    return lines, [problem for _, problem in duplicates]


def _with_line(problem: ConfigError, lines: Mapping[str, int]) -> ConfigError:
    """``problem`` with the line of its key path, unless it names one already (a problem of a
    file named by the configuration is located in that file)."""
    line = lines.get(problem.path)
    detail = problem_detail(problem)
    if line is None or _LOCATED_RE.search(detail):
        return problem
    return ConfigError(problem.path, f"{detail} (line {line})")


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = exc.problem or exc.context or "syntax error"
    message = f"invalid YAML{where}: {' '.join(what.split())}"
    if exc.context and exc.problem and exc.context_mark is not None:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    return message
