"""Versions labelled the way teams label them, routed by graylb.

Five "orders" instances on 127.0.0.1, registered in a (fake) Consul with the metadata a Go /
Spring Cloud team writes: `{"version": "v1"}` twice, `{"version": "v2", "weight": "10"}`, an image
tag `my-service:v1.2.0` and a commit `commit-abc123`. The rules select them by those labels:

- a 10/90 split by `v2` / `v1` (sticky per user),
- a pin by image tag and a pin by commit (exact labels),
- API v2 asked for in `Accept: application/vnd.myapp.v2+json` or in the path `/api/v2/users`.

    python examples/registry_labels.py

Prints where each call landed; exits non-zero if any landed elsewhere.
"""

import sys
from collections import Counter

import httpx

import graylb
from graylb.testing import FakeConsul, serve_wsgi


def orders(version):  # a tiny "orders" service that says which version answered
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


RULES = """
services:
  orders:
    subsets:
      stable: {version: v1}                 # labels "v1" (also "1", "1.x.y", "v1.x.y")
      canary: {version: v2}
    default: stable
    routes:
      - name: api-v2                        # callers that ask for API v2 get the v2 instances
        match:
          - api_version: {from: accept, vendor: myapp, version: v2}
          - api_version: {from: path, prefix: /api, version: v2}
        to: [{subset: canary}]
      - name: ten-percent
        to: [{subset: canary, weight: 10}, {subset: stable, weight: 90}]
        sticky: {header: x-user-id}
"""

LABELS = [("v1", None), ("v1", None), ("v2", "10"), ("my-service:v1.2.0", None), ("commit-abc123", None)]
servers = [serve_wsgi(orders(version)) for version, _ in LABELS]
consul = FakeConsul().start()
failures = []
try:
    for n, (server, (version, weight)) in enumerate(zip(servers, LABELS)):
        meta = {"version": version, **({"weight": weight} if weight else {})}
        consul.register("orders", id=f"orders-{n}", address=server.host, port=server.port, meta=meta)
        print(f"registered orders-{n} at {server.host}:{server.port} with Meta {meta}")

    balancer = graylb.Balancer(graylb.ConsulDiscovery(graylb.ConsulConfig(consul.url)), RULES)
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:

        def check(what, expected, response):
            print(f"{what:<58} -> {response.text:<18} (route {response.extensions['graylb'].route})")
            if response.text != expected:
                failures.append(f"{what}: got {response.text}, expected {expected}")

        users = Counter(
            client.get("http://orders/api/orders", headers={"x-user-id": f"user-{n}"}).text for n in range(1000)
        )
        print(f"10/90 split by labels v2/v1, 1000 users: v1 {users['v1'] / 10:.1f}%, v2 {users['v2'] / 10:.1f}%")
        if set(users) != {"v1", "v2"} or not 60 <= users["v2"] <= 140:
            failures.append(f"split: {dict(users)}")

        with graylb.gray(pins={"orders": "my-service:v1.2.0"}):
            check(
                "pin orders=my-service:v1.2.0 (image tag)", "my-service:v1.2.0", client.get("http://orders/api/orders")
            )
        with graylb.gray(pins={"orders": "commit-abc123"}):
            check("pin orders=commit-abc123 (commit)", "commit-abc123", client.get("http://orders/api/orders"))
        with graylb.gray(pins={"orders": "2"}):
            check("pin orders=2 (a short pin selects label v2)", "v2", client.get("http://orders/api/orders"))
        check(
            "Accept: application/vnd.myapp.v2+json",
            "v2",
            client.get(
                "http://orders/api/orders", headers={"accept": "application/vnd.myapp.v2+json", "x-user-id": "user-1"}
            ),
        )
        check(
            "Accept: application/vnd.myapp.v1+json",
            "v1",
            client.get(
                "http://orders/api/orders", headers={"accept": "application/vnd.myapp.v1+json", "x-user-id": "user-1"}
            ),
        )
        check("GET /api/v2/users", "v2", client.get("http://orders/api/v2/users", headers={"x-user-id": "user-1"}))
        check("GET /api/v1/users", "v1", client.get("http://orders/api/v1/users", headers={"x-user-id": "user-1"}))
    balancer.close()
finally:
    consul.stop()
    for server in servers:
        server.stop()

if failures:
    print("FAILED:", *failures, sep="\n  ")
    sys.exit(1)
print("OK: labels v1/v2, an image tag, a commit and API versions in Accept and path all routed as written")
