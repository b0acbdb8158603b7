"""The ``tracing:`` section of the configuration (pure; every key defined once, below, and so
documented in docs/configuration.md). A key left out means "as the standard ``OTEL_*``
environment variable says, else the SDK default"; ``settings.resolve`` combines the two at
start-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from sidecar.errors import ConfigError, ConfigErrors
from sidecar.schema import (
    BOOLEAN,
    Section,
    Value,
    choice,
    got,
    join,
    key,
    keys_of,
    read,
    section_value,
    short,
    whole_number,
)

Exporter = Literal["otlp", "console"]
EXPORTERS: tuple[Exporter, ...] = ("otlp", "console")
SAMPLERS = (
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
)
"""The samplers of the OpenTelemetry specification (``OTEL_TRACES_SAMPLER`` values)."""
RATIO_SAMPLERS = frozenset({"traceidratio", "parentbased_traceidratio"})
MAX_QUEUE_SIZE = 1_000_000
TRACES_PATH = "/v1/traces"
_T = TypeVar("_T")


def traces_url(value: object, path: str) -> str:
    """An OTLP/HTTP traces URL: ``http(s)://host[:port]/path``; a URL without a path (or with
    ``/``) gets ``/v1/traces``, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` does."""
    url = http_url(value, path)
    return url.rstrip("/") + TRACES_PATH if urlsplit(url).path in ("", "/") else url


def http_url(value: object, path: str) -> str:
    """An ``http(s)://`` URL, checked and returned unchanged."""
    like = "http://otel-collector:4318/v1/traces"
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a URL like {like}, got {got(value)}")
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(path, f"not a valid URL ({exc}): {short(value)}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            path, f"expected an http:// or https:// URL like {like}, got {short(value)}"
        )
    if url.username is not None or url.password is not None or url.fragment:
        raise ConfigError(
            path,
            "must not contain user info or a fragment (headers go in OTEL_EXPORTER_OTLP_HEADERS)",
        )
    if not value.isascii() or any(c.isspace() for c in value):
        raise ConfigError(path, f"must be printable ASCII without spaces, got {short(value)}")
    return value


def sampler_name(value: object, path: str) -> str:
    if isinstance(value, str) and value.strip().lower() in SAMPLERS:
        return value.strip().lower()
    raise ConfigError(path, f"expected one of {', '.join(SAMPLERS)}; got {got(value)}")


def sampler_ratio(value: object, path: str) -> float:
    if isinstance(value, str):
        text = value
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(path, f"expected a number from 0 to 1, got {short(text)}") from None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and 0.0 <= value <= 1.0)
    ):
        raise ConfigError(path, f"expected a number from 0 to 1, got {got(value)}")
    return float(value)


QUEUE_SIZE = whole_number(1, MAX_QUEUE_SIZE, label=f"integer 1..{MAX_QUEUE_SIZE}")


def queue_size(value: object, path: str) -> int:
    """``OTEL_BSP_MAX_QUEUE_SIZE`` (digits) or the key's value."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    return QUEUE_SIZE.parse(value, path)


def _service_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"expected a non-empty string, got {got(value)}")
    return value


def _number_only(parse: Callable[[object, str], _T]) -> Callable[[object, str], _T]:
    """In the file a number is a YAML number (the parsers also read environment strings)."""

    def strict(value: object, path: str) -> _T:
        if isinstance(value, str):
            raise ConfigError(path, f"expected a number, got {got(value)}")
        return parse(value, path)

    return strict


def _attributes(value: object, path: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            path, f"expected a mapping of attribute names to strings, got {got(value)}"
        )
    problems: list[ConfigError] = []
    result: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            problems.append(
                ConfigError(path, f"attribute names must be non-empty strings, got {got(name)}")
            )
        elif not isinstance(item, str):
            problems.append(
                ConfigError(join(path, name), f"expected a string (quote numbers), got {got(item)}")
            )
        else:
            result[name] = item
    if problems:
        raise ConfigErrors(problems)
    return MappingProxyType(result)


_FROM_ENVIRONMENT = "from the environment"


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """``tracing``; ``None`` = from the environment (``OTEL_*``) or the SDK's default."""

    enabled: bool | None = key(
        BOOLEAN,
        "`true`: trace (a start-up error if the `tracing` extra is missing). `false`: never "
        "trace, whatever the environment says. Absent: trace when the environment asks for it "
        "— `OTEL_TRACES_EXPORTER` set to anything but `none`, or "
        "`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set — and "
        "`OTEL_SDK_DISABLED` is not `true` (without the extra, a warning and no traces).",
        default=None,
        shown=_FROM_ENVIRONMENT,
    )
    exporter: Exporter | None = key(
        choice(*EXPORTERS),
        "`otlp`: OTLP over HTTP (protobuf) to `endpoint`. `console`: each span as JSON on "
        "stdout (debugging).",
        default=None,
        shown="`$OTEL_TRACES_EXPORTER`, else `otlp`",
    )
    endpoint: str | None = key(
        Value(traces_url, "URL", {"type": "string", "pattern": "^[Hh][Tt][Tt][Pp][Ss]?://"}),
        "Where spans are sent: `http://` or `https://`, e.g. "
        "`http://otel-collector.observability:4318/v1/traces`. A URL without a path "
        "(`http://collector:4318`) gets `/v1/traces`. No user info or fragment.",
        default=None,
        shown="`$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (as is), else "
        "`$OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, else `http://localhost:4318/v1/traces`",
    )
    service_name: str | None = key(
        Value(_service_name, "string", {"type": "string", "minLength": 1}),
        "The `service.name` resource attribute: how the sidecar appears in the tracing backend.",
        default=None,
        shown="`$OTEL_SERVICE_NAME`, else `service.name` of `$OTEL_RESOURCE_ATTRIBUTES`, else "
        "`mcp-sidecar`",
    )
    resource_attributes: Mapping[str, str] = key(
        Value(
            _attributes,
            "mapping of string to string",
            {"type": "object", "additionalProperties": {"type": "string"}},
        ),
        "Resource attributes added to (and overriding) `$OTEL_RESOURCE_ATTRIBUTES`, e.g. "
        "`{deployment.environment.name: prod, k8s.pod.name: math-0}`. Values are strings "
        "(quote numbers). `service.version` is the sidecar's version.",
        default_factory=lambda: MappingProxyType({}),
        shown="`{}`",
    )
    sampler: str | None = key(
        Value(
            sampler_name,
            " | ".join(f"`{name}`" for name in SAMPLERS),
            {"anyOf": [{"enum": list(SAMPLERS)}, {"type": "string"}]},  # case-insensitive
        ),
        "Which requests are recorded. The `parentbased_*` samplers follow the caller's "
        "decision (the sampled flag of its `traceparent`) and apply the named rule only to "
        "requests that start a trace; keep one of them so that every hop of a trace is "
        "recorded or none.",
        default=None,
        shown="`$OTEL_TRACES_SAMPLER`, else `parentbased_always_on`",
    )
    sampler_arg: float | None = key(
        Value(
            _number_only(sampler_ratio),
            "number 0..1",
            {"type": "number", "minimum": 0, "maximum": 1},
        ),
        "The ratio of the `*traceidratio` samplers (`0.1`: one trace in ten); only with one "
        "of them.",
        default=None,
        shown="`$OTEL_TRACES_SAMPLER_ARG`, else `1.0`",
    )
    max_queue_size: int | None = key(
        QUEUE_SIZE.but(_number_only(queue_size)),
        "Spans held for export at most. A span that finds the queue full is dropped and "
        'counted in `mcp_sidecar_trace_spans_dropped_total{reason="queue_full"}`: a collector '
        "that is down or slow never blocks or fails a request.",
        default=None,
        shown="`$OTEL_BSP_MAX_QUEUE_SIZE`, else `2048`",
    )


TRACING_SECTION = Section("tracing", keys_of(TracingConfig))
TRACING_KEYS = TRACING_SECTION.names


def parse_tracing(data: object, path: str = "tracing") -> TracingConfig:
    """Validate the ``tracing`` mapping; raises ``ConfigErrors`` listing every problem by key
    path. ``None`` (an empty section) is all defaults."""
    f = read(TRACING_SECTION, data, path)
    values = f.values(TracingConfig)
    sampler = values.get("sampler")
    if "sampler_arg" in f and sampler is not None and sampler not in RATIO_SAMPLERS:
        f.error(
            f"only with sampler traceidratio or parentbased_traceidratio, not {sampler}",
            "sampler_arg",
        )
    f.check()
    return TracingConfig(**values)


TRACING = section_value(TRACING_SECTION, parse_tracing)
