"""``LoopCounter`` and ``LoopHistogram`` expose exactly what prometheus-client's ``Counter`` and
``Histogram`` expose for the same observations (only the ``_created`` times differ)."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sidecar.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.0005, 0.001, 0.01, 0.1, 1.0, 10.0, 1e7)  # 1e7: Go writes it with an exponent
AMOUNTS = [0.0, 0.0005, 0.00050001, 0.001, 0.05, 0.1, 9.99, 10.0, 10.5, 1e7, 1e9, 3.0]


def _exposition(registry: CollectorRegistry) -> str:
    text = generate_latest(registry).decode()
    return re.sub(r"(_created(\{[^}]*\})?) \S+", r"\1 T", text)


def _observe(counter: Counter | LoopCounter, histogram: Histogram | LoopHistogram) -> None:
    for i, amount in enumerate(AMOUNTS):
        counter.labels(kind="a" if i % 3 else "b", code=str(i % 2)).inc()
        counter.labels(kind="c", code="1").inc(2.5)
        histogram.labels(kind="a" if i % 2 else "b").observe(amount)


def test_the_same_exposition_as_prometheus_client() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    _observe(
        Counter("x_total", "Things.", ["kind", "code"], registry=theirs),
        Histogram("x_seconds", "Times.", ["kind"], buckets=BUCKETS, registry=theirs),
    )
    _observe(
        LoopCounter("x_total", "Things.", ["kind", "code"], registry=ours),
        LoopHistogram("x_seconds", "Times.", ["kind"], buckets=BUCKETS, registry=ours),
    )
    assert "x_seconds_bucket" in _exposition(ours)
    assert _exposition(ours) == _exposition(theirs)


def test_wrong_labels_and_names_are_refused() -> None:
    registry = CollectorRegistry(auto_describe=True)
    counter = LoopCounter("y_total", "Y.", ["kind"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels(other="a")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("y_total", "Again.", ["kind"], registry=registry)
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("z", "Z.", [], buckets=(2.0, 1.0), registry=registry)
