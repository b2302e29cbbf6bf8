"""One OpenTelemetry SDK for the whole test process: the global providers can be set only once,
so every telemetry test module installs (idempotently) and reads these same ones."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

READER = InMemoryMetricReader()
EXPORTER = InMemorySpanExporter()
_installed: list[bool] = []


def install() -> None:
    """Set the global meter and tracer providers to ones feeding READER and EXPORTER (once)."""
    if _installed:
        return
    metrics.set_meter_provider(MeterProvider(metric_readers=[READER]))
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    assert isinstance(trace.get_tracer_provider(), TracerProvider), "another tracer provider was set first"
    _installed.append(True)


def metric(name: str, scope: str = "graylb") -> Any | None:
    """The exported metric ``name`` of instrumentation scope ``scope`` (its data has
    ``data_points``), or None."""
    data = READER.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            if sm.scope.name != scope:
                continue
            for m in sm.metrics:
                if m.name == name:
                    return m
    return None


def points(name: str, scope: str = "graylb") -> list[Any]:
    """Every data point of metric ``name`` (cumulative since the start of the process)."""
    m = metric(name, scope)
    return list(m.data.data_points) if m is not None else []


def recorded(scope: str) -> int:
    """How many measurements the synchronous instruments of ``scope`` hold (histogram samples,
    counter increments): a scope that recorded nothing since the last look keeps the same number."""
    total = 0
    data = READER.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            if sm.scope.name == scope:
                for m in sm.metrics:
                    for p in m.data.data_points:
                        total += getattr(p, "count", None) or int(getattr(p, "value", 0))
    return total


def spans(name: str | None = None) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if name is None or s.name == name]
