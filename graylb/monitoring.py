"""Getting graylb's telemetry out of the process: a Prometheus endpoint in one line, traces over OTLP.

graylb records through opentelemetry-api only (:mod:`graylb.telemetry`); an application that has
not set up an OpenTelemetry SDK sees nothing. These helpers set one up -- or join the one the
application has -- for the two exports a gray release needs:

- :func:`serve_prometheus` -- ``/metrics`` for Prometheus to scrape (``pip install
  'graylb[prometheus]'``: the SDK, ``opentelemetry-exporter-prometheus`` and ``prometheus-client``);
- :func:`export_traces` -- spans to an OTLP/HTTP endpoint: a Collector, Jaeger, Tempo
  (``pip install 'graylb[otlp]'``).

Both leave an application's own providers in charge: with an SDK meter provider already set,
the Prometheus reader is *added* to it; with an SDK tracer provider already set, the OTLP
exporter is added as one more span processor. Neither ever replaces a provider.

The rule files and the dashboard that read these metrics are in the repository's ``monitoring/``
(README "Watching a canary").
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from opentelemetry import metrics, trace

__all__ = ["PrometheusEndpoint", "export_traces", "serve_prometheus"]

log = logging.getLogger("graylb")

_lock = threading.Lock()
_reader: Any = None  # the process's one PrometheusMetricReader (a second would double every series)


class PrometheusEndpoint:
    """A running ``/metrics`` endpoint: ``url``, ``host``, ``port``; :meth:`close` stops serving
    (the reader stays registered, so serving again shows the same counters)."""

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> PrometheusEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusEndpoint({self.url})"


def _missing(extra: str, exc: ImportError) -> ImportError:
    return ImportError(f"graylb.monitoring needs the '{extra}' extra: pip install 'graylb[{extra}]' ({exc})")


def serve_prometheus(port: int | None = None, host: str | None = None) -> PrometheusEndpoint:
    """Serve graylb's metrics (and every other OpenTelemetry and ``prometheus_client`` metric of
    the process) at ``http://host:port/metrics`` from a daemon thread.

    ``port`` / ``host`` default to ``OTEL_EXPORTER_PROMETHEUS_PORT`` / ``_HOST``, else 9464 and
    ``localhost`` -- the OpenTelemetry defaults; pass ``host="0.0.0.0"`` for a Prometheus on
    another machine. ``port=0`` takes a free port (see ``.port``).

    Without an SDK meter provider, installs one whose resource comes from the usual
    ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``; with one, adds the Prometheus reader to
    it. Names follow the OTLP -> Prometheus translation (README "Telemetry"), the same names the
    Collector's Prometheus exporters produce, so ``monitoring/`` works for both routes.
    """
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.resources import Resource
        from prometheus_client import start_http_server
    except ImportError as exc:
        raise _missing("prometheus", exc) from exc

    global _reader
    with _lock:
        if _reader is None:
            reader = PrometheusMetricReader()
            provider = metrics.get_meter_provider()
            if isinstance(provider, MeterProvider):
                add = getattr(provider, "add_metric_reader", None)
                if add is None:  # SDKs before 1.39 cannot take a reader after construction
                    raise RuntimeError(
                        "graylb.monitoring.serve_prometheus: the installed MeterProvider cannot take another "
                        "reader (opentelemetry-sdk too old); pass PrometheusMetricReader() in its metric_readers"
                    )
                add(reader)
            else:
                metrics.set_meter_provider(MeterProvider(metric_readers=[reader], resource=Resource.create()))
            _reader = reader
    if port is None:
        port = int(os.environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464"))
    if host is None:
        host = os.environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost")
    server, thread = start_http_server(port, addr=host)
    endpoint = PrometheusEndpoint(server, thread, host)
    log.info("graylb: serving metrics at %s", endpoint.url)
    return endpoint


def export_traces(endpoint: str | None = None, *, service_name: str | None = None) -> Any:
    """Send spans to an OTLP/HTTP ``endpoint`` (``http://collector:4318``; default: the SDK's own
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` handling, else
    ``http://localhost:4318``) in batches. Returns the SDK tracer provider used, whose
    ``force_flush()`` / ``shutdown()`` send what is pending.

    Without an SDK tracer provider, installs one (resource from ``OTEL_SERVICE_NAME`` /
    ``OTEL_RESOURCE_ATTRIBUTES``, or ``service_name``); with one, adds the exporter to it.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise _missing("otlp", exc) from exc

    if endpoint is not None:
        endpoint = endpoint.rstrip("/")
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"  # the exporter takes the full signal URL when given one
    exporter = OTLPSpanExporter(endpoint=endpoint)
    with _lock:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            attributes = {"service.name": service_name} if service_name else {}
            provider = TracerProvider(resource=Resource.create(attributes))
            trace.set_tracer_provider(provider)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
