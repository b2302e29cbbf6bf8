"""ConsulDiscovery and NacosDiscovery where they behave alike, against FakeConsul / FakeNacos with
real HTTP services behind them: the registry going away under traffic, and a restart while it is
away.

Each test runs once per registry (ids ``consul`` / ``nacos``) over a
:mod:`graylb.testing.registries` backend; what only one registry does (blocking-query indexes,
TTL checks, ACLs, protection threshold, beats, long polling ...) is in
``test_consul_discovery.py`` / ``test_nacos_discovery.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import graylb
from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery
from graylb.nacos.client import NacosConfig
from graylb.nacos.discovery import NacosDiscovery
from graylb.testing.registries import ConsulBackend, NacosBackend
from tests.conftest import BackgroundTraffic, wait_until
from tests.integration.discovery_setup import RULES, OrdersServers, clear_registry_env

Backend = ConsulBackend | NacosBackend


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_registry_env(monkeypatch)


@pytest.fixture(params=["consul", "nacos"])
def registry(request: pytest.FixtureRequest) -> Iterator[Backend]:
    backend = ConsulBackend() if request.param == "consul" else NacosBackend()  # each starts its fake
    yield backend
    backend.close()  # stops the fake


@pytest.fixture
def servers() -> Iterator[OrdersServers]:
    started = OrdersServers()
    yield started
    started.stop()


def discovery(registry: Backend, **kw: Any) -> graylb.Discovery:
    """A discovery client with the registry's default refresh (Nacos polls every second)."""
    if registry.kind == "consul":
        return ConsulDiscovery(ConsulConfig(registry.fake.url), **kw)
    return NacosDiscovery(NacosConfig(registry.fake.url), **kw)


def unreachable(registry: Backend) -> str:
    """How a watch's last_error says the registry does not answer (each client words it its own
    way: ConsulUnavailable "Consul at URL unreachable while ...", NacosUnavailable "cannot reach
    Nacos at URL while ...")."""
    return "unreachable" if registry.kind == "consul" else f"cannot reach Nacos at {registry.fake.url}"


def test_registry_down_under_traffic_zero_failures(registry: Backend, servers) -> None:
    for version in ("1.4.2", "1.4.2", "2.0.0"):
        registry.add("orders", server=servers(version), version=version)
    balancer = graylb.Balancer(registry.discovery(), RULES)  # Nacos: polling every 0.05 s
    try:
        with BackgroundTraffic(balancer, beta_every=3) as traffic:
            traffic.wait_for_more(50)
            registry.fake.stop()
            traffic.wait_for_more(200)  # before the watch has noticed
            watch = balancer.discovery.watch("orders")
            wait_until(lambda: watch.stale, message="the watch notices the outage")
            traffic.wait_for_more(200)  # and after
            assert len(watch.snapshot.instances) == 3 and watch.snapshot.age >= 0
            registry.fake.start()
            wait_until(lambda: not watch.stale, message="the watch recovers")
    finally:
        balancer.close()  # after the traffic thread has stopped
    assert traffic.failures == []


def test_restart_while_registry_down_routes_from_disk_snapshot(registry: Backend, servers, tmp_path) -> None:
    s = servers("1.4.2")
    registry.add("orders", server=s, version="1.4.2")
    first = discovery(registry, snapshot_dir=str(tmp_path))
    assert first.watch("orders").wait_ready(5)
    wait_until(lambda: list(tmp_path.glob("*orders*.json")))
    first.close()
    registry.fake.stop()

    second = discovery(registry, snapshot_dir=str(tmp_path))
    with httpx.Client(transport=graylb.GrayTransport(graylb.Balancer(second, services=["orders"]))) as client:
        r = client.get("http://orders/x")
    assert r.status_code == 200 and r.extensions["graylb"].version == "1.4.2"
    watch = second.watch("orders")
    assert watch.snapshot.source == "disk"
    wait_until(lambda: watch.stale)
    assert unreachable(registry) in watch.last_error
    second.close()
