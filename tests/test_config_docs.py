"""The docs derived from the key definitions are current, and the JSON Schema for editors
accepts every example we publish and refuses what the parser refuses."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sidecar import config_docs, strict_yaml
from sidecar.config import TOP, parse_config
from sidecar.errors import ConfigErrors
from sidecar.mcp.policy import POLICY_SECTION, parse_policy
from sidecar.schema import all_sections

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DEPLOYED = sorted((ROOT / "deploy").rglob("sidecar.yaml"))
"""The sidecar configurations of the Kubernetes manifests (each a ConfigMap's file)."""


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


CONFIG = validator("config.schema.json")
POLICY = validator("policy.schema.json")


def load(text: str, source: str) -> Any:
    return strict_yaml.parse_document(text, lambda data: data, source=source)


def is_policy_file(data: Any) -> bool:
    return isinstance(data, dict) and "default" in data and "trust_domain" not in data


def errors(schema: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in schema.iter_errors(data)]


# ----------------------------------------------------------------------------------- current


def test_generated_docs_are_current() -> None:
    stale = [
        path.name
        for path, text in config_docs.generated(DOCS).items()
        if path.read_text("utf-8") != text
    ]
    assert stale == [], "stale, run: make docs"


def test_check_finds_a_stale_table_and_the_command_rewrites_it(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    assert config_docs.main(["--check", "--docs", str(docs)]) == 0
    text = (docs / "configuration.md").read_text()
    edited = text.replace("| `drain_timeout` | duration | `10s` |", "| `drain_timeout` | x | y |")
    assert edited != text
    (docs / "configuration.md").write_text(edited)
    (docs / "policy.schema.json").unlink()
    assert config_docs.main(["--check", "--docs", str(docs)]) == 1
    assert config_docs.main(["--docs", str(docs)]) == 0
    assert (docs / "configuration.md").read_text() == text
    assert config_docs.main(["--check", "--docs", str(docs)]) == 0


def test_every_section_has_a_table_and_every_table_a_marker() -> None:
    tabled = {id(section) for sections in config_docs.TABLES.values() for section in sections}
    missing = [s.name for s in all_sections([TOP]) if id(s) not in tabled]
    assert missing == []
    text = CONFIGURATION.read_text()
    with pytest.raises(ValueError, match="no <!-- keys:NAME --> marker for: log"):
        config_docs.render(text.replace("<!-- keys:log -->", "<!-- log -->"))
    with pytest.raises(KeyError):
        config_docs.render(text.replace("<!-- keys:log -->", "<!-- keys:logs -->"))


def test_a_table_row_says_what_the_key_definition_says() -> None:
    text = CONFIGURATION.read_text()
    assert "| `idle_timeout` | duration > 0 | `1m` | Longest silence from upstream" in text
    assert "| `upstream` | string | **required** unless `targets` |" in text
    assert "| `mtls` | `required` \\| `off` | `required` |" in text
    assert "| `spiffe_ids` | list of SPIFFE ID patterns | The mTLS peer's" in text  # no default


# ------------------------------------------------------------------------------- JSON Schema


@pytest.mark.parametrize(
    "path", EXAMPLES + DEPLOYED, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES + DEPLOYED]
)
def test_examples_and_deployed_configs_validate(path: Path) -> None:
    data = load(path.read_text(), path.name)
    schema = POLICY if is_policy_file(data) else CONFIG
    assert errors(schema, data) == []
    if schema is CONFIG:  # and what the editor accepts, the sidecar accepts too
        parse_config(data)


def test_there_are_examples_and_deployed_configs() -> None:
    assert len(EXAMPLES) >= 4 and len(DEPLOYED) >= 5


def test_the_docs_yaml_blocks_validate() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", CONFIGURATION.read_text(), re.DOTALL)
    policies = configs = 0
    for block in blocks:
        data = load(block, "docs/configuration.md")
        if is_policy_file(data):
            policies += 1
            assert errors(POLICY, data) == [], block
        else:
            configs += 1
            assert errors(CONFIG, data) == [], block
    assert policies >= 1 and configs >= 5


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"inbound": {"listen": "0.0.0.0:8443"}}, "'trust_domain' is a required property"),
        ({"trust_domain": "example.org", "inbound": {"listne": "x"}}, "'listne' was unexpected"),
        ({"trust_domain": "example.org", "log": {"level": "loud"}}, "is not one of"),
        ({"trust_domain": "example.org", "shutdown": {"drain_timeout": "-1s"}}, "does not match"),
        ({"trust_domain": "spiffe://example.org"}, "does not match"),
        (
            {"trust_domain": "example.org", "outbound": {"routes": [{"name": "m", "sni": 5}]}},
            "5 is not of type 'string'",
        ),
        (
            {
                "trust_domain": "example.org",
                "inbound": {"mcp_policy": {"default": "deny", "rules": [{"tool": ["x"]}]}},
            },
            "is not valid under any of the given schemas",
        ),
        (
            {"trust_domain": "example.org", "inbound": {"circuit_breakers": {"max_requests": 0}}},
            "0 is less than the minimum of 1",
        ),
        ({"trust_domain": "example.org", "tracing": {"enabled": "yes"}}, "is not of type"),
    ],
)
def test_the_schema_refuses_what_the_parser_refuses(data: Any, expected: str) -> None:
    found = errors(CONFIG, data)
    assert any(expected in error for error in found), found
    with pytest.raises(ConfigErrors):
        parse_config(data)


def test_the_policy_schema_is_the_inline_policy_of_the_config_schema() -> None:
    policy = json.loads((DOCS / "policy.schema.json").read_text())
    whole = json.loads((DOCS / "config.schema.json").read_text())
    assert policy["properties"] == whole["$defs"]["inbound_mcp_policy"]["properties"]
    assert policy["required"] == ["default"]
    bad = {"default": "maybe", "rules": [{"name": "a", "effect": "allow", "when": {"rols": []}}]}
    assert len(errors(POLICY, bad)) == 2
    with pytest.raises(ConfigErrors):
        parse_policy(bad)


def test_every_key_has_a_description_and_every_section_a_definition() -> None:
    whole = json.loads((DOCS / "config.schema.json").read_text())
    sections = all_sections([TOP])
    assert len(whole["$defs"]) == len(sections) - 1  # the top level is the root
    for name, definition in [("", whole), *whole["$defs"].items()]:
        for key, prop in definition["properties"].items():
            assert prop["description"].strip(), f"{name}.{key}"
    assert POLICY_SECTION in sections
