"""The ``tracing:`` section of the configuration (pure; every key documented in
docs/configuration.md). A key left out means "as the standard ``OTEL_*`` environment variable
says, else the SDK default"; ``settings.resolve`` combines the two at start-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from sidecar.errors import ConfigError
from sidecar.schema import Problems, got, join, short

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

TRACING_KEYS = (
    "enabled",
    "exporter",
    "endpoint",
    "service_name",
    "resource_attributes",
    "sampler",
    "sampler_arg",
    "max_queue_size",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """``tracing``; ``None`` = from the environment (``OTEL_*``) or the SDK's default."""

    enabled: bool | None = None
    exporter: Exporter | None = None
    endpoint: str | None = None
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    sampler: str | None = None
    sampler_arg: float | None = None
    max_queue_size: int | None = None


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


def queue_size(value: object, path: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_QUEUE_SIZE:
        raise ConfigError(
            path, f"expected a whole number from 1 to {MAX_QUEUE_SIZE}, got {got(value)}"
        )
    return value


def parse_tracing(data: object, *, path: str = "tracing") -> TracingConfig:
    """Validate the ``tracing`` mapping; raises ``sidecar.config.ConfigErrors`` listing every
    problem by key path. ``None`` (an empty section) is all defaults."""
    problems = Problems()
    fields = problems.mapping(data, path, TRACING_KEYS)
    if fields is None:
        problems.raise_if_any()
    assert fields is not None
    values: dict[str, object] = {}
    parsers: dict[str, Callable[[object, str], object]] = {
        "enabled": _boolean,
        "exporter": lambda v, p: _choice(v, p, EXPORTERS),
        "endpoint": traces_url,
        "service_name": _service_name,
        "sampler": sampler_name,
        "sampler_arg": _number_only(sampler_ratio),
        "max_queue_size": _number_only(queue_size),
    }
    for key, parse in parsers.items():
        if key in fields:
            try:
                values[key] = parse(fields[key], join(path, key))
            except ConfigError as exc:
                problems.items.append(exc)
    if "resource_attributes" in fields:
        values["resource_attributes"] = _attributes(
            problems, fields["resource_attributes"], join(path, "resource_attributes")
        )
    sampler = values.get("sampler")
    if "sampler_arg" in fields and sampler is not None and sampler not in RATIO_SAMPLERS:
        problems.add(
            join(path, "sampler_arg"),
            f"only with sampler traceidratio or parentbased_traceidratio, not {sampler}",
        )
    problems.raise_if_any()
    return TracingConfig(**values)  # type: ignore[arg-type]


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {got(value)}")
    return value


def _choice(value: object, path: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ConfigError(path, f"expected one of {', '.join(choices)}; got {got(value)}")
    return value


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


def _attributes(problems: Problems, value: object, path: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        problems.add(path, f"expected a mapping of attribute names to strings, got {got(value)}")
        return MappingProxyType({})
    result: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            problems.add(path, f"attribute names must be non-empty strings, got {got(key)}")
        elif not isinstance(item, str):
            problems.add(join(path, key), f"expected a string (quote numbers), got {got(item)}")
        else:
            result[key] = item
    return MappingProxyType(result)
