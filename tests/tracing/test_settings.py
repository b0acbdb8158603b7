"""``tracing:`` over the ``OTEL_*`` environment over the defaults (pure, no SDK)."""

from __future__ import annotations

import pytest

from sidecar.errors import ConfigError
from sidecar.tracing.config import TracingConfig
from sidecar.tracing.settings import DEFAULT_ENDPOINT, resolve, tracing_requested

OFF = TracingConfig()


@pytest.mark.parametrize(
    ("config", "env", "on"),
    [
        (OFF, {}, False),
        (OFF, {"OTEL_SERVICE_NAME": "x"}, False),  # naming a service asks for no traces
        (OFF, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        (OFF, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        (OFF, {"OTEL_TRACES_EXPORTER": "console"}, True),
        (OFF, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        (OFF, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
        (TracingConfig(enabled=True), {"OTEL_SDK_DISABLED": "true"}, True),  # the file wins
        (TracingConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, False),
    ],
)
def test_when_tracing_is_on(config: TracingConfig, env: dict[str, str], on: bool) -> None:
    assert tracing_requested(config, env) is on
    assert (resolve(config, env) is not None) is on


def test_defaults() -> None:
    settings = resolve(TracingConfig(enabled=True), {})
    assert settings is not None
    assert settings.exporter == "otlp" and settings.endpoint == DEFAULT_ENDPOINT
    assert settings.sampler == "parentbased_always_on" and settings.sampler_arg == 1.0
    assert settings.max_queue_size == 2048 and settings.service_name is None


def test_the_environment_fills_what_the_file_leaves_out() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
        "OTEL_TRACES_SAMPLER": "traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_BSP_MAX_QUEUE_SIZE": "64",
        "OTEL_TRACES_EXPORTER": "otlp_proto_http",
    }
    settings = resolve(OFF, env)
    assert settings is not None
    assert settings.endpoint == "http://collector:4318/v1/traces"
    assert (settings.sampler, settings.sampler_arg) == ("traceidratio", 0.1)
    assert (settings.service_name, settings.max_queue_size) == ("from-env", 64)
    signal = resolve(OFF, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"})
    assert signal is not None and signal.endpoint == "http://c:4318/custom"  # used as is
    config = TracingConfig(
        endpoint="http://mine:4318/v1/traces", sampler="always_off", service_name="mine"
    )
    mine = resolve(config, env)
    assert mine is not None
    assert (mine.endpoint, mine.sampler, mine.service_name) == (
        "http://mine:4318/v1/traces",
        "always_off",
        "mine",
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_SAMPLER": "xray"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-3"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
    ],
)
def test_a_bad_variable_is_refused_by_name(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(TracingConfig(enabled=True), env)
    assert caught.value.path == variable
