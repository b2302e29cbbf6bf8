import httpx
import graylb
from graylb.testing import serve_wsgi

def orders(version):  # a tiny "orders" service that says which version answered
    return lambda environ, start: (start("200 OK", []), [version.encode()])[1]

v1, v2 = serve_wsgi(orders("1.4.2")), serve_wsgi(orders("2.0.0"))
registry = graylb.StaticDiscovery({"orders": [
    {"host": v1.host, "port": v1.port, "version": "1.4.2"},
    {"host": v2.host, "port": v2.port, "version": "2.0.0"},
]})
rules = """
services:
  orders:
    subsets: {stable: {version: "^1.4"}, canary: {version: "^2.0"}}
    default: stable
    routes:
      - name: beta-users
        match: [{headers: {user-group: {exact: beta}}}]
        to: [{subset: canary}]
      - name: ten-percent
        to: [{subset: canary, weight: 10}, {subset: stable, weight: 90}]
        sticky: {header: x-user-id}
"""
client = httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(registry, rules)))
print(client.get("http://orders/api", headers={"user-group": "beta"}).text)    # 2.0.0
r = client.get("http://orders/api", headers={"x-user-id": "alice"})
print(r.text, r.extensions["graylb"].route)        # alice's version, "ten-percent"
with graylb.gray(pins={"orders": "1.4.2"}):         # a pin wins over every rule
    print(client.get("http://orders/api", headers={"user-group": "beta"}).text)  # 1.4.2
v1.stop(), v2.stop()
