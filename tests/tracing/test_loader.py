"""Turning tracing on at start-up: the SDK only when asked for, a clear error when it is
missing or an ``OTEL_*`` value is wrong (also from ``mcp-sidecar run``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import yaml

from sidecar.tracing.config import TracingConfig
from sidecar.tracing.loader import TracingUnavailable, load_tracing
from tests.processes import run_module

WAIT = 20.0  # bound on a run of the CLI


class Counters:
    def spans_exported(self, count: int) -> None:
        pass

    def spans_dropped(self, reason: str, count: int) -> None:
        pass


def test_off_unless_asked() -> None:
    assert load_tracing(TracingConfig(), Counters(), {}) is None
    assert (
        load_tracing(TracingConfig(enabled=False), Counters(), {"OTEL_TRACES_EXPORTER": "otlp"})
        is None
    )


def test_on_when_the_environment_asks() -> None:
    tracing = load_tracing(TracingConfig(), Counters(), {"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None and tracing.settings.exporter == "console"
    tracing.provider.shutdown()


def test_without_the_sdk(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "sidecar.tracing.sdk", None)  # as if not installed
    with pytest.raises(TracingUnavailable, match=r"mcp-sidecar\[tracing\]"):
        load_tracing(TracingConfig(enabled=True), Counters(), {})
    # asked for only by the environment (set for every pod, say): a warning, no tracing
    with caplog.at_level(logging.WARNING):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
        assert load_tracing(TracingConfig(), Counters(), env) is None
    assert "OpenTelemetry is not installed" in caplog.text


async def test_run_refuses_a_bad_otel_variable(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "sidecar.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "trust_domain": "example.org",
                "workload_api": f"unix://{tmp_path}/nobody.sock",
                "outbound": {
                    "listen": "127.0.0.1:0",
                    "routes": [
                        {
                            "name": "math",
                            "upstream": "https://127.0.0.1:9",
                            "server_spiffe_id": "spiffe://example.org/ns/mcp/sa/math",
                        }
                    ],
                },
                "log": {"format": "json"},
            }
        )
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    code, _, err = await run_module("sidecar.cli", "run", "-c", str(config), timeout=WAIT)
    assert code == 1
    assert "OTEL_TRACES_SAMPLER: expected one of parentbased_always_on" in err
