"""The two processes of test_jaeger.py, each exporting its spans over OTLP/HTTP with its own
``service.name`` through ``graylb.monitoring.export_traces``.

    python two_hops_app.py orders --otlp URL
        Serves, on 127.0.0.1, "orders" 2.0.0 (a WSGI app behind GrayWSGIMiddleware whose /chain
        handler, in a SERVER span of its own, calls http://inventory/x through graylb) and
        "inventory" 3.1.0 (a plain WSGI app). Prints a JSON line {"orders": port, "inventory":
        port} once both listen, then serves until its stdin closes; then flushes its spans
        (provider.shutdown()) and exits 0.

    python two_hops_app.py frontend --otlp URL --orders PORT
        In a "checkout" span, calls http://orders/chain through graylb (orders 2.0.0 on
        127.0.0.1:PORT), flushes its spans and prints a JSON line: the checkout span's trace id
        and span id, and the answer.

Each is its own process because an OpenTelemetry SDK tracer provider is global and set once per
process (and the test process already has the in-memory one of tests/integration/otel_sdk.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind

import graylb
from graylb.monitoring import export_traces
from graylb.testing.http_server import serve_wsgi


def _json(start_response: Callable[..., Any], body: dict[str, Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def _context() -> dict[str, str]:
    c = trace.get_current_span().get_span_context()
    return {"trace_id": format(c.trace_id, "032x"), "span_id": format(c.span_id, "016x")}


def orders(otlp: str) -> int:
    provider = export_traces(otlp, service_name="orders")
    tracer = trace.get_tracer("orders")

    def inventory_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        return _json(start_response, {"service": "inventory", "traceparent": environ.get("HTTP_TRACEPARENT")})

    inventory = serve_wsgi(inventory_app)
    discovery = graylb.StaticDiscovery(
        {"inventory": [{"host": "127.0.0.1", "port": inventory.port, "version": "3.1.0"}]}
    )
    balancer = graylb.Balancer(discovery, services=["inventory"])
    client = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=30)

    def orders_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        # GrayWSGIMiddleware made the caller's traceparent current: this span is its child.
        with tracer.start_as_current_span(f"GET {environ['PATH_INFO']}", kind=SpanKind.SERVER):
            body: dict[str, Any] = {"service": "orders", "handler": _context()}
            if environ["PATH_INFO"] == "/chain":
                body["next"] = client.get("http://inventory/x").json()
        return _json(start_response, body)

    server = serve_wsgi(graylb.GrayWSGIMiddleware(orders_app))
    print(json.dumps({"orders": server.port, "inventory": inventory.port}), flush=True)
    sys.stdin.read()  # until the test closes our stdin
    server.stop()
    inventory.stop()
    client.close()
    provider.shutdown()  # sends what the batch processor still holds
    return 0


def frontend(otlp: str, orders_port: int) -> int:
    provider = export_traces(otlp, service_name="frontend")
    discovery = graylb.StaticDiscovery({"orders": [{"host": "127.0.0.1", "port": orders_port, "version": "2.0.0"}]})
    balancer = graylb.Balancer(discovery, services=["orders"])
    with httpx.Client(transport=graylb.GrayTransport(balancer), timeout=30) as client:
        with trace.get_tracer("frontend").start_as_current_span("checkout"):
            checkout = _context()
            answer = client.get("http://orders/chain")
    provider.shutdown()
    print(json.dumps({"checkout": checkout, "status": answer.status_code, "answer": answer.json()}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["orders", "frontend"])
    parser.add_argument("--otlp", required=True)
    parser.add_argument("--orders", type=int)
    args = parser.parse_args()
    if args.role == "orders":
        return orders(args.otlp)
    return frontend(args.otlp, args.orders)


if __name__ == "__main__":
    sys.exit(main())
