"""SPIFFE ID allowlists: exact IDs and whole-segment wildcards, nothing fancier.

Pattern grammar (``td`` is a literal trust domain; a wildcard always stands for whole segments):

=============================  =============================================================
pattern                        matches
=============================  =============================================================
``spiffe://td/a/b``            exactly ``spiffe://td/a/b``
``spiffe://td/ns/*``           ``spiffe://td/ns/<one segment>``
``spiffe://td/ns/*/sa/x``      ``*`` may be any segment, still exactly one
``spiffe://td/ns/**``          ``spiffe://td/ns/<one or more segments>`` (not ``/ns`` itself)
``spiffe://td`` / ``td/**``    any workload of trust domain ``td``
=============================  =============================================================

No globbing inside a segment (``ab*``), no ``**`` before the end and no wildcard in the trust
domain: patterns that could be read two ways are refused, because an allowlist that admits more
than its author meant is a silent hole. Matching is case-sensitive and never crosses trust domains.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.errors import SidecarError
from sidecar.spiffe.ids import SCHEME_PREFIX, SpiffeId, SpiffeIdError

ONE = "*"
REST = "**"
_PLACEHOLDER = "x"  # stands in for a wildcard segment when the rest is checked as a SPIFFE ID


class PatternError(SidecarError):
    """An allowlist pattern is not valid: a configuration problem, hence status 500."""

    status = 500
    reason = "bad_spiffe_pattern"


@dataclass(frozen=True)
class SpiffeIdPattern:
    """A parsed pattern; build it with ``parse``. ``segments`` may contain ``*`` entries;
    ``rest`` means "followed by one or more segments" (a trailing ``**`` or no path at all)."""

    text: str
    trust_domain: str
    segments: tuple[str, ...]
    rest: bool

    @classmethod
    def parse(cls, text: str) -> SpiffeIdPattern:
        """Parse one pattern or raise ``PatternError`` saying what is wrong with it."""
        if not isinstance(text, str):
            raise PatternError(f"SPIFFE ID pattern must be a string, not {type(text).__name__}")
        if not text.startswith(SCHEME_PREFIX):
            raise PatternError(f"SPIFFE ID pattern {text!r} does not start with 'spiffe://'")
        body = text[len(SCHEME_PREFIX) :]
        trust_domain, _, path = body.partition("/")
        if "*" in trust_domain:
            raise PatternError(
                f"SPIFFE ID pattern {text!r}: wildcards are not allowed in the trust domain"
            )
        segments = path.split("/") if "/" in body else []
        rest = not segments or segments[-1] == REST
        if segments and segments[-1] == REST:
            segments.pop()
        for segment in segments:
            if segment == REST:
                raise PatternError(
                    f"SPIFFE ID pattern {text!r}: '**' is only allowed as the last segment"
                )
            if "*" in segment and segment != ONE:
                raise PatternError(
                    f"SPIFFE ID pattern {text!r}: a wildcard must be a whole segment"
                    f" ('*' or a final '**'), not {segment!r}"
                )
        # Everything else (trust domain and segment characters, empty / dot segments, trailing
        # slash, query, port...) is exactly the SPIFFE ID rules once wildcards become a segment.
        concrete = [_PLACEHOLDER if s == ONE else s for s in segments]
        if rest and segments:
            concrete.append(_PLACEHOLDER)
        as_id = SCHEME_PREFIX + trust_domain + "".join("/" + s for s in concrete)
        try:
            SpiffeId.parse(as_id)
        except SpiffeIdError as exc:
            raise PatternError(f"SPIFFE ID pattern {text!r} is invalid: {exc.message}") from exc
        return cls(text, trust_domain, tuple(segments), rest)

    def matches(self, sid: SpiffeId) -> bool:
        """True if ``sid`` matches. A trust-domain ID (empty path) never does: every pattern
        needs at least one segment (``rest`` means one or more)."""
        if sid.trust_domain != self.trust_domain:
            return False
        actual = sid.segments
        have, need = len(actual), len(self.segments)
        if (have <= need) if self.rest else (have != need):
            return False
        for wanted, segment in zip(self.segments, actual, strict=False):
            if wanted != segment and wanted != ONE:
                return False
        return True

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Allowlist:
    """An ordered set of patterns; a SPIFFE ID is allowed if any matches. Empty allows nothing."""

    patterns: tuple[SpiffeIdPattern, ...] = ()

    @classmethod
    def from_strings(cls, texts: Iterable[str]) -> Allowlist:
        """Parse every pattern; the error names the offending entry's index."""
        if isinstance(texts, str):
            raise PatternError("allowlist must be a list of patterns, not a single string")
        patterns: list[SpiffeIdPattern] = []
        for index, text in enumerate(texts):
            try:
                patterns.append(SpiffeIdPattern.parse(text))
            except PatternError as exc:
                raise PatternError(f"[{index}]: {exc.message}") from exc
        return cls(tuple(patterns))

    def allows(self, sid: SpiffeId) -> bool:
        return self.matching_pattern(sid) is not None

    def matching_pattern(self, sid: SpiffeId) -> SpiffeIdPattern | None:
        """The first pattern that matches ``sid`` (for audit logs), or None."""
        for pattern in self.patterns:
            if pattern.matches(sid):
                return pattern
        return None

    def __len__(self) -> int:
        return len(self.patterns)
