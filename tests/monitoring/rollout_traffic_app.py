"""The traffic process of test_rollout_gate.py: orders behind graylb, rules from (Fake)Consul KV,
graylb's metrics on a Prometheus endpoint.

    python rollout_traffic_app.py --consul URL --key KEY --canary-failure 0.05

Serves orders 1.4.2 x2 (healthy) and 2.0.0 (answers 500 to ``--canary-failure`` of its
requests, spread evenly: every 1/fraction-th one, so a short window already shows the fraction)
on 127.0.0.1, balanced by a Balancer on StaticDiscovery whose rules come from the Consul key
(ConsulRuleSource, so a rollout written to the key reaches it within a second). Prints a JSON
line {"metrics_port": N} once everything runs, then sends about ``--rate`` calls a second through
``GrayTransport``, each with its own ``x-user-id``, until its stdin closes; then exits 0.

Its own process because ``serve_prometheus`` installs an OpenTelemetry SDK meter provider, which
is global and set once per process.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

import graylb
from graylb.consul import ConsulConfig, ConsulRuleSource
from graylb.monitoring import serve_prometheus
from graylb.testing.http_server import WSGIServer, serve_wsgi


def _app(version: str, failure: float) -> Callable[..., list[bytes]]:
    lock = threading.Lock()
    state = {"n": 0, "failed": 0}

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            state["n"] += 1
            # Fail when the running failed/total would fall below the fraction: exactly
            # `failure` of the requests, evenly spread.
            fail = state["failed"] < int(state["n"] * failure)
            if fail:
                state["failed"] += 1
        if fail:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [f"orders {version} failed on purpose\n".encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"service": "orders", "version": version}).encode()]

    return app


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--consul", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--canary-failure", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()

    servers: list[tuple[WSGIServer, str]] = [
        (serve_wsgi(_app("1.4.2", 0.0)), "1.4.2"),
        (serve_wsgi(_app("1.4.2", 0.0)), "1.4.2"),
        (serve_wsgi(_app("2.0.0", args.canary_failure)), "2.0.0"),
    ]
    discovery = graylb.StaticDiscovery(
        {"orders": [{"host": "127.0.0.1", "port": s.port, "version": v} for s, v in servers]}
    )
    rules = ConsulRuleSource(ConsulConfig(args.consul), args.key, wait=1.0)
    balancer = graylb.Balancer(discovery, rules)
    endpoint = serve_prometheus(port=0, host="127.0.0.1")
    stop = threading.Event()

    def send() -> None:
        interval = 1.0 / args.rate
        with httpx.Client(transport=graylb.GrayTransport(balancer), timeout=10) as client:
            n = 0
            next_at = time.monotonic()
            while not stop.is_set():
                n += 1
                try:
                    client.get("http://orders/orders/42", headers={"x-user-id": f"user-{n}"})
                except httpx.HTTPError:
                    pass  # counted by graylb's metrics like any failed attempt
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))

    sender = threading.Thread(target=send, name="traffic", daemon=True)
    sender.start()
    print(json.dumps({"metrics_port": endpoint.port}), flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    sender.join(timeout=10)
    endpoint.close()
    balancer.close()  # and its rule source
    for server, _ in servers:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
