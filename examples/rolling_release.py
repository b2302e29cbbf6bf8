"""A rolling replacement of 3 v1 instances by 3 v2 instances under load, without losing a request.

One at a time: start a v2 instance, register it once its readiness path answers, let callers
warm it up, then drain a v1 instance (deregister, serve through the grace period, refuse what
still arrives with the drain marker, finish what is in flight) and stop it. Meanwhile eight client
threads send a mix of GETs and POSTs (~200 requests/s) through graylb over the registry. Every
POST carries a unique id; each instance counts what it processed.

    python examples/rolling_release.py [--registry consul|nacos] [--without-drain] [--quick]

Prints the failed and duplicated counts; exits non-zero if either is above 0 (with
``--without-drain``, today's behaviour before graylb drained -- deregister and stop at once --
is run instead and expected to lose requests: it exits 0 and prints them).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

import graylb
from graylb.drain import Drain
from graylb.drain_middleware import DrainWSGIMiddleware
from graylb.testing import FakeConsul, FakeNacos, serve_wsgi

RATE = 200.0  # requests per second, all client threads together
CLIENTS = 8


def wait_until(condition, what, timeout=30.0):  # poll a condition: never a fixed sleep
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.005)


@dataclass
class Load:
    sent: Counter = field(default_factory=Counter)
    failed: list = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class Instance:
    """One "orders" process: an HTTP server behind the drain middleware, and its registration."""

    def __init__(self, registry, version, processed, lock):
        self.version = version
        self.drain = Drain(grace=None)  # the registration's propagation time, set below
        self.server = serve_wsgi(DrainWSGIMiddleware(self.app, self.drain))
        self.processed, self.lock = processed, lock
        self.registration = registry.registration(self.server, version)
        self.drain.registration = self.registration

    def app(self, environ, start_response):
        if environ["PATH_INFO"] == "/ready":
            start_response("200 OK", [])
            return [b"ready"]
        if environ["REQUEST_METHOD"] == "POST":
            with self.lock:
                self.processed[environ["HTTP_X_REQUEST_ID"]] += 1
        time.sleep(0.02)  # some work: requests are in flight when an instance stops
        start_response("200 OK", [])
        return [self.version.encode()]

    def stop(self, drain):
        if drain:
            result = self.drain.drain()  # deregister, grace, refuse, finish in flight
            print(f"    drained {self.version} on :{self.server.port}: {result}")
        else:  # today's SIGTERM without a drain: deregister, and the process exits at once --
            self.registration.close()
            self.server._server.kill_connections()  # -- its connections, requests in flight too, die with it
        self.server.stop()


class Consul:
    """FakeConsul in this process, or the Consul agent at ``config``."""

    def __init__(self, config=None):
        self.fake = FakeConsul().start() if config is None else None
        self.config = config if config is not None else graylb.ConsulConfig(self.fake.url)

    def registration(self, server, version):
        return graylb.ConsulRegistration(
            self.config, "orders", address=server.host, port=server.port, version=version, ttl=5, ready="/ready"
        )

    def discovery(self):
        return graylb.ConsulDiscovery(self.config)

    def stop(self):
        if self.fake is not None:
            self.fake.stop()


class Nacos:
    """FakeNacos in this process, or the Nacos server at ``config``."""

    def __init__(self, config=None):
        self.fake = FakeNacos().start() if config is None else None
        self.config = config if config is not None else graylb.NacosConfig(self.fake.url)

    def registration(self, server, version):
        return graylb.NacosRegistration(
            self.config, "orders", ip=server.host, port=server.port, version=version, ready="/ready"
        )

    def discovery(self):
        return graylb.NacosDiscovery(self.config, refresh_interval=0.5)

    def stop(self):
        if self.fake is not None:
            self.fake.stop()


RULES = {"services": {"orders": {"warmup": {"window": "2s"}}}}


def client_loop(client, load, index):
    i = 0
    pause = CLIENTS / RATE
    next_at = time.monotonic()
    while not load.stop.is_set():
        i += 1
        method = "POST" if i % 2 else "GET"
        request_id = f"c{index}-{i}"
        try:
            response = client.request(method, "http://orders/orders", headers={"x-request-id": request_id})
            if response.status_code >= 500:
                load.failed.append(f"{method} {request_id}: HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            load.failed.append(f"{method} {request_id}: {type(exc).__name__}: {exc}")
        load.sent[method] += 1
        next_at += pause
        time.sleep(max(0.0, next_at - time.monotonic()))


def run(registry_kind="consul", drain=True, quick=False, config=None):
    """One rolling replacement; returns (requests sent, failed, duplicated POSTs). ``config``: a
    real registry's ConsulConfig / NacosConfig (default: a fake one started here)."""
    registry = Consul(config) if registry_kind == "consul" else Nacos(config)
    processed: Counter = Counter()
    lock = threading.Lock()
    old = [Instance(registry, "1.0.0", processed, lock) for _ in range(3)]
    new = []
    balancer = None
    load = Load()
    try:
        for inst in old:
            inst.registration.register()
        balancer = graylb.Balancer(registry.discovery(), RULES, services=["orders"])
        watch = balancer.discovery.watch("orders")
        wait_until(lambda: watch.snapshot and len(watch.snapshot.instances) == 3, "three v1 instances")
        client = httpx.Client(transport=graylb.GrayTransport(balancer), timeout=10)
        threads = [threading.Thread(target=client_loop, args=(client, load, n)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        for step, leaving in enumerate(old):
            arriving = Instance(registry, "2.0.0", processed, lock)
            new.append(arriving)
            arriving.registration.register()  # waits for GET /ready
            wait_until(lambda a=arriving: any(i.port == a.server.port for i in watch.snapshot.instances), "v2 seen")
            time.sleep(0.5 if quick else 2.0)  # load keeps flowing while the new instance warms up
            print(f"  step {step + 1}: v2 on :{arriving.server.port} in, v1 on :{leaving.server.port} out")
            leaving.stop(drain)
        time.sleep(0.5 if quick else 2.0)
        load.stop.set()
        for t in threads:
            t.join(30)
        client.close()
    finally:
        load.stop.set()
        if balancer is not None:
            balancer.close()
        for inst in old + new:
            inst.registration.close()
            inst.server.stop()
        registry.stop()
    duplicated = sum(1 for n in processed.values() if n > 1)
    return sum(load.sent.values()), load.failed, duplicated


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", choices=["consul", "nacos"], default="consul")
    parser.add_argument("--without-drain", action="store_true", help="today's behaviour: deregister and stop")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    drain = not args.without_drain
    print(f"rolling 3 x v1 -> 3 x v2 over {args.registry}, {'with' if drain else 'WITHOUT'} drain, ~{RATE:.0f} req/s")
    sent, failed, duplicated = run(args.registry, drain, args.quick)
    for line in failed[:5]:
        print(f"  failed: {line}")
    print(f"sent {sent} requests (GET and POST): {len(failed)} failed, {duplicated} POSTs processed twice")
    if drain and (failed or duplicated):
        sys.exit(1)
    print("OK: nothing lost, nothing duplicated" if drain else "(without the drain, for comparison)")


if __name__ == "__main__":
    main()
