"""The parts of the Prometheus Operator's PodMonitor and ServiceMonitor (monitoring.coreos.com/v1)
our manifests use, as JSON schemas with unknown fields refused. ``kubernetes-validate`` knows
only built-in kinds, and the operator's CRDs are not shipped here; these follow the CRDs'
field names and types (prometheus-operator ``monitoring.coreos.com_{pod,service}monitors``)."""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string", "minLength": 1}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_PORT_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 15}


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


_LABEL_SELECTOR = _closed(
    {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    }
)
_NAMESPACE_SELECTOR = _closed({"any": {"type": "boolean"}, "matchNames": {"type": "array"}})
_RELABELING = _closed(
    {
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "separator": {"type": "string"},
        "targetLabel": _STRING,
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "action": {"enum": ["replace", "keep", "drop", "labelmap", "labeldrop", "labelkeep"]},
    }
)
_SECRET_KEY = _closed({"name": _STRING, "key": _STRING}, ["name", "key"])
_TLS = _closed(
    {
        "serverName": _STRING,
        "insecureSkipVerify": {"type": "boolean"},
        "ca": _closed({"secret": _SECRET_KEY, "configMap": _SECRET_KEY}),
    }
)
_ENDPOINT = {
    "path": {"type": "string", "pattern": "^/"},
    "scheme": {"enum": ["http", "https"]},
    "interval": _DURATION,
    "scrapeTimeout": _DURATION,
    "relabelings": {"type": "array", "items": _RELABELING},
    "tlsConfig": _TLS,
}
_METADATA = _closed(
    {
        "name": _STRING,
        "namespace": _STRING,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ["name", "namespace"],
)


def _monitor(kind: str, endpoints_key: str, endpoint: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": _closed(
                {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": _NAMESPACE_SELECTOR,
                    "jobLabel": _STRING,
                    endpoints_key: {"type": "array", "minItems": 1, "items": endpoint},
                },
                ["selector", endpoints_key],
            ),
        },
        ["apiVersion", "kind", "metadata", "spec"],
    )


SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": _monitor(
        "PodMonitor", "podMetricsEndpoints", _closed({"port": _PORT_NAME, **_ENDPOINT}, ["port"])
    ),
    "ServiceMonitor": _monitor(
        "ServiceMonitor", "endpoints", _closed({"port": _PORT_NAME, **_ENDPOINT}, ["port"])
    ),
}
