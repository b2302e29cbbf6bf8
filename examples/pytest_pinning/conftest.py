"""The system under test: a `checkout` function that calls the "orders" service through graylb,
and an orders fleet (1.4.2 stable, 2.0.0 canary, 2.1.0 in the "beta" lane) on real sockets."""

import httpx
import pytest

import graylb
from graylb.testing import serve_wsgi

RULES = {
    "services": {
        "orders": {
            "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
            "default": "stable",
            "routes": [
                {"name": "five-percent", "to": [{"subset": "canary", "weight": 5}, {"subset": "stable", "weight": 95}]}
            ],
        }
    }
}


def orders_app(version):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"order placed by orders {version}".encode()]

    return app


@pytest.fixture
def orders_fleet(graylb_backend):
    """Three orders servers registered in whichever registry graylb_backend runs on."""
    servers = [serve_wsgi(orders_app(v)) for v in ("1.4.2", "2.0.0", "2.1.0")]
    graylb_backend.set_rules(RULES)
    graylb_backend.add("orders", server=servers[0], version="1.4.2")
    graylb_backend.add("orders", server=servers[1], version="2.0.0")
    graylb_backend.add("orders", server=servers[2], version="2.1.0", lane="beta")
    yield graylb_backend.balancer()
    for server in servers:
        server.stop()


@pytest.fixture
def checkout(orders_fleet):
    """The code under test: it knows nothing about versions, only http://orders."""
    client = httpx.Client(transport=graylb.GrayTransport(orders_fleet), timeout=5)

    def place_order() -> str:
        return client.get("http://orders/orders").text

    yield place_order
    client.close()
