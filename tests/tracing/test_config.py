"""The ``tracing:`` section: every key, its checks, and the problems' key paths."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.errors import ConfigErrors
from sidecar.tracing.config import TRACING_KEYS, TracingConfig

BASE: dict[str, Any] = {
    "trust_domain": "example.org",
    "outbound": {
        "listen": "127.0.0.1:15001",
        "routes": [
            {
                "name": "math",
                "upstream": "https://math:8443",
                "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/math",
            }
        ],
    },
}


def tracing(section: object) -> TracingConfig:
    return parse_config({**BASE, "tracing": section}).tracing


def problems(section: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigErrors) as caught:
        parse_config({**BASE, "tracing": section})
    return [(p.path, p.message) for p in caught.value.problems]


def test_absent_or_empty_is_all_from_the_environment() -> None:
    assert parse_config(BASE).tracing == TracingConfig()
    assert tracing(None) == TracingConfig()


def test_every_key() -> None:
    config = tracing(
        {
            "enabled": True,
            "exporter": "console",
            "endpoint": "https://collector.example:4318",
            "service_name": "math-sidecar",
            "resource_attributes": {"deployment.environment.name": "prod"},
            "sampler": "ParentBased_TraceIdRatio",
            "sampler_arg": 0.25,
            "max_queue_size": 100,
        }
    )
    assert config.enabled is True and config.exporter == "console"
    assert config.endpoint == "https://collector.example:4318/v1/traces"  # path appended
    assert config.service_name == "math-sidecar"
    assert dict(config.resource_attributes) == {"deployment.environment.name": "prod"}
    assert (config.sampler, config.sampler_arg) == ("parentbased_traceidratio", 0.25)
    assert config.max_queue_size == 100
    assert (
        tracing({"endpoint": "http://c:4318/custom/path"}).endpoint == "http://c:4318/custom/path"
    )


@pytest.mark.parametrize(
    ("section", "path", "fragment"),
    [
        ({"enabled": "yes"}, "tracing.enabled", "true or false"),
        ({"exporter": "zipkin"}, "tracing.exporter", "expected 'otlp' or 'console'"),
        ({"endpoint": "collector:4318"}, "tracing.endpoint", "http:// or https://"),
        ({"endpoint": "http://u:p@c:4318"}, "tracing.endpoint", "user info"),
        ({"endpoint": "http://c:99999"}, "tracing.endpoint", "not a valid URL"),
        ({"service_name": ""}, "tracing.service_name", "non-empty"),
        ({"resource_attributes": {"k": 1}}, "tracing.resource_attributes.k", "quote numbers"),
        ({"resource_attributes": ["k"]}, "tracing.resource_attributes", "mapping"),
        ({"sampler": "jaeger_remote"}, "tracing.sampler", "parentbased_always_on"),
        ({"sampler_arg": 1.5}, "tracing.sampler_arg", "from 0 to 1"),
        ({"sampler_arg": "0.5"}, "tracing.sampler_arg", "a number"),
        (
            {"sampler": "always_on", "sampler_arg": 0.5},
            "tracing.sampler_arg",
            "only with sampler traceidratio",
        ),
        ({"max_queue_size": 0}, "tracing.max_queue_size", "1 to 1000000"),
        ({"max_queue_size": True}, "tracing.max_queue_size", "1 to 1000000"),
        ({"max_queue": 10}, "tracing.max_queue", "did you mean 'max_queue_size'"),
        ("on", "tracing", "expected a mapping"),
    ],
)
def test_bad_values_name_their_key(section: object, path: str, fragment: str) -> None:
    found = problems(section)
    assert [p for p, _ in found] == [path]
    assert fragment in found[0][1]


def test_every_problem_is_reported() -> None:
    paths = [p for p, _ in problems({"enabled": 1, "sampler": "x", "max_queue_size": -1})]
    assert paths == ["tracing.enabled", "tracing.sampler", "tracing.max_queue_size"]


def test_every_key_is_documented() -> None:
    from tests.test_config import DOCS

    docs = DOCS.read_text()
    section = docs[docs.index("### `tracing`") :]
    for key in TRACING_KEYS:
        assert f"| `{key}` |" in section, key
