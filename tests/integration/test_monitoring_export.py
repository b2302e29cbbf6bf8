"""graylb.monitoring: /metrics in one line, with or without the application's own SDK, and spans
over OTLP -- scraped and received over real loopback sockets."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import httpx
import pytest

import graylb
from graylb import monitoring
from graylb.testing.http_server import serve_wsgi
from tests.integration import otel_sdk


def _ok_app(environ: dict, start_response) -> list[bytes]:  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_serve_prometheus_joins_the_applications_meter_provider() -> None:
    """With an SDK MeterProvider already set (the suite's), the Prometheus reader is added to it:
    the application's other readers keep working and /metrics shows graylb's series."""
    otel_sdk.install()
    server = serve_wsgi(_ok_app)
    registry = graylb.StaticDiscovery({"scraped": [{"host": server.host, "port": server.port, "version": "v2"}]})
    balancer = graylb.Balancer(registry, services=["scraped"])
    try:
        with monitoring.serve_prometheus(port=0, host="127.0.0.1") as endpoint:
            with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
                assert client.get("http://scraped/").status_code == 200
            text = httpx.get(endpoint.url).text
            assert endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith("http_client_request_duration_seconds_count{") and 'graylb_service="scraped"' in ln
        )
        assert 'graylb_version="v2"' in line and 'graylb_outcome="ok"' in line
        assert "graylb_route_weight{" in text and "graylb_registry_snapshot_age_seconds{" in text
        assert any(p.attributes.get("graylb.service") == "scraped" for p in otel_sdk.points("graylb.client.calls"))
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):  # closed means closed
        httpx.get(endpoint.url, timeout=2)


def test_serve_prometheus_installs_an_sdk_where_the_application_has_none() -> None:
    """A process with no OpenTelemetry set-up: one call and the endpoint serves graylb's metrics,
    named after OTEL_SERVICE_NAME."""
    script = textwrap.dedent(
        """
        import httpx, graylb, graylb.monitoring
        from graylb.testing.http_server import serve_wsgi
        def app(environ, start_response):
            start_response("503 Service Unavailable", [])
            return [b"no"]
        server = serve_wsgi(app)
        balancer = graylb.Balancer(graylb.StaticDiscovery(
            {"bare": [{"host": server.host, "port": server.port, "version": "2.0.0"}]}), services=["bare"])
        endpoint = graylb.monitoring.serve_prometheus(port=0, host="127.0.0.1")
        with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
            client.get("http://bare/")
        print(httpx.get(endpoint.url).text)
        endpoint.close()
        server.stop()
        """
    )
    env = {"OTEL_SERVICE_NAME": "checkout", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert 'service_name="checkout"' in text  # target_info from the resource
    counts = [ln for ln in text.splitlines() if ln.startswith("http_client_request_duration_seconds_count{")]
    assert len(counts) == 1 and 'graylb_version="2.0.0"' in counts[0] and 'graylb_outcome="http_5xx"' in counts[0]


def test_a_missing_extra_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.prometheus", None)
    with pytest.raises(ImportError, match=r"pip install 'graylb\[prometheus\]'"):
        monitoring.serve_prometheus(port=0)
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(ImportError, match=r"pip install 'graylb\[otlp\]'"):
        monitoring.export_traces("http://127.0.0.1:4318")
