"""SPIFFE ID parsing (SPIFFE-ID spec section 2): strict, never normalising."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sidecar.spiffe.ids import (
    MAX_ID_BYTES,
    MAX_TRUST_DOMAIN_BYTES,
    SpiffeId,
    SpiffeIdError,
    trust_domain_from_bundle_key,
    validate_trust_domain,
)

PREFIX = "spiffe://example.org/"


@pytest.mark.parametrize(
    ("text", "trust_domain", "segments"),
    [
        ("spiffe://example.org/ns/a/sa/b", "example.org", ("ns", "a", "sa", "b")),
        ("spiffe://example.org/x", "example.org", ("x",)),
        ("spiffe://td/UPPER/Mixed.Case", "td", ("UPPER", "Mixed.Case")),
        ("spiffe://a-b_c.9/x.y-z_0", "a-b_c.9", ("x.y-z_0",)),
        ("spiffe://example.org/.../.a/a./..b", "example.org", ("...", ".a", "a.", "..b")),
        ("spiffe://1.2.3.4/x", "1.2.3.4", ("x",)),
        ("spiffe://example.org", "example.org", ()),
    ],
)
def test_valid_ids(text: str, trust_domain: str, segments: tuple[str, ...]) -> None:
    sid = SpiffeId.parse(text)
    assert sid.trust_domain == trust_domain
    assert sid.segments == segments
    assert sid.path == "".join(f"/{s}" for s in segments)
    assert str(sid) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad_scheme"),
        ("example.org/a", "bad_scheme"),
        ("http://example.org/a", "bad_scheme"),
        ("SPIFFE://example.org/a", "bad_scheme"),
        ("Spiffe://example.org/a", "bad_scheme"),
        ("spiffe:/example.org/a", "bad_scheme"),
        (" spiffe://example.org/a", "bad_scheme"),
        ("spiffe://", "empty_trust_domain"),
        ("spiffe:///a", "empty_trust_domain"),
        ("spiffe://Example.org/a", "bad_trust_domain_chars"),
        ("spiffe://EXAMPLE.ORG", "bad_trust_domain_chars"),
        ("spiffe://exa mple.org/a", "bad_trust_domain_chars"),
        ("spiffe://ex%41mple.org/a", "bad_trust_domain_chars"),
        ("spiffe://exämple.org/a", "bad_trust_domain_chars"),
        ("spiffe://example.org\\a", "bad_trust_domain_chars"),
        ("spiffe://exa\ud800mple.org/a", "bad_trust_domain_chars"),
        ("spiffe://example.org/a b", "bad_path_chars"),
        ("spiffe://example.org/a%20b", "bad_path_chars"),
        ("spiffe://example.org/%2e%2e", "bad_path_chars"),
        ("spiffe://example.org/ä", "bad_path_chars"),
        ("spiffe://example.org/a\n", "bad_path_chars"),
        ("spiffe://example.org/a\\b", "bad_path_chars"),
        ("spiffe://example.org/a*", "bad_path_chars"),
        ("spiffe://example.org/a\ud800", "bad_path_chars"),
        ("spiffe://example.org/.", "dot_segment"),
        ("spiffe://example.org/..", "dot_segment"),
        ("spiffe://example.org/a/./b", "dot_segment"),
        ("spiffe://example.org/a/../b", "dot_segment"),
        ("spiffe://example.org/a/..", "dot_segment"),
        ("spiffe://example.org//a", "empty_segment"),
        ("spiffe://example.org/a//b", "empty_segment"),
        ("spiffe://example.org/", "trailing_slash"),
        ("spiffe://example.org/a/", "trailing_slash"),
        ("spiffe://example.org/a?x=1", "has_query"),
        ("spiffe://example.org?x", "has_query"),
        ("spiffe://example.org/a#frag", "has_fragment"),
        ("spiffe://example.org#", "has_fragment"),
        ("spiffe://example.org:8443/a", "has_port"),
        ("spiffe://example.org:/a", "has_port"),
        ("spiffe://user@example.org/a", "has_userinfo"),
        ("spiffe://user:pw@example.org/a", "has_userinfo"),
    ],
)
def test_invalid_ids(text: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse(text)
    assert err.value.reason == reason
    assert err.value.status == 403


def test_non_string_is_a_spiffe_id_error() -> None:
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(b"spiffe://example.org/a")  # type: ignore[arg-type]


def test_exactly_max_bytes_is_accepted_one_more_is_rejected() -> None:
    longest = PREFIX + "a" * (MAX_ID_BYTES - len(PREFIX))
    assert len(longest.encode()) == MAX_ID_BYTES == 2048
    assert str(SpiffeId.parse(longest)) == longest
    many_segments = PREFIX + "/".join(["ab"] * 600)
    many_segments += "x" * (MAX_ID_BYTES - len(many_segments))
    assert len(SpiffeId.parse(many_segments).segments) == 600
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse(longest + "a")
    assert err.value.reason == "id_too_long"


def test_length_is_counted_in_bytes_not_characters() -> None:
    text = PREFIX + "é" * 1100  # 1121 characters, 2221 bytes
    assert len(text) < MAX_ID_BYTES < len(text.encode())
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse(text)
    assert err.value.reason == "id_too_long"


def test_trust_domain_length_limit() -> None:
    longest = "a" * MAX_TRUST_DOMAIN_BYTES
    assert SpiffeId.parse(f"spiffe://{longest}/x").trust_domain == longest
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse(f"spiffe://{longest}a/x")
    assert err.value.reason == "trust_domain_too_long"


def test_root_path_id_is_an_id_but_not_a_workload() -> None:
    sid = SpiffeId.parse("spiffe://example.org")
    assert (sid.trust_domain, sid.path, sid.segments) == ("example.org", "", ())
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse_workload("spiffe://example.org")
    assert err.value.reason == "root_path_id"
    assert SpiffeId.parse_workload("spiffe://example.org/w").path == "/w"


def test_parse_workload_applies_all_parse_rules() -> None:
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse_workload("spiffe://example.org/a/../b")
    assert err.value.reason == "dot_segment"


def test_ids_are_values() -> None:
    a = SpiffeId.parse("spiffe://example.org/a")
    assert a == SpiffeId.parse("spiffe://example.org/a")
    assert a != SpiffeId.parse("spiffe://example.org/A")
    assert len({a, SpiffeId.parse("spiffe://example.org/a")}) == 1


def test_error_message_does_not_echo_huge_input() -> None:
    with pytest.raises(SpiffeIdError) as err:
        SpiffeId.parse("http://" + "a" * 2000)
    assert len(err.value.message) < 300
    assert err.value.to_json()["error"] == "bad_scheme"


@pytest.mark.parametrize(
    ("key", "expected"),
    [("spiffe://example.org", "example.org"), ("example.org", "example.org"), ("a_b-c", "a_b-c")],
)
def test_bundle_keys(key: str, expected: str) -> None:
    assert trust_domain_from_bundle_key(key) == expected


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("spiffe://example.org/x", "bundle_key_has_path"),
        ("Example.org", "bad_trust_domain_chars"),
        ("spiffe://Example.org", "bad_trust_domain_chars"),
        ("", "empty_trust_domain"),
    ],
)
def test_bad_bundle_keys(key: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError) as err:
        trust_domain_from_bundle_key(key)
    assert err.value.reason == reason


def test_validate_trust_domain() -> None:
    assert validate_trust_domain("example.org") == "example.org"
    with pytest.raises(SpiffeIdError):
        validate_trust_domain("example.org/")


# -- properties ------------------------------------------------------------------------------------

TD_CHARS = string.ascii_lowercase + string.digits + ".-_"
SEGMENT_CHARS = string.ascii_letters + string.digits + ".-_"
trust_domains = st.text(alphabet=TD_CHARS, min_size=1, max_size=40)
segments = st.text(alphabet=SEGMENT_CHARS, min_size=1, max_size=12).filter(
    lambda s: s not in (".", "..")
)

# An independent statement of the grammar to compare the hand-written parser against.
SPEC = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*")


def spec_says_valid(text: str) -> bool:
    if not SPEC.fullmatch(text) or len(text.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return False
    trust_domain, _, path = text[len("spiffe://") :].partition("/")
    dot_segment = any(s in (".", "..") for s in path.split("/")) if path else False
    return len(trust_domain) <= MAX_TRUST_DOMAIN_BYTES and not dot_segment


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(trust_domains, st.lists(segments, max_size=8))
def test_valid_ids_round_trip(trust_domain: str, segs: list[str]) -> None:
    text = "spiffe://" + trust_domain + "".join(f"/{s}" for s in segs)
    sid = SpiffeId.parse(text)
    assert str(sid) == text
    assert sid.trust_domain == trust_domain
    assert sid.segments == tuple(segs)
    assert SpiffeId.parse(str(sid)) == sid


# Text over an alphabet rich in the characters that matter, often behind a valid prefix.
tricky = st.text(alphabet="spifex:/aZ09.-_%?#@ \\é*\x00\ud800", max_size=40)
anything = st.text(alphabet=st.characters(exclude_categories=()), max_size=40)


@settings(deadline=None)  # no timing in tests: the machine is shared
@given(st.one_of(tricky, anything, tricky.map(lambda t: "spiffe://" + t)))
@example("spiffe://a\ud800")
@example("spiffe://example.org/..")
def test_parse_agrees_with_the_spec_and_only_raises_spiffe_id_error(text: str) -> None:
    try:
        sid = SpiffeId.parse(text)
    except SpiffeIdError:
        assert not spec_says_valid(text)
    else:
        assert spec_says_valid(text)
        assert str(sid) == text
