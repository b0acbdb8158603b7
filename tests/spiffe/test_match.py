"""Allowlist patterns: whole-segment wildcards only, never across segments or trust domains."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.spiffe.ids import SpiffeId
from sidecar.spiffe.match import Allowlist, PatternError, SpiffeIdPattern


def matches(pattern: str, sid: str) -> bool:
    return SpiffeIdPattern.parse(pattern).matches(SpiffeId.parse(sid))


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        (
            "spiffe://example.org/ns/a/sa/b",
            ["spiffe://example.org/ns/a/sa/b"],
            [
                "spiffe://example.org/ns/a/sa/bb",
                "spiffe://example.org/ns/a/sa/b/c",
                "spiffe://example.org/ns/a/sa",
                "spiffe://example.org/NS/a/sa/b",
                "spiffe://example.org/ns/A/sa/b",
                "spiffe://example.org.evil/ns/a/sa/b",
                "spiffe://other.org/ns/a/sa/b",
            ],
        ),
        (
            "spiffe://example.org/ns/*",
            [
                "spiffe://example.org/ns/a",
                "spiffe://example.org/ns/a.b-c_D",
                "spiffe://example.org/ns/...",
            ],
            [
                "spiffe://example.org/ns",
                "spiffe://example.org/ns/a/b",
                "spiffe://example.org/nsx/a",
                "spiffe://example.org/NS/a",
                "spiffe://example.org.evil/ns/a",
                "spiffe://evil.org/ns/a",
                "spiffe://xexample.org/ns/a",
                "spiffe://example.org/other/ns/a",
            ],
        ),
        (
            "spiffe://example.org/ns/*/sa/planner",
            ["spiffe://example.org/ns/agents/sa/planner", "spiffe://example.org/ns/x/sa/planner"],
            [
                "spiffe://example.org/ns/agents/sa/planner2",
                "spiffe://example.org/ns/agents/x/sa/planner",
                "spiffe://example.org/ns/sa/planner",
                "spiffe://example.org/ns/agents/sa/planner/x",
            ],
        ),
        (
            "spiffe://example.org/*/*",
            ["spiffe://example.org/a/b", "spiffe://example.org/x/y"],
            ["spiffe://example.org/a", "spiffe://example.org/a/b/c"],
        ),
        (
            "spiffe://example.org/ns/**",
            [
                "spiffe://example.org/ns/x",
                "spiffe://example.org/ns/x/y",
                "spiffe://example.org/ns/x/y/z/w",
            ],
            [
                "spiffe://example.org/ns",
                "spiffe://example.org/nsx/a",
                "spiffe://example.org/other/x",
                "spiffe://example.org.evil/ns/x",
                "spiffe://evil.org/ns/x",
            ],
        ),
        (
            "spiffe://example.org/*/sa/**",
            ["spiffe://example.org/ns/sa/a", "spiffe://example.org/ns/sa/a/b"],
            [
                "spiffe://example.org/ns/sa",
                "spiffe://example.org/sa/a",
                "spiffe://example.org/a/b/c",
            ],
        ),
        (
            "spiffe://example.org",
            ["spiffe://example.org/a", "spiffe://example.org/a/b/c"],
            ["spiffe://example.org.evil/a", "spiffe://xexample.org/a", "spiffe://org/a"],
        ),
        (
            "spiffe://example.org/**",
            ["spiffe://example.org/a", "spiffe://example.org/a/b/c"],
            ["spiffe://example.org.evil/a", "spiffe://evil.org/a"],
        ),
    ],
)
def test_pattern_semantics(pattern: str, yes: list[str], no: list[str]) -> None:
    for sid in yes:
        assert matches(pattern, sid), sid
    for sid in no:
        assert not matches(pattern, sid), sid


@pytest.mark.parametrize(
    "pattern", ["spiffe://example.org", "spiffe://example.org/**", "spiffe://example.org/*"]
)
def test_a_trust_domain_id_is_not_a_workload(pattern: str) -> None:
    assert not matches(pattern, "spiffe://example.org")


def test_literal_star_segment_is_not_an_id() -> None:
    """'*' cannot occur in an ID, so a wildcard can never be confused with a real segment."""
    assert SpiffeIdPattern.parse("spiffe://example.org/a/*").segments == ("a", "*")
    assert SpiffeIdPattern.parse("spiffe://example.org/a/**").rest


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("spiffe://example.org/ns/ab*", "whole segment"),
        ("spiffe://example.org/ns/*ab", "whole segment"),
        ("spiffe://example.org/ns/a*b", "whole segment"),
        ("spiffe://example.org/ns/***", "whole segment"),
        ("spiffe://example.org/ns/**x", "whole segment"),
        ("spiffe://example.org/**/sa/x", "last segment"),
        ("spiffe://example.org/ns/**/**", "last segment"),
        ("spiffe://*/ns/a", "wildcards are not allowed in the trust domain"),
        ("spiffe://*.example.org/ns/a", "wildcards are not allowed in the trust domain"),
        ("spiffe://example.*/ns/a", "wildcards are not allowed in the trust domain"),
        ("spiffe://**", "wildcards are not allowed in the trust domain"),
        ("http://example.org/ns/*", "spiffe://"),
        ("", "spiffe://"),
        ("*", "spiffe://"),
        (" spiffe://example.org/a", "spiffe://"),
        ("spiffe://", "empty"),
        ("spiffe://Example.org/ns/*", "invalid characters"),
        ("spiffe://example.org/", "trailing"),
        ("spiffe://example.org/*/", "trailing"),
        ("spiffe://example.org/ns//*", "empty path segment"),
        ("spiffe://example.org/ns/../*", "relative"),
        ("spiffe://example.org/./**", "relative"),
        ("spiffe://example.org/*/a?x=1", "query"),
        ("spiffe://example.org:443/*", "port"),
        ("spiffe://example.org/ns/%2A", "invalid characters"),
        ("spiffe://example.org/ns/a b", "invalid characters"),
    ],
)
def test_pattern_errors(pattern: str, says: str) -> None:
    with pytest.raises(PatternError) as err:
        SpiffeIdPattern.parse(pattern)
    assert err.value.status == 500
    assert err.value.reason == "bad_spiffe_pattern"
    assert says in err.value.message
    if pattern:
        assert repr(pattern) in err.value.message


def test_non_string_pattern() -> None:
    with pytest.raises(PatternError):
        SpiffeIdPattern.parse(None)  # type: ignore[arg-type]


def test_empty_allowlist_allows_nothing() -> None:
    empty = Allowlist.from_strings([])
    assert len(empty) == 0
    assert not empty.allows(SpiffeId.parse("spiffe://example.org/a"))
    assert empty.matching_pattern(SpiffeId.parse("spiffe://example.org/a")) is None
    assert not Allowlist().allows(SpiffeId.parse("spiffe://example.org/a"))


def test_allowlist_reports_the_first_matching_pattern() -> None:
    allow = Allowlist.from_strings(
        [
            "spiffe://example.org/ns/mcp/sa/math",
            "spiffe://example.org/ns/agents/*",
            "spiffe://b.org",
        ]
    )
    planner = SpiffeId.parse("spiffe://example.org/ns/agents/planner")
    assert allow.allows(planner)
    assert allow.matching_pattern(planner) == SpiffeIdPattern.parse(
        "spiffe://example.org/ns/agents/*"
    )
    assert str(allow.matching_pattern(SpiffeId.parse("spiffe://b.org/x/y"))) == "spiffe://b.org"
    assert not allow.allows(SpiffeId.parse("spiffe://example.org/ns/agents/planner/x"))
    assert not allow.allows(SpiffeId.parse("spiffe://c.org/ns/mcp/sa/math"))


def test_allowlist_error_names_the_entry() -> None:
    with pytest.raises(PatternError) as err:
        Allowlist.from_strings(["spiffe://example.org/a", "spiffe://example.org/a*"])
    assert err.value.message.startswith("[1]: ")
    assert err.value.reason == "bad_spiffe_pattern"


def test_allowlist_refuses_a_bare_string() -> None:
    """Iterating a string would make one pattern per character; refuse instead."""
    with pytest.raises(PatternError) as err:
        Allowlist.from_strings("spiffe://example.org/a")
    assert "single string" in err.value.message


# -- properties ------------------------------------------------------------------------------------

segment = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=6)
paths = st.lists(segment, min_size=1, max_size=6)


def make_id(segs: list[str], td: str = "example.org") -> SpiffeId:
    return SpiffeId.parse(f"spiffe://{td}/" + "/".join(segs))


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(st.integers(min_value=1, max_value=6), paths)
def test_star_never_matches_a_different_segment_count(stars: int, segs: list[str]) -> None:
    pattern = SpiffeIdPattern.parse("spiffe://example.org/" + "/".join(["*"] * stars))
    assert pattern.matches(make_id(segs)) == (len(segs) == stars)


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(paths, st.data())
def test_star_pattern_matches_iff_fixed_segments_agree(
    segs: list[str], data: st.DataObject
) -> None:
    """Replace some segments of an ID by '*': it matches exactly the IDs that agree elsewhere."""
    starred = data.draw(st.lists(st.booleans(), min_size=len(segs), max_size=len(segs)))
    pattern_segs = ["*" if s else seg for s, seg in zip(starred, segs, strict=True)]
    pattern = SpiffeIdPattern.parse("spiffe://example.org/" + "/".join(pattern_segs))
    assert pattern.matches(make_id(segs))
    other = data.draw(paths)
    expected = len(other) == len(segs) and all(
        p in ("*", o) for p, o in zip(pattern_segs, other, strict=True)
    )
    assert pattern.matches(make_id(other)) == expected
    assert not pattern.matches(make_id(segs, td="example.org.evil"))


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(paths, paths)
def test_double_star_is_a_strict_prefix_match(prefix: list[str], other: list[str]) -> None:
    pattern = SpiffeIdPattern.parse("spiffe://example.org/" + "/".join([*prefix, "**"]))
    expected = len(other) > len(prefix) and other[: len(prefix)] == prefix
    assert pattern.matches(make_id(other)) == expected
    assert pattern.matches(make_id([*prefix, *other]))
    assert not pattern.matches(make_id(prefix))


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(paths, paths)
def test_exact_pattern_matches_only_itself(a: list[str], b: list[str]) -> None:
    pattern = SpiffeIdPattern.parse(str(make_id(a)))
    assert pattern.matches(make_id(b)) == (a == b)
