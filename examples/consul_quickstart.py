"""Consul end to end in one file, against FakeConsul (swap in your agent's address)."""

import time

import httpx

import graylb
from graylb.testing import FakeConsul, serve_wsgi

consul = FakeConsul().start()  # or a real agent: "http://127.0.0.1:8500"
config = graylb.ConsulConfig(consul.url)  # token=..., verify="/path/ca.pem" for real ones


def app(version):
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


v1, v2 = serve_wsgi(app("1.4.2")), serve_wsgi(app("2.0.0"))
# The serving side: register with version in Meta, a TTL check kept passing by a heartbeat.
reg1 = graylb.ConsulRegistration(config, "orders", address=v1.host, port=v1.port, version="1.4.2", ttl=5)
reg2 = graylb.ConsulRegistration(config, "orders", address=v2.host, port=v2.port, version="2.0.0", ttl=5)
reg1.register(), reg2.register()

# Rules live in a KV key; `graylb rules push rules.yaml --key graylb/rules` writes it from a shell.
consul.kv_put(
    "graylb/rules",
    """
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes: [{name: beta, match: [{headers: {user-group: beta}}], to: [{subset: canary}]}]
""",
)
balancer = graylb.Balancer(graylb.ConsulDiscovery(config), graylb.ConsulRuleSource(config, "graylb/rules"))
client = httpx.Client(transport=graylb.GrayTransport(balancer))
print(client.get("http://orders/", headers={"user-group": "beta"}).text)  # 2.0.0

reg2.close()  # v2 deregisters: beta users fall back
while len(balancer.discovery.snapshot("orders").instances) > 1:
    time.sleep(0.01)  # the blocking query wakes within ms
print(client.get("http://orders/", headers={"user-group": "beta"}).text)  # 1.4.2
reg1.close(), balancer.close(), consul.stop(), v1.stop(), v2.stop()
