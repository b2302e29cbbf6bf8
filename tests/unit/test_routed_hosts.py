"""Which URL hosts a balancer routes, and to which registry service (``host_suffix``)."""

from __future__ import annotations

import httpx
import pytest

import graylb

HOSTS = ["orders", "orders.svc", "payments.svc", "svc", "example.com", "orders.svc.example.com", ""]


@pytest.mark.parametrize("suffix", [None, ".svc", ""])
def test_routed_service_is_is_service_and_service_name_in_one(suffix: str | None) -> None:
    balancer = graylb.Balancer(graylb.StaticDiscovery({}), services=["orders"], host_suffix=suffix)
    for host in HOSTS:
        expected = balancer.service_name(host) if balancer.is_service(host) else None
        assert balancer.routed_service(host) == expected, host


def test_a_host_with_the_suffix_routes_to_the_service_named_without_it() -> None:
    seen: list[str] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}:{request.url.port} {request.headers['host']}")
        return httpx.Response(200)

    static = graylb.StaticDiscovery({"payments": [{"host": "10.1.2.3", "port": 8080, "version": "1.0.0"}]})
    balancer = graylb.Balancer(static, host_suffix=".svc")
    with httpx.Client(transport=graylb.GrayTransport(balancer, httpx.MockTransport(app))) as client:
        served = client.get("http://payments.svc/pay").extensions["graylb"]
        client.get("http://example.com/")  # not ours: straight through
    assert (served.service, served.address) == ("payments", "10.1.2.3:8080")
    assert seen == ["10.1.2.3:8080 payments.svc", "example.com:None example.com"]
