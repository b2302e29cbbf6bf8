"""Releasing v2 step by step: 5 % -> 25 % -> 50 % -> 100 %, driven by a runner, then back.

orders 1.4.2 (x2) and 2.0.0 on 127.0.0.1, rules in (fake) Consul KV. `graylb.rollout.start` writes
the plan into the rules document; a runner pass at the end of each pause (`graylb.rollout.tick`,
what `graylb.rollout.run` repeats; the pauses pass on a simulated clock here) promotes the step
-- with gates, it would evaluate them first; each step is one compare-and-set write that every
client applies. At the end 2.0.0 is the default and 1.4.2 stays named as the baseline, so
`graylb rollback` goes back to it. The same from a shell: `graylb rollout start orders --canary
canary --steps 5,25,50,100 --pause 5m --key graylb/rules`, then `graylb rollout run ...`.

    python examples/progressive_rollout.py

Exits non-zero if a step's live share is off or the rollback does not reach 1.4.2.
"""

import sys
import threading
import time
from collections import Counter

import httpx

import graylb
from graylb import admin, rollout
from graylb.consul import ConsulConfig, ConsulRuleSource
from graylb.consul.store import ConsulKVStore
from graylb.testing import FakeConsul, serve_wsgi

RULES = """
version: 1
services:
  orders:
    subsets: {stable: {version: "^1.4"}, canary: {version: "^2.0"}}
    default: stable
"""


def orders(version):
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


servers = [serve_wsgi(orders(v)) for v in ("1.4.2", "1.4.2", "2.0.0")]
registry = graylb.StaticDiscovery(
    {"orders": [{"host": s.host, "port": s.port, "version": v} for s, v in zip(servers, ("1.4.2", "1.4.2", "2.0.0"))]}
)
consul = FakeConsul().start()
consul.kv_put("graylb/rules", RULES)
config = ConsulConfig(consul.url)
source = ConsulRuleSource(config, "graylb/rules", wait=1.0)
balancer = graylb.Balancer(registry, source)
client = httpx.Client(transport=graylb.GrayTransport(balancer))
problems = []
user = iter(range(10**9))


def share_of_v2(n=1000):
    seen = Counter(
        client.get("http://orders/x", headers={"x-user-id": f"u{next(user)}"}).extensions["graylb"].version
        for _ in range(n)
    )
    return seen["2.0.0"] / n


try:
    with ConsulKVStore(config) as store:
        # Five-minute pauses, passed here on a simulated clock: a runner pass (rollout.tick, what
        # `graylb rollout run` repeats) at the end of each pause promotes the step -- the pause
        # counts from the step time recorded in the store, whoever runs it.
        clock = time.time()
        print(
            rollout.start(
                store,
                "graylb/rules",
                "orders",
                "canary",
                [5, 25, 50, 100],
                pause=300,
                sticky_header="x-user-id",
                by="release-bot",
                now=clock,
            )
        )
        for want in (0.05, 0.25, 0.50, 1.0):
            # Each step reaches the clients through their rule source (one propagation).
            for _ in range(400):
                route = next((r for r in balancer.rules.service("orders").routes if r.name == rollout.ROUTE), None)
                if route and dict((t.subset, t.weight) for t in route.to).get("canary", 0) == round(want * 100):
                    break
                threading.Event().wait(0.01)
            share = share_of_v2()
            print(f"step {want:>4.0%} to v2: live share {share:.1%}")
            if abs(share - want) > 0.05:
                problems.append(f"step {want:.0%}: live share {share:.1%}")
            clock += 301  # just past the five minutes
            print(f"  runner after the pause: {rollout.tick(store, 'graylb/rules', 'orders', by='runner', now=clock)}")
        for _ in range(400):
            if balancer.rules.service("orders").default == "canary":
                break
            threading.Event().wait(0.01)
        print(f"default subset now '{balancer.rules.service('orders').default}'")
        print("history:\n  " + rollout.history(store, "graylb/rules", "orders").replace("\n", "\n  "))
        if balancer.rules.service("orders").default != "canary" or share_of_v2(200) != 1.0:
            problems.append("the rollout did not end with all of orders on 2.0.0")

        print(admin.rollback(store, "graylb/rules", "orders"))
    # The clients follow the rollback within one rule propagation.
    deadline_share = None
    for _ in range(200):
        if balancer.rules.service("orders").default == "stable":
            deadline_share = share_of_v2(200)
            break
        threading.Event().wait(0.05)
    print(
        f"after graylb rollback: {deadline_share:.0%} on 2.0.0" if deadline_share is not None else "rollback not seen"
    )
    if deadline_share != 0.0:
        problems.append("the rollback did not send everyone back to 1.4.2")
finally:
    client.close()
    source.close()
    consul.stop()
    for s in servers:
        s.stop()

if problems:
    print("FAILED: " + "; ".join(problems))
    sys.exit(1)
print("OK: 5% -> 25% -> 50% -> 100% by the runner, then one rollback back to the named baseline 1.4.2")
