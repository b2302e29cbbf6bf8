"""OpenTelemetry: with an SDK installed, routed calls show up as span attributes and metrics."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import graylb
from tests.conftest import Fleet

# The global providers can be set once per process: set them for this module's tests.
_reader = InMemoryMetricReader()
_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def otel_sdk():
    metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(provider)
    yield


def _points(name: str) -> list:
    data = _reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    out.extend(m.data.data_points)
    return out


def test_span_attributes_and_metrics(fleet: Fleet) -> None:
    fleet.start("v1", "orders", "1.4.2")
    fleet.start("v2", "orders", "2.0.0")
    rules = {"services": {"orders": {"subsets": {"stable": {"version": "^1"}, "canary": {"version": "2.0.0"}}, "default": "stable", "routes": [{"name": "beta", "match": [{"headers": {"user-group": "beta"}}], "to": [{"subset": "canary"}]}]}}}
    balancer = graylb.Balancer(fleet.registry, rules)
    tracer = trace.get_tracer("test")
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        with tracer.start_as_current_span("outbound"):
            client.get("http://orders/x", headers={"user-group": "beta"})
        for _ in range(3):
            client.get("http://orders/x")
    span = next(s for s in _exporter.get_finished_spans() if s.name == "outbound")
    assert span.attributes["graylb.route"] == "beta"
    assert span.attributes["graylb.subset"] == "canary"
    assert span.attributes["graylb.version"] == "2.0.0"
    assert span.attributes["graylb.instance"] == "v2"

    counts = {(p.attributes["graylb.subset"], p.attributes["graylb.version"], p.attributes["graylb.outcome"]): p.value for p in _points("graylb.client.requests")}
    assert counts[("canary", "2.0.0", "ok")] == 1
    assert counts[("stable", "1.4.2", "ok")] == 3
    durations = [p for p in _points("graylb.client.duration") if p.attributes["graylb.version"] == "1.4.2"]
    assert durations and durations[0].count == 3


def test_rejected_rules_are_counted() -> None:
    source = graylb.StaticRules({"services": {}})
    assert not source.apply("services: {orders: {fallback: sometimes}}")
    assert sum(p.value for p in _points("graylb.rules.rejected")) >= 1


def test_a_subset_that_selects_nothing_is_counted_once_per_snapshot(fleet: Fleet) -> None:
    fleet.start("a", "ledger", "v1")
    fleet.start("b", "ledger", "v2")
    rules = {"services": {"ledger": {"subsets": {"stable": {"version": "v1"}, "canary": {"version": "^3"}}, "default": "stable"}}}
    balancer = graylb.Balancer(fleet.registry, rules)

    def empty_count() -> int:
        return sum(p.value for p in _points("graylb.subset.empty") if p.attributes == {"graylb.service": "ledger", "graylb.subset": "canary"})

    for _ in range(3):
        balancer.start("ledger", graylb.RequestInfo())
    assert empty_count() == 1
    fleet.start("c", "ledger", "v2")  # a new snapshot, still nothing for ^3
    balancer.start("ledger", graylb.RequestInfo())
    assert empty_count() == 2
