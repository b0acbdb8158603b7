"""What tracing does in this process: the ``tracing:`` section over the standard ``OTEL_*``
environment variables over the defaults, resolved once at start-up (pure: the environment is
passed in). A bad environment value is a ``ConfigError`` naming the variable, like a bad key."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from sidecar.errors import ConfigError
from sidecar.tracing.config import (
    EXPORTERS,
    RATIO_SAMPLERS,
    TRACES_PATH,
    Exporter,
    TracingConfig,
    http_url,
    queue_size,
    sampler_name,
    sampler_ratio,
    traces_url,
)

DEFAULT_ENDPOINT = "http://localhost:4318" + TRACES_PATH
DEFAULT_SERVICE_NAME = "mcp-sidecar"
DEFAULT_SAMPLER = "parentbased_always_on"
DEFAULT_QUEUE_SIZE = 2048
_T = TypeVar("_T")
# OTEL_TRACES_EXPORTER names the Python SDK registers for what we support
_EXPORTER_NAMES: Mapping[str, Exporter] = {
    "otlp": "otlp",
    "otlp_proto_http": "otlp",
    "console": "console",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSettings:
    """Tracing is on; everything it needs, resolved."""

    exporter: Exporter
    endpoint: str
    """The OTLP/HTTP traces URL (unused by the console exporter)."""
    service_name: str | None
    """``None``: from ``OTEL_RESOURCE_ATTRIBUTES``' ``service.name``, else ``mcp-sidecar``."""
    resource_attributes: Mapping[str, str]
    sampler: str
    sampler_arg: float
    max_queue_size: int

    def describe(self) -> str:
        where = self.endpoint if self.exporter == "otlp" else "stdout"
        ratio = f" ({self.sampler_arg:g})" if self.sampler in RATIO_SAMPLERS else ""
        return f"{self.exporter} to {where}, sampler {self.sampler}{ratio}"


def _true(text: str | None) -> bool:
    return (text or "").strip().lower() == "true"


def tracing_requested(config: TracingConfig, env: Mapping[str, str]) -> bool:
    """``tracing.enabled`` if set; otherwise on when the environment asks for a trace exporter
    (``OTEL_TRACES_EXPORTER`` other than ``none``, or an OTLP endpoint) and
    ``OTEL_SDK_DISABLED`` is not ``true``."""
    if config.enabled is not None:
        return config.enabled
    if _true(env.get("OTEL_SDK_DISABLED")):
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def resolve(config: TracingConfig, env: Mapping[str, str]) -> TraceSettings | None:
    """``None`` when tracing is off."""
    if not tracing_requested(config, env):
        return None
    exporter = config.exporter or _env_exporter(env)
    endpoint = config.endpoint or _env_endpoint(env)
    sampler = config.sampler or _from_env(env, "OTEL_TRACES_SAMPLER", sampler_name)
    ratio = config.sampler_arg
    if ratio is None and sampler in RATIO_SAMPLERS:
        ratio = _from_env(env, "OTEL_TRACES_SAMPLER_ARG", sampler_ratio)
    queue = config.max_queue_size or _from_env(env, "OTEL_BSP_MAX_QUEUE_SIZE", queue_size)
    return TraceSettings(
        exporter=exporter,
        endpoint=endpoint,
        service_name=config.service_name or env.get("OTEL_SERVICE_NAME") or None,
        resource_attributes=MappingProxyType(dict(config.resource_attributes)),
        sampler=sampler or DEFAULT_SAMPLER,
        sampler_arg=1.0 if ratio is None else ratio,
        max_queue_size=queue or DEFAULT_QUEUE_SIZE,
    )


def _from_env(env: Mapping[str, str], name: str, parse: Callable[[object, str], _T]) -> _T | None:
    value = env.get(name, "").strip()
    return parse(value, name) if value else None


def _env_exporter(env: Mapping[str, str]) -> Exporter:
    value = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not value:
        return "otlp"
    if value not in _EXPORTER_NAMES:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER",
            f"this sidecar exports traces with {' or '.join(EXPORTERS)}, got {value!r}",
        )
    return _EXPORTER_NAMES[value]


def _env_endpoint(env: Mapping[str, str]) -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is the whole URL; ``OTEL_EXPORTER_OTLP_ENDPOINT``
    the base that ``/v1/traces`` is appended to (the OTLP exporter specification)."""
    signal = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if signal:
        return http_url(signal, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")  # used as it is
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if base:
        return traces_url(base.rstrip("/") + TRACES_PATH, "OTEL_EXPORTER_OTLP_ENDPOINT")
    return DEFAULT_ENDPOINT
