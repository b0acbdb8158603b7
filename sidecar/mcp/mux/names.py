"""How a multiplexed endpoint names the tools, prompts and resources of its targets (pure).

**Names** (tools, prompts): with prefixes on, ``math__add`` is the tool ``add`` of target
``math``; the separator is ``__`` (agentgateway uses ``_``, AWS AgentCore Gateway ``___``). The
name is split at the *first* ``__``, and target names cannot contain ``_`` at all, so
``{target}__{name}`` is unambiguous whatever the tool is called (``math__a__b`` is ``a__b`` of
``math``). ``prefix_mode`` says when names carry their target:

* ``always``: always, even with one target;
* ``multiple`` (default): only when the route has several targets;
* ``never``: never; a call is routed by an owner table filled from the targets' lists, and a
  name served by several targets is ambiguous (left out of lists, refused in calls).

**Resource URIs** carry their target whenever there are several targets (or with ``always``),
whatever ``prefix_mode`` says: the target goes in front of the URI's scheme, ``math+file:///a``
(still a valid absolute URI: ``+`` is allowed in a scheme, and a target name starts with a letter
and has no ``_``). Unlike names, URIs cannot be routed by a table: a client may read a URI it
expanded from a template or found in a tool result, never listed. A URI without a scheme cannot
carry a target and is passed unchanged (and cannot be read through a multiplexed endpoint).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

PrefixMode = Literal["always", "multiple", "never"]
PREFIX_MODES: Final[tuple[PrefixMode, ...]] = ("always", "multiple", "never")
SEPARATOR: Final = "__"
"""Joins target and tool / prompt name: ``math__add``."""
URI_JOIN: Final = "+"
"""Joins target and resource URI: ``math+file:///a``."""
TARGET_NAME_RE: Final = re.compile(r"[a-z][a-z0-9-]{0,31}", re.ASCII)
"""A target name: a lowercase letter, then lowercase letters, digits and ``-`` (at most 32).
No ``_``, so it never contains the separator, and it can lead a URI scheme."""
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:", re.ASCII)


@dataclass(frozen=True, slots=True)
class Naming:
    """The naming rules of one multiplexed endpoint (its target names and prefix mode)."""

    targets: tuple[str, ...]
    prefix_mode: PrefixMode = "multiple"

    @classmethod
    def of(cls, targets: Sequence[str], prefix_mode: PrefixMode) -> Naming:
        return cls(tuple(targets), prefix_mode)

    @property
    def prefixed(self) -> bool:
        """Whether tool and prompt names carry their target."""
        return self.prefix_mode == "always" or (
            self.prefix_mode == "multiple" and len(self.targets) > 1
        )

    @property
    def needs_owner_table(self) -> bool:
        """Names carry no target but there are several: calls are routed by a table."""
        return not self.prefixed and len(self.targets) > 1

    @property
    def uris_mapped(self) -> bool:
        """Whether resource URIs carry their target."""
        return self.prefix_mode == "always" or len(self.targets) > 1

    # -- names -------------------------------------------------------------------------------

    def public_name(self, target: str, name: str) -> str:
        """The name the client sees for ``name`` of ``target``."""
        return f"{target}{SEPARATOR}{name}" if self.prefixed else name

    def split_name(self, public: str) -> tuple[str, str] | None:
        """(target, name) for a name the client sent, or None when it names no known target
        (prefixed) or when the owner table must decide (``needs_owner_table``)."""
        if self.prefixed:
            target, sep, name = public.partition(SEPARATOR)
            if not sep or not name or target not in self.targets:
                return None
            return target, name
        if len(self.targets) == 1:
            return self.targets[0], public
        return None

    # -- resource URIs -----------------------------------------------------------------------

    def public_uri(self, target: str, uri: str) -> str:
        """The URI (or URI template) the client sees for ``uri`` of ``target``."""
        if not self.uris_mapped or _SCHEME_RE.match(uri) is None:
            return uri
        return f"{target}{URI_JOIN}{uri}"

    def split_uri(self, public: str) -> tuple[str, str] | None:
        """(target, URI) for a URI the client sent, or None if it names no known target."""
        if not self.uris_mapped:
            return (self.targets[0], public) if len(self.targets) == 1 else None
        scheme = _SCHEME_RE.match(public)
        if scheme is None:
            return None
        target, sep, rest = public.partition(URI_JOIN)
        if not sep or len(target) >= scheme.end() or target.lower() not in self.targets:
            return None
        if _SCHEME_RE.match(rest) is None:
            return None
        return target.lower(), rest


def target_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a target, or None."""
    if TARGET_NAME_RE.fullmatch(name):
        return None
    if "_" in name:
        return (
            f"{name!r} contains '_': target names join tool names with the separator "
            f"{SEPARATOR!r} (math{SEPARATOR}add), so they may not contain '_'; use '-'"
        )
    return (
        f"{name!r} is not a target name: a lowercase letter, then lowercase letters, digits "
        "and '-', at most 32 characters (it leads resource URIs: math+file:///a)"
    )


_GLOB_CHARS: Final = frozenset("*?[")


def pattern_problem(naming: Naming, pattern: str) -> str | None:
    """Why a policy rule's tool / prompt pattern can never match a name of this endpoint, when
    that is knowable from the pattern alone (names carry their target here)."""
    if not naming.prefixed:
        return None
    target, sep, _ = pattern.partition(SEPARATOR)
    if _GLOB_CHARS & set(target):
        return None
    if not sep:
        if _GLOB_CHARS & set(pattern):
            return None
        return (
            f"{pattern!r} can never match: names here carry their target "
            f"({naming.targets[0]}{SEPARATOR}{pattern}); targets: {', '.join(naming.targets)}"
        )
    if target not in naming.targets:
        return f"{pattern!r} names no target; targets: {', '.join(naming.targets)}"
    return None
