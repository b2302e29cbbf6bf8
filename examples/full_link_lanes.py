"""Full-link gray lanes: a request in lane "beta" is served by beta instances at every hop.

Three services call each other on 127.0.0.1: gateway -> orders -> inventory. orders and
inventory each have a stable instance and an instance registered with lane="beta". Every app is
wrapped in graylb.GrayWSGIMiddleware (so a handler runs in its caller's gray context) and calls
the next hop through an httpx client with graylb.GrayTransport (which routes by that context and
passes it on). A request entering the gateway with `x-gray-lane: beta` — or sent inside
graylb.gray(lane="beta") — takes the beta instances at both hops; a request without a lane never
touches them. Prints the path (service@version/lane per hop) each request took.

    python examples/full_link_lanes.py

Exits non-zero if a lane request misses a lane instance or a plain request reaches one.
"""

import json
import sys
from collections import Counter

import httpx

import graylb
from graylb.testing import serve_wsgi

registry = graylb.StaticDiscovery()
# No rules needed: lanes come from instance metadata. Name the services so the transport routes them.
balancer = graylb.Balancer(registry, services=["gateway", "orders", "inventory"])
client = httpx.Client(transport=graylb.GrayTransport(balancer))  # shared by every service's outbound calls
hits = Counter()  # requests served, per instance


def service(name, version, lane=None, next_hop=None, **middleware_options):
    """A WSGI app answering its own hop plus, if it has one, the rest of the path."""
    me = f"{name}@{version}" + (f"/{lane}" if lane else "")

    def app(environ, start_response):
        hits[me] += 1
        path = [me]
        if next_hop:  # an ordinary httpx call: the gray context of this request goes along
            path += client.get(f"http://{next_hop}/path").json()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(path).encode()]

    server = serve_wsgi(graylb.GrayWSGIMiddleware(app, **middleware_options))
    registry.add({"host": server.host, "port": server.port, "version": version, "lane": lane}, service=name)
    return server


servers = [
    # The edge: gray headers are honoured from our own network only (here, loopback).
    service("gateway", "1.0.0", next_hop="orders", trust=graylb.trust_networks("127.0.0.0/8")),
    service("orders", "1.4.2", next_hop="inventory"),
    service("orders", "1.5.0-beta.1", lane="beta", next_hop="inventory"),
    service("inventory", "3.1.0"),
    service("inventory", "3.2.0-beta.1", lane="beta"),
]
try:
    gateway = servers[0]
    lane_hops = {"orders@1.5.0-beta.1/beta", "inventory@3.2.0-beta.1/beta"}
    problems = []

    def show(label, path, in_lane):
        print(f"{label:<36} {' -> '.join(path)}")
        if in_lane and not lane_hops <= set(path):
            problems.append(f"{label}: lane request took {path}")
        if not in_lane and lane_hops & set(path):
            problems.append(f"{label}: plain request reached a lane instance: {path}")

    # From outside: a plain HTTP call to the gateway's address, lane in a header.
    show("header x-gray-lane: beta", httpx.get(f"{gateway.url}/path", headers={"x-gray-lane": "beta"}).json(), True)
    # From a service using graylb: the lane is in the gray context and goes on the wire by itself.
    with graylb.gray(lane="beta"):
        show('graylb.gray(lane="beta")', client.get("http://gateway/path").json(), True)
    show("no lane", client.get("http://gateway/path").json(), False)
    show("no lane (direct to gateway)", httpx.get(f"{gateway.url}/path").json(), False)

    # Volume: plain traffic never lands in the lane; lane traffic stays in it end to end.
    hits.clear()
    for _ in range(200):
        client.get("http://gateway/path")
    with graylb.gray(lane="beta"):
        for _ in range(100):
            client.get("http://gateway/path")
    print("\n200 requests without a lane + 100 in lane beta, requests served per instance:")
    for hop, n in sorted(hits.items()):
        print(f"  {hop:<28} {n}")
    for hop in lane_hops:
        if hits[hop] != 100:
            problems.append(f"{hop} served {hits[hop]} requests, expected exactly the 100 lane requests")
    client.close()
finally:
    for s in servers:
        s.stop()
if problems:
    sys.exit("lane broken: " + "; ".join(problems))
print("\nOK: lane requests used the beta instances at every hop; other requests never did")
