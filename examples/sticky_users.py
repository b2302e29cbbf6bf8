"""Sticky users in a weighted split: each user keeps their version, call after call.

"orders" runs two v1 instances and one v2 on 127.0.0.1; the rules send 20% of users to v2,
sticky on the `x-user-id` header (a stable hash of the id, the same in every process). Shows:
a user always gets the same version; over 1000 users the split matches the weights; and when
one v1 instance dies (still listed in the registry) every user keeps their version — v1 users
are retried on, then ejected from, the dead instance and served by the other v1.

    python examples/sticky_users.py

Exits non-zero if a user changes version or the split is off.
"""

import sys
from collections import Counter

import httpx

import graylb
from graylb.testing import serve_wsgi

USERS = [f"user-{i}" for i in range(1000)]
RULES = """
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes:
      - name: twenty-percent
        to: [{subset: canary, weight: 20}, {subset: stable, weight: 80}]
        sticky: {header: x-user-id}
"""


def orders(version):  # a tiny "orders" service that says which version answered
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


servers = {"v1-a": serve_wsgi(orders("1.4.2")), "v1-b": serve_wsgi(orders("1.4.2")), "v2": serve_wsgi(orders("2.0.0"))}
try:
    registry = graylb.StaticDiscovery(
        {
            "orders": [
                {"id": name, "host": s.host, "port": s.port, "version": "2.0.0" if name == "v2" else "1.4.2"}
                for name, s in servers.items()
            ]
        }
    )
    client = httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(registry, RULES)))

    def call(user):
        r = client.get("http://orders/api", headers={"x-user-id": user})
        return r.text, r.extensions["graylb"]

    # 1. The same user, many calls: one version each (the instance within it may vary).
    print("1. 30 calls per user")
    for user in ("alice", "bob", "carol", "dave", "erin"):
        versions = Counter(call(user)[0] for _ in range(30))
        print(f"   {user:<6} {dict(versions)}")
        if len(versions) != 1:
            sys.exit(f"{user} saw more than one version: {dict(versions)}")

    # 2. Many users, one call each: the split follows the weights.
    before, instances = {}, Counter()
    for user in USERS:
        before[user], served = call(user)
        instances[served.instance] += 1
    share = sum(v == "2.0.0" for v in before.values()) / len(USERS)
    print(f"\n2. {len(USERS)} users: {share:.1%} on v2 (weight 20%), {1 - share:.1%} on v1")
    print("   requests per instance: " + ", ".join(f"{k} {n}" for k, n in sorted(instances.items())))
    if not 0.15 <= share <= 0.25:
        sys.exit(f"expected ~20% of users on v2, measured {share:.1%}")

    # 3. One v1 instance dies; the registry still lists it (it has not noticed yet).
    servers["v1-b"].stop()
    after, retried, instances = {}, 0, Counter()
    for user in USERS:
        after[user], served = call(user)
        retried += served.attempts > 1
        instances[served.instance] += 1
    moved = [u for u in USERS if after[u] != before[u]]
    print("\n3. v1-b stopped, same users again")
    print(f"   users whose version changed: {len(moved)}")
    print(f"   calls retried on another instance: {retried} (then v1-b was ejected)")
    print("   requests per instance: " + ", ".join(f"{k} {n}" for k, n in sorted(instances.items())))
    if moved:
        sys.exit(f"{len(moved)} users changed version when a v1 instance died, e.g. {moved[:3]}")
    if instances["v1-b"]:
        sys.exit("the stopped instance v1-b still answered")
    client.close()
finally:
    for s in servers.values():
        s.stop()
print("\nOK: every user kept their version; the split matches the weights")
