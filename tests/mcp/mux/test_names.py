"""Names and resource URIs of a multiplexed endpoint carry their target, per prefix mode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.mcp.mux.names import Naming, target_name_problem

TWO = ("math", "clock")


def test_prefix_modes() -> None:
    assert Naming(TWO, "multiple").prefixed
    assert not Naming(("math",), "multiple").prefixed
    assert Naming(("math",), "always").prefixed
    assert not Naming(TWO, "never").prefixed
    assert Naming(TWO, "never").needs_owner_table
    assert not Naming(("math",), "never").needs_owner_table


def test_prefixed_names_split_at_the_first_separator() -> None:
    naming = Naming(TWO, "multiple")
    assert naming.public_name("math", "add") == "math__add"
    assert naming.split_name("math__add") == ("math", "add")
    assert naming.split_name("math__a__b") == ("math", "a__b")
    assert naming.public_name("math", "a__b") == "math__a__b"
    for unroutable in ("add", "paint__add", "math__", "__add", "math_add", "MATH__add"):
        assert naming.split_name(unroutable) is None, unroutable


@given(target=st.sampled_from(TWO), name=st.text(min_size=1))
def test_every_name_round_trips(target: str, name: str) -> None:
    naming = Naming(TWO, "always")
    assert naming.split_name(naming.public_name(target, name)) == (target, name)


def test_unprefixed_names() -> None:
    assert Naming(("math",), "multiple").split_name("add") == ("math", "add")
    assert Naming(TWO, "never").split_name("add") is None  # the owner table decides
    assert Naming(TWO, "never").public_name("math", "add") == "add"


def test_resource_uris_carry_their_target_with_several_targets_even_never() -> None:
    for mode in ("multiple", "never", "always"):
        naming = Naming(TWO, mode)
        public = naming.public_uri("clock", "file:///tmp/a.txt")
        assert public == "clock+file:///tmp/a.txt"
        assert naming.split_uri(public) == ("clock", "file:///tmp/a.txt")
        assert naming.split_uri("CLOCK+urn:x") == ("clock", "urn:x")
    single = Naming(("math",), "multiple")
    assert single.public_uri("math", "file:///a") == "file:///a"
    assert single.split_uri("file:///a") == ("math", "file:///a")


@pytest.mark.parametrize(
    "uri",
    ["file:///a", "paint+file:///a", "math+", "math+/relative", "+file:///a", "relative/path"],
)
def test_uris_that_name_no_target(uri: str) -> None:
    assert Naming(TWO, "multiple").split_uri(uri) is None


def test_uris_without_scheme_are_left_alone() -> None:
    assert Naming(TWO, "multiple").public_uri("math", "relative/x") == "relative/x"


def test_target_names() -> None:
    assert target_name_problem("math") is None
    assert target_name_problem("math-2") is None
    problem = target_name_problem("my__math")
    assert problem is not None and "'_'" in problem
    for bad in ("Math", "2math", "-math", "", "m" * 33, "ma th", "mäth"):
        assert target_name_problem(bad) is not None, bad
