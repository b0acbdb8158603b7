"""The key machinery on a toy section: one definition gives the reader, defaults, required
keys, "did you mean" and the pointer to the right section."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sidecar.errors import ConfigError, ConfigErrors, problem_detail
from sidecar.schema import (
    BOOLEAN,
    NO_DEFAULT,
    ROOT,
    Schema,
    Section,
    choice,
    key,
    keys_of,
    list_of,
    non_empty_string,
    parse_each,
    parse_items,
    read,
    repeated,
    whole_number,
)


@dataclass(frozen=True, kw_only=True)
class Pump:
    name: str = key(non_empty_string("p1"), "Its name.", required="a name, e.g. p1")
    speed: int = key(whole_number(1, 9), "How fast.", default=3)
    mode: str = key(choice("on", "off", fold=str.lower), "Whether.", default="off")
    tags: tuple[str, ...] = key(
        list_of(non_empty_string("t"), "tags", empty="must not be empty ({like})"),
        "Labels.",
        default=(),
    )
    quiet: bool = key(BOOLEAN, "Hush.", default=False, name="silent")
    derived: int = 0


PUMP = Section("pumps[]", keys_of(Pump))
VALVE = Section("valve", keys_of(Pump, "speed"))
SCHEMA = Schema({"pumps[]": PUMP, "valve": VALVE})


def pump(value: object) -> Pump:
    return read(PUMP, value, "pumps[0]", schema=SCHEMA).build(Pump, derived=7)


def problems(value: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as caught:
        pump(value)
    return [(p.path, problem_detail(p)) for p in caught.value.problems]


def test_keys_come_from_the_fields() -> None:
    assert PUMP.names == ("name", "speed", "mode", "tags", "silent")
    assert PUMP.key("silent").attr == "quiet"
    assert PUMP.key("name").default is NO_DEFAULT
    assert PUMP.key("speed").default == 3
    assert VALVE.names == ("speed",)


def test_absent_keys_take_the_dataclass_defaults() -> None:
    assert pump({"name": "p1"}) == Pump(name="p1", derived=7)
    assert pump({"name": "p1", "speed": 9, "mode": "ON", "tags": ["a", "a"], "silent": True}) == (
        Pump(name="p1", speed=9, mode="on", tags=("a",), quiet=True, derived=7)
    )


def test_every_problem_is_named_by_its_key() -> None:
    found = problems({"speed": 0, "mode": "of", "tags": [], "silent": "yes", 3: 1})
    assert found == [
        ("pumps[0]", "keys must be strings, got integer 3"),
        ("pumps[0].name", "required (a name, e.g. p1)"),
        ("pumps[0].speed", "must be from 1 to 9 (got 0)"),
        ("pumps[0].mode", "expected 'on' or 'off', got string 'of'; did you mean 'off'?"),
        ("pumps[0].tags", "must not be empty (tags)"),
        (
            "pumps[0].silent",
            "expected true or false, got string 'yes' (write true or false; yes/no/on/off are "
            "strings in this file)",
        ),
    ]


def test_unknown_keys_get_a_suggestion_or_their_home() -> None:
    assert problems({"name": "p", "sped": 1}) == [
        ("pumps[0].sped", "unknown key 'sped'; did you mean 'speed'?")
    ]
    assert problems({"name": "p", "colour": 1}) == [
        (
            "pumps[0].colour",
            "unknown key 'colour'; expected one of: name, speed, mode, tags, silent",
        )
    ]
    found = read(VALVE, {"name": "v"}, "valve", schema=SCHEMA).problems.items
    assert [str(p) for p in found] == [
        "valve.name: unknown key 'name'; it belongs under 'pumps[i]'"
    ]


def test_not_a_mapping_stops_there_and_none_is_empty() -> None:
    assert problems(["name"]) == [
        ("pumps[0]", "expected a mapping with keys name, speed, mode, tags, silent; got list")
    ]
    assert problems(None) == [("pumps[0].name", "required (a name, e.g. p1)")]
    with pytest.raises(ConfigErrors) as caught:
        read(PUMP, None, "", none_ok=False)
    assert caught.value.problems[0].path == ROOT


def test_a_section_refuses_two_keys_of_one_name() -> None:
    with pytest.raises(AssertionError):
        Section("twice", (*keys_of(Pump, "speed"), *keys_of(Pump, "speed")))


def test_list_items_are_parsed_each_named_by_index_and_repeats_point_at_the_first() -> None:
    problems: list[ConfigError] = []
    parse = whole_number(1, 9).parse
    parsed = parse_items([3, "x", 3, 0, 5], "speeds", parse, problems)
    assert parsed == [(0, 3), (2, 3), (4, 5)]
    assert [p.path for p in problems] == ["speeds[1]", "speeds[3]"]
    assert list(repeated(parsed, lambda speed: speed)) == [(2, 3, 0)]
    assert parse_each([3, "x"], "speeds", parse, []) is None
    assert parse_each([3, 5, 3], "speeds", parse, []) == (3, 5)
