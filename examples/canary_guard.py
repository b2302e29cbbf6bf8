"""Canary guard: the client notices a bad canary and takes traffic off it -- and the fleet follows.

orders 1.4.2 (x2) and 2.0.0 on 127.0.0.1, rules in (fake) Consul KV: 10 % of users on the canary,
with a guard judging the canary's attempts against the baseline's. The canary is healthy at
first, then starts failing 5 % of its requests (the baseline fails 0.5 %). The guard trips,
sheds the canary from the split at once, calls back with the evidence, and -- `action: rollback`
-- writes the rollback to Consul (one compare-and-set write, annotated) for every other process.
`graylb rules undo` brings the split back.

    python examples/canary_guard.py

Exits non-zero if the guard does not trip, or the canary still gets traffic after it did.
"""

import random
import sys
import threading
import time

import httpx
import yaml

import graylb
from graylb import admin
from graylb.consul import ConsulConfig, ConsulRuleSource
from graylb.consul.store import ConsulKVStore
from graylb.testing import FakeConsul, serve_wsgi

RULES = """
version: 1
services:
  orders:
    subsets: {stable: {version: "^1.4"}, canary: {version: "^2.0"}}
    default: stable
    routes:
      - name: ten-percent
        to: [{subset: canary, weight: 10}, {subset: stable, weight: 90}]
        sticky: {header: x-user-id}
    guard:
      canary: canary              # judged against the default subset, stable
      window: 30s
      min_requests: 50            # on each side, before judging
      errors: {confidence: 0.999} # per 30 s window: a healthy canary trips ~1 window in 1000
      action: rollback            # write the rollback for the whole fleet
"""

rng = random.Random(1)
canary_bad = threading.Event()


def orders(version, error_ratio):
    def app(environ, start):
        fails = rng.random() < (error_ratio() if callable(error_ratio) else error_ratio)
        start("503 Service Unavailable" if fails else "200 OK", [])
        return [version.encode()]

    return app


servers = [
    serve_wsgi(orders("1.4.2", 0.005)),
    serve_wsgi(orders("1.4.2", 0.005)),
    serve_wsgi(orders("2.0.0", lambda: 0.05 if canary_bad.is_set() else 0.005)),
]
registry = graylb.StaticDiscovery(
    {"orders": [{"host": s.host, "port": s.port, "version": v} for s, v in zip(servers, ("1.4.2", "1.4.2", "2.0.0"))]}
)
consul = FakeConsul().start()
consul.kv_put("graylb/rules", RULES)
rules = ConsulRuleSource(ConsulConfig(consul.url), "graylb/rules", wait=1.0)
balancer = graylb.Balancer(registry, rules)
trips = []
tripped = threading.Event()
balancer.on_guard_trip(lambda trip: (trips.append(trip), tripped.set()))
client = httpx.Client(transport=graylb.GrayTransport(balancer))
problems = []


def send(n, start=0):
    """n calls, one user each; (canary calls, canary failures)."""
    canary = failed = 0
    for i in range(start, start + n):
        r = client.get("http://orders/x", headers={"x-user-id": f"user-{i}"})
        if r.extensions["graylb"].version == "2.0.0":
            canary += 1
            failed += r.status_code >= 500
    return canary, failed


try:
    canary, _ = send(1000)
    print(f"healthy canary: {canary} of 1000 calls on 2.0.0, guard {'TRIPPED' if tripped.is_set() else 'quiet'}")
    if tripped.is_set():
        problems.append("the guard tripped on a healthy canary")

    canary_bad.set()
    turned_bad, user, canary_calls, canary_failed = time.monotonic(), 1000, 0, 0
    while not tripped.is_set() and user < 20000:
        c, f = send(20, user)
        user, canary_calls, canary_failed = user + 20, canary_calls + c, canary_failed + f
    took = time.monotonic() - turned_bad
    if not trips:
        problems.append("the guard did not trip on a canary failing 5%")
    else:
        trip = trips[0]
        print(
            f"canary turned bad: tripped after {took:.2f}s and {user - 1000} calls ({canary_calls} on the canary, "
            f"{canary_failed} of them failed)"
        )
        print(f"trip: {trip.reason}: {trip.summary}")

    canary, _ = send(500, 50000)
    print(f"after the trip: {canary} of 500 calls on 2.0.0")
    if canary:
        problems.append(f"{canary} calls still reached the canary after the trip")

    def rolled_back():
        return yaml.safe_load(consul.kv_get("graylb/rules"))["services"]["orders"]["routes"] == []

    deadline = time.monotonic() + 10
    while not rolled_back() and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = yaml.safe_load(consul.kv_get("graylb/rules"))["services"]["orders"]
    print(
        f"Consul KV graylb/rules: routes {stored['routes']}, annotation: "
        f"{stored.get('annotations', {}).get('graylb.guard/rolled-back', 'NONE')}"
    )
    if stored["routes"]:
        problems.append("the rollback was not written to Consul")

    with ConsulKVStore(ConsulConfig(consul.url)) as store:
        print(admin.undo(store, "graylb/rules"))
    deadline = time.monotonic() + 10
    while not balancer.rules.service("orders").routes and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"after graylb rules undo: route(s) {[r.name for r in balancer.rules.service('orders').routes]}")
finally:
    client.close()
    rules.close()
    consul.stop()
    for s in servers:
        s.stop()

if problems:
    print("FAILED: " + "; ".join(problems))
    sys.exit(1)
print("OK: the guard tripped on the bad canary, shed it at once, and wrote one rollback for the fleet")
