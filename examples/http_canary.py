"""A canary moved 5% -> 50% -> 100%, sticky per user, then rolled back — over real HTTP.

"orders" runs two stable v1 instances and one canary v2 on 127.0.0.1. Each step sends one
request per user (1000 users, keyed by the `x-user-id` header) and prints the measured shares.
Because the split is a stable hash of the user id, raising the weight only moves users from
v1 to v2: everyone who was on v2 at 5% is still on v2 at 50%. The rollback is the document
change `graylb rollback orders` makes (routes removed: all traffic to the default subset).

    python examples/http_canary.py

Exits non-zero if a share is off or a user moved back from v2 to v1.
"""

import sys

import httpx

import graylb
from graylb.admin import push, rollback
from graylb.testing import MemoryRuleStore, serve_wsgi

USERS = [f"user-{i}" for i in range(1000)]


def orders(version):  # a tiny "orders" service that says which version answered
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


def canary_rules(percent):
    return f"""
services:
  orders:
    subsets:
      stable: {{version: "^1"}}
      canary: {{version: "^2"}}
    default: stable
    routes:
      - name: canary
        to: [{{subset: canary, weight: {percent}}}, {{subset: stable, weight: {100 - percent}}}]
        sticky: {{header: x-user-id}}
"""


servers = [serve_wsgi(orders("1.4.2")), serve_wsgi(orders("1.4.2")), serve_wsgi(orders("2.0.0"))]
try:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"host": s.host, "port": s.port, "version": v} for s, v in zip(servers, ["1.4.2", "1.4.2", "2.0.0"])
            ]
        }
    )
    # Rules live under a key, as in Consul KV or Nacos config; MemoryRuleStore keeps it in this
    # process. push / rollback are the functions `graylb rules push` / `graylb rollback` run.
    store, KEY = MemoryRuleStore(), "graylb/rules"
    rules = store.rule_source(KEY)  # follows the key: each write applies before push() returns

    client = httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(registry, rules)))

    def step(name, before=frozenset()):
        """Send one request per user, print a row; returns the users that v2 answered."""
        on_v2 = {u for u in USERS if client.get("http://orders/", headers={"x-user-id": u}).text == "2.0.0"}
        share = len(on_v2) / len(USERS)
        print(f"{name:<14} {1 - share:>9.1%} {share:>9.1%}   {len(before - on_v2)}")
        return on_v2

    print(f"{'step':<14} {'v1 share':>9} {'v2 share':>9}   users moved v2 -> v1")
    push(store, KEY, canary_rules(5))
    at5 = step("canary 5%")
    push(store, KEY, canary_rules(50))
    at50 = step("canary 50%", at5)
    push(store, KEY, canary_rules(100))
    at100 = step("canary 100%", at50)
    change = rollback(store, KEY, "orders")  # exactly what `graylb rollback orders` writes
    after = step("rollback", at100)
    client.close()

    print(f"\n{change}\n")
    print(f"users on v2 at 5%: {len(at5)}; of them still on v2 at 50%: {len(at5 & at50)}")

    # The promises, checked so CI notices a regression (wide bounds: 1000 users, stable hashing).
    for name, users, low, high in (
        ("5%", at5, 0.02, 0.09),
        ("50%", at50, 0.40, 0.60),
        ("100%", at100, 1, 1),
        ("rollback", after, 0, 0),
    ):
        if not low <= len(users) / len(USERS) <= high:
            sys.exit(f"{name}: expected {low:.0%}..{high:.0%} of users on v2, measured {len(users) / len(USERS):.1%}")
    if not at5 <= at50 <= at100:
        sys.exit("sticky split broken: a user on v2 went back to v1 when the canary grew")
    print("OK: shares follow the weights, users only moved v1 -> v2, rollback sent 100% to v1")
finally:
    for s in servers:
        s.stop()
