"""One hop of test_otel_two_hops.py, as its own process: an ASGI app served by uvicorn on
127.0.0.1, instrumented by OpenTelemetry only (the ASGI server instrumentation and the
``requests`` client instrumentation, an SDK TracerProvider so spans are real), with whatever
propagators ``OTEL_PROPAGATORS`` names. graylb's middleware and transports are not used, unless
``--gray-middleware untrusted`` puts ``GrayASGIMiddleware(trust=False)`` inside the
OpenTelemetry middleware (which then extracts before graylb's middleware decides).

    python otel_hop.py [--next URL] [--gray-middleware untrusted]

Prints the port it listens on as the first line of stdout, then serves until terminated. Every
request is answered with JSON: what ``graylb.current()`` says in the handler, the trace id of
the handler's span, the OpenTelemetry baggage, the gray headers as received, and -- with
``--next`` -- the answer of the next hop, called with ``requests``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
from typing import Any

import requests
import uvicorn
from opentelemetry import baggage, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import TracerProvider

import graylb

WATCHED = ("x-gray-lane", "x-gray-pin", "baggage", "traceparent")


def make_app(next_url: str | None) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        received: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            if name.decode("latin-1") in WATCHED:
                received.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
        ctx = graylb.current()
        body: dict[str, Any] = {
            "lane": ctx.lane,
            "lane_forced": ctx.lane_forced,
            "pins": dict(ctx.pins),
            "values": dict(ctx.values),
            "trace_id": format(trace.get_current_span().get_span_context().trace_id, "032x"),
            "otel_baggage": {k: str(v) for k, v in baggage.get_all().items()},
            "received": received,
        }
        if next_url:
            # A worker thread, as a real async app would: to_thread copies the context (graylb's
            # and OpenTelemetry's), and the instrumented requests injects from it.
            answer = await asyncio.to_thread(requests.get, next_url, timeout=30)
            body["next"] = answer.json()
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})

    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--next", dest="next_url")
    parser.add_argument("--gray-middleware", choices=["untrusted"])
    args = parser.parse_args()

    trace.set_tracer_provider(TracerProvider())
    RequestsInstrumentor().instrument()
    app = make_app(args.next_url)
    if args.gray_middleware == "untrusted":
        app = graylb.GrayASGIMiddleware(app, trust=False)
    app = OpenTelemetryMiddleware(app)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections queue from here on, so the port can be announced before serving
    print(sock.getsockname()[1], flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
