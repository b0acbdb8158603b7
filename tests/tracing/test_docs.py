"""docs/observability.md lists every span attribute, span event, log field and metric."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from sidecar.metrics import Metrics, WebhookMetrics
from sidecar.proxy.accesslog import AccessRecord, AuditRecord, JsonLogFormatter
from sidecar.tracing import spans

ROOT = Path(__file__).resolve().parents[2]
DOCS = (ROOT / "docs" / "observability.md").read_text()
SPANS_SOURCE = Path(spans.__file__).read_text()
# dotted attribute and event names written in the span code (``"mcp.method.name"``)
NAME = re.compile(r'"((?:[a-z_]+\.)+[a-z_]+)"')
NOT_ATTRIBUTES = {"sidecar.errors", "sidecar.mcp.jsonrpc"}


def test_every_span_attribute_and_event_is_documented() -> None:
    names = set(NAME.findall(SPANS_SOURCE)) - NOT_ATTRIBUTES
    assert {"mcp.method.name", "gen_ai.tool.name", "mcp_sidecar.policy_denied"} <= names
    missing = {name for name in names if f"`{name}`" not in DOCS}
    assert missing == set()


def test_every_metric_is_documented() -> None:
    class NoCertificate:
        cert_file = "/nonexistent"
        reloads = 0

    webhook = WebhookMetrics()
    webhook.bind_certificate(NoCertificate())
    families = [*Metrics().registry.collect(), *webhook.registry.collect()]
    assert len(families) > 25
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in DOCS, name


def test_every_log_field_is_documented() -> None:
    access = AccessRecord(direction="inbound", method="GET", path="/", status=200).to_dict()
    audit = AuditRecord(
        principal=None,
        method=None,
        tool=None,
        request_id=None,
        decision="allow",
        rule=None,
        status=200,
        latency_ms=0.0,
        mcp_session_id=None,
    )
    fields = set(access) | set(json.loads(audit.to_json()))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    fields |= set(json.loads(JsonLogFormatter().format(record))) | {"exception"}
    missing = {field for field in fields if f"`{field}`" not in DOCS}
    assert missing == set()
