"""A canary on Nacos, end to end: register, push rules, watch the live split move, roll back.

FakeNacos runs in this process with auth on (a real HTTP server speaking Nacos's Open API; point
NacosConfig at your server instead). Two "orders" versions register with graylb.NacosRegistration;
the rules go to a config item with the same functions `graylb rules push --nacos` and
`graylb rollback --nacos` run; a Balancer over NacosDiscovery + NacosRuleSource picks each change
up from the config long poll within milliseconds.

    python examples/nacos_end_to_end.py

Exits non-zero if the measured split does not follow the pushed rules.
"""

import sys
import time

import httpx

import graylb
from graylb.admin import push_change, rollback
from graylb.testing import FakeNacos, serve_wsgi

KEY, USERS = "graylb-rules", [f"user-{i}" for i in range(1000)]


def orders(version):  # a tiny "orders" service that says which version answered
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


def canary_rules(percent):
    return f"""
services:
  orders:
    subsets: {{stable: {{version: "^1"}}, canary: {{version: "^2"}}}}
    default: stable
    routes:
      - name: canary-{percent}
        to: [{{subset: canary, weight: {percent}}}, {{subset: stable, weight: {100 - percent}}}]
        sticky: {{header: x-user-id}}
"""


def wait_until(condition, what, timeout=30.0):  # poll a condition: never a fixed sleep
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.005)


def live_route():  # the route calls take now (waiting on a fetched revision could beat the switch)
    return balancer.decide("orders", graylb.RequestInfo()).route


def check_split(expected, low, high):  # one request per user over real HTTP
    share = sum(client.get("http://orders/", headers={"x-user-id": u}).text == "2.0.0" for u in USERS) / len(USERS)
    print(f"  -> live split: {share:.1%} of {len(USERS)} users on v2 (rules say {expected})")
    if not low <= share <= high:
        sys.exit(f"expected {expected} on v2, measured {share:.1%}")


nacos = FakeNacos(auth={"nacos": "nacos-pw"}).start()  # or a real server: "http://127.0.0.1:8848"
config = graylb.NacosConfig(nacos.url, username="nacos", password="nacos-pw")
v1, v2 = serve_wsgi(orders("1.4.2")), serve_wsgi(orders("2.0.0"))
regs = [
    graylb.NacosRegistration(config, "orders", ip=s.host, port=s.port, version=v)
    for s, v in ((v1, "1.4.2"), (v2, "2.0.0"))
]
balancer = None
try:
    for reg in regs:
        reg.register()  # metadata version=...; ephemeral, kept by beats
    print(push_change(config, KEY, canary_rules(10), source="canary 10%"))  # = graylb rules push --nacos

    balancer = graylb.Balancer(graylb.NacosDiscovery(config), graylb.NacosRuleSource(config, KEY))
    client = httpx.Client(transport=graylb.GrayTransport(balancer))
    watch = balancer.discovery.watch("orders")  # watch now rather than from the first call
    wait_until(lambda: watch.snapshot and len(watch.snapshot.instances) == 2, "both instances")
    wait_until(lambda: live_route() == "canary-10", "the 10% rules")
    check_split("10%", 0.05, 0.15)

    print(push_change(config, KEY, canary_rules(50), source="canary 50%"))
    wait_until(lambda: live_route() == "canary-50", "the 50% rules")
    check_split("50%", 0.40, 0.60)

    print(rollback(config, KEY, "orders"))  # = graylb rollback orders --nacos
    wait_until(lambda: live_route() == "default", "the rollback")  # no routes left: the default subset
    check_split("0%", 0.0, 0.0)
    client.close()
finally:
    if balancer is not None:
        balancer.close()
    for reg in regs:
        reg.close()  # deregisters
    nacos.stop(), v1.stop(), v2.stop()
print("OK: the live split followed every push, and the rollback sent everyone to v1")
