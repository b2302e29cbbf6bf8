"""Nacos end to end in one file, against FakeNacos (swap in your server's address)."""

import time

import httpx

import graylb
from graylb.testing import FakeNacos, serve_wsgi

nacos = FakeNacos(auth={"nacos": "nacos-pw"}).start()  # or a real server: "http://127.0.0.1:8848"
config = graylb.NacosConfig(nacos.url, username="nacos", password="nacos-pw")


def app(version):
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]


v1, v2 = serve_wsgi(app("1.4.2")), serve_wsgi(app("2.0.0"))
# The serving side: register with version in metadata; ephemeral heartbeats keep it alive.
reg1 = graylb.NacosRegistration(config, "orders", ip=v1.host, port=v1.port, version="1.4.2")
reg2 = graylb.NacosRegistration(config, "orders", ip=v2.host, port=v2.port, version="2.0.0")
reg1.register(), reg2.register()

# Rules live in a config item; `graylb rules push rules.yaml --nacos URL --key graylb-rules` from a shell.
nacos.publish_config(
    "graylb-rules",
    "DEFAULT_GROUP",
    """
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes: [{name: beta, match: [{headers: {user-group: beta}}], to: [{subset: canary}]}]
""",
)
balancer = graylb.Balancer(
    graylb.NacosDiscovery(config, refresh_interval=0.2), graylb.NacosRuleSource(config, "graylb-rules")
)
client = httpx.Client(transport=graylb.GrayTransport(balancer))
print(client.get("http://orders/", headers={"user-group": "beta"}).text)  # 2.0.0

reg2.close()  # v2 deregisters: beta users fall back
while len(balancer.discovery.snapshot("orders").instances) > 1:
    time.sleep(0.01)  # seen at the next refresh
print(client.get("http://orders/", headers={"user-group": "beta"}).text)  # 1.4.2
reg1.close(), balancer.close(), nacos.stop(), v1.stop(), v2.stop()
