"""Turns tracing on at start-up, or leaves it off without importing OpenTelemetry."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sidecar.errors import SidecarError
from sidecar.tracing.config import TracingConfig
from sidecar.tracing.settings import resolve

if TYPE_CHECKING:
    from sidecar.tracing.sdk import SpanCounters, Tracing

log = logging.getLogger(__name__)

EXTRA_HINT = "install the tracing extra: pip install 'mcp-sidecar[tracing]'"


class TracingUnavailable(SidecarError):
    """``tracing.enabled: true`` but the OpenTelemetry SDK is not installed."""

    status = 500
    reason = "tracing_unavailable"


def load_tracing(
    config: TracingConfig, counters: SpanCounters, env: Mapping[str, str] | None = None
) -> Tracing | None:
    """The tracing of one sidecar, or ``None`` when it is off. Raises ``ConfigError`` (naming
    the variable) for a bad ``OTEL_*`` value, and ``TracingUnavailable`` when the config asks
    for tracing without the SDK installed; tracing asked for only by the environment is then
    skipped with a warning (an operator may set ``OTEL_*`` for every pod, image or not)."""
    settings = resolve(config, os.environ if env is None else env)
    if settings is None:
        return None
    try:
        from sidecar.tracing.sdk import Tracing
    except ImportError as exc:
        if config.enabled:
            raise TracingUnavailable(
                f"tracing.enabled is true but OpenTelemetry cannot be imported ({exc}); "
                + EXTRA_HINT
            ) from exc
        log.warning(
            "OTEL_* asks for traces but OpenTelemetry is not installed (%s); %s", exc, EXTRA_HINT
        )
        return None
    tracing = Tracing(settings, counters)
    log.info("tracing on: %s", settings.describe())
    return tracing
