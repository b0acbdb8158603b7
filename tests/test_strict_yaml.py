"""The one YAML loader: duplicate keys refused with both lines, problems located, the two
dialects (our files: YAML 1.2 booleans; Kubernetes manifests: as Kubernetes reads them)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from sidecar.errors import ConfigError, ConfigErrors, problem_detail
from sidecar.strict_yaml import load_documents, parse_document, parse_file


def identity(data: object) -> object:
    return data


def problems(call: object) -> list[tuple[str, str]]:
    assert callable(call)
    with pytest.raises(ConfigErrors) as caught:
        call()
    return [(p.path, problem_detail(p)) for p in caught.value.problems]


def test_our_files_have_yaml_1_2_booleans_and_keep_timestamps() -> None:
    data = parse_document(
        "a: yes\nb: on\nc: true\nd: FALSE\ne: 2026-01-01T00:00:00Z\n", identity, source="x"
    )
    assert data == {
        "a": "yes",
        "b": "on",
        "c": True,
        "d": False,
        "e": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    }


def test_manifests_read_booleans_as_kubernetes_does_and_keep_timestamps_as_text() -> None:
    documents = load_documents(
        "a: yes\nb: off\nt: 2026-01-01T00:00:00Z\n---\n---\nc: 1\n", source="m.yaml"
    )
    assert documents == [{"a": True, "b": False, "t": "2026-01-01T00:00:00Z"}, {"c": 1}]


def test_duplicate_keys_are_refused_in_every_dialect() -> None:
    text = "kind: Pod\nmetadata:\n  name: a\n  labels: {x: '1'}\n  name: b\n"
    assert problems(lambda: parse_document(text, identity, source="c.yaml")) == [
        (
            "metadata.name",
            "duplicate key (first at line 3, again at line 5); a security config must not be "
            "ambiguous",
        )
    ]
    found = problems(lambda: load_documents("a: 1\n---\n" + text, source="m.yaml"))
    assert found == [
        (
            "document 2.metadata.name",
            "duplicate key (first at line 5, again at line 7); a security config must not be "
            "ambiguous",
        )
    ]


def test_merge_keys_are_not_duplicates() -> None:
    text = "base: &b {x: 1, y: 2}\nmore:\n  <<: *b\n  y: 3\n"
    assert parse_document(text, identity, source="c.yaml") == {
        "base": {"x": 1, "y": 2},
        "more": {"x": 1, "y": 3},
    }


def test_syntax_errors_name_the_source_and_the_line() -> None:
    for call in (
        lambda: parse_document("a: [\n", identity, source="c.yaml"),
        lambda: load_documents("a: 1\n---\nb: [\n", source="c.yaml"),
    ):
        ((path, message),) = problems(call)
        assert path == "c.yaml"
        assert message.startswith("invalid YAML at line")
    ((path, message),) = problems(lambda: parse_document(b"a: \xff\n", identity, source="c"))
    assert (path, message.split(":")[0]) == ("c", "invalid YAML")


def test_problems_of_the_parser_carry_their_line_once() -> None:
    def parse(data: object) -> object:
        raise ConfigErrors(
            [
                ConfigError("root.b", "bad"),
                ConfigError("root.a", "in another file (line 9)"),  # located already
                ConfigError("root.zzz", "not in the document"),
            ]
        )

    found = problems(lambda: parse_document("a: 1\nb: 2\n", parse, source="s", root="root"))
    assert found == [
        ("root.b", "bad (line 2)"),
        ("root.a", "in another file (line 9)"),
        ("root.zzz", "not in the document"),
    ]


def test_a_file_is_read_and_named(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\na: 2\n")

    def parse(data: object, source: str) -> object:
        return data

    assert problems(lambda: parse_file(path, parse)) == [
        (
            f"{path}.a",
            "duplicate key (first at line 1, again at line 2); a security config must not be "
            "ambiguous",
        )
    ]
    ((where, message),) = problems(lambda: parse_file(tmp_path / "none.yaml", parse))
    assert where == str(tmp_path / "none.yaml")
    assert message == "cannot read the file: No such file or directory"
