"""NacosDiscovery and NacosRuleSource against FakeNacos, with real HTTP services behind them: what is
Nacos's own (weights, protection threshold, beats, long polling, auth). What Consul and Nacos
discovery do alike is in ``test_registry_discovery.py``."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

import graylb
from graylb.nacos.client import NacosConfig
from graylb.nacos.discovery import NacosDiscovery
from graylb.nacos.rules import NacosRuleSource, content_md5
from graylb.testing.fake_nacos import FakeNacos
from tests.conftest import wait_until
from tests.integration.discovery_setup import RULES, OrdersServers, clear_registry_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_registry_env(monkeypatch)


@pytest.fixture
def nacos():
    with FakeNacos(long_poll_min_hold=0.2) as fake:
        yield fake


@pytest.fixture
def servers() -> Iterator[OrdersServers]:
    started = OrdersServers()
    yield started
    started.stop()


def add(fake: FakeNacos, server, version: str, **kw) -> None:
    fake.register("orders", server.host, server.port, metadata={"version": version, **kw.pop("metadata", {})}, **kw)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_instances_appear_and_disappear(nacos: FakeNacos, servers, api: str) -> None:
    v1 = servers("1.4.2")
    add(nacos, v1, "1.4.2")
    disco = NacosDiscovery(NacosConfig(nacos.url, api_version=api), refresh_interval=0.05)
    balancer = graylb.Balancer(disco, RULES)
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        assert client.get("http://orders/x").extensions["graylb"].version == "1.4.2"
        v2 = servers("2.0.0")
        add(nacos, v2, "2.0.0")
        wait_until(
            lambda: (
                client.get("http://orders/x", headers={"user-group": "beta"}).extensions["graylb"].version == "2.0.0"
            )
        )
        nacos.deregister("orders", v2.host, v2.port)
        wait_until(lambda: len(disco.snapshot("orders").instances) == 1)
        nacos.set_enabled("orders", v1.host, v1.port, False)  # disabled: left out server-side
        wait_until(lambda: len(disco.snapshot("orders").instances) == 0)
    balancer.close()


def test_weights_metadata_and_unhealthy(nacos: FakeNacos, servers) -> None:
    a, b, c = servers("1.4.2"), servers("1.4.2"), servers("1.4.2")
    add(nacos, a, "1.4.2", weight=2.0, metadata={"lane": "beta", "zone": "a"})
    add(nacos, b, "1.4.2", weight=1.0, metadata={"weight": "0"})
    add(nacos, c, "1.4.2", weight=1.0)
    disco = NacosDiscovery(NacosConfig(nacos.url), refresh_interval=0.05)
    watch = disco.watch("orders")
    assert watch.wait_ready(5)
    by_port = {i.port: i for i in watch.snapshot.instances}
    assert (by_port[a.port].weight, by_port[a.port].lane, by_port[a.port].labels["zone"]) == (200, "beta", "a")
    assert by_port[b.port].weight == 0 and by_port[c.port].weight == 100
    nacos.set_healthy("orders", c.host, c.port, False)
    wait_until(lambda: {i.port: i.health for i in watch.snapshot.instances}[c.port] is graylb.Health.CRITICAL)
    disco.close()


def test_protection_threshold_keeps_last_good_snapshot(nacos: FakeNacos, servers) -> None:
    a, b = servers("1.4.2"), servers("1.4.2")
    add(nacos, a, "1.4.2"), add(nacos, b, "1.4.2")
    disco = NacosDiscovery(NacosConfig(nacos.url), refresh_interval=0.05)
    watch = disco.watch("orders")
    assert watch.wait_ready(5) and len(watch.snapshot.healthy) == 2
    nacos.set_healthy("orders", a.host, a.port, False)
    wait_until(lambda: len(watch.snapshot.healthy) == 1)
    nacos.set_healthy("orders", b.host, b.port, False)  # all unhealthy: Nacos returns everything
    wait_until(lambda: watch.stale and "protection threshold" in watch.last_error)
    assert len(watch.snapshot.healthy) == 1  # still the last good list, not "all healthy"
    nacos.set_healthy("orders", a.host, a.port, True)
    wait_until(lambda: not watch.stale)
    disco.close()


def test_bad_entries_skipped_with_warning(nacos: FakeNacos, servers, caplog) -> None:
    good = servers("1.4.2")
    add(nacos, good, "1.4.2")
    nacos.register("orders", "127.0.0.1", 9, metadata={"version": "1.4.2", "weight": "abc"})
    disco = NacosDiscovery(NacosConfig(nacos.url))
    with caplog.at_level(logging.WARNING, logger="graylb.discovery"):
        watch = disco.watch("orders")
        assert watch.wait_ready(5)
    assert sorted(i.port for i in watch.snapshot.instances) == sorted([good.port, 9])
    assert "'abc'" in caplog.text and "127.0.0.1#9" in caplog.text
    disco.close()


def test_rules_long_polling_apply_and_bad_document_kept_out(nacos: FakeNacos, servers) -> None:
    add(nacos, servers("1.4.2"), "1.4.2")
    add(nacos, servers("2.0.0"), "2.0.0")
    nacos.publish_config("graylb-rules", "DEFAULT_GROUP", RULES)
    rules = NacosRuleSource(NacosConfig(nacos.url), "graylb-rules", poll_timeout=5)
    assert rules.current.service("orders") is not None
    assert rules.current.revision == content_md5(RULES.encode())
    balancer = graylb.Balancer(NacosDiscovery(NacosConfig(nacos.url), refresh_interval=0.05), rules)
    beta = graylb.RequestInfo(headers={"user-group": "beta"})
    assert balancer.decide("orders", beta).subset == "canary"
    assert nacos.wait_long_polls(1, timeout=5)  # parked in the listener
    nacos.publish_config(
        "graylb-rules", "DEFAULT_GROUP", RULES.replace("to: [{subset: canary}]", "to: [{subset: stable}]")
    )
    wait_until(lambda: balancer.decide("orders", beta).subset == "stable", timeout=5)
    good = rules.current.revision
    nacos.publish_config("graylb-rules", "DEFAULT_GROUP", RULES.replace("subset: canary", "subset: canery"))
    wait_until(lambda: rules.last_error is not None)
    assert "unknown subset 'canery'" in str(rules.last_error) and rules.current.revision == good
    rules.close()
    balancer.close()


def test_rules_with_auth_and_token_expiry(servers) -> None:
    with FakeNacos(auth={"nacos": "s3cret"}, long_poll_min_hold=0.2) as fake:
        fake.publish_config("graylb-rules", "DEFAULT_GROUP", RULES)
        config = NacosConfig(fake.url, username="nacos", password="s3cret")
        rules = NacosRuleSource(config, "graylb-rules", poll_timeout=2)
        assert rules.current.service("orders") is not None
        fake.expire_tokens()
        fake.publish_config("graylb-rules", "DEFAULT_GROUP", RULES.replace("canary}]", "stable}]"))
        wait_until(lambda: "stable" in str([r.to for r in rules.current.service("orders").routes]), timeout=10)
        rules.close()
        bad = NacosDiscovery(NacosConfig(fake.url, username="nacos", password="hunter2-xyz"))
        watch = bad.watch("orders")
        wait_until(lambda: watch.last_error)
        assert "login failed" in watch.last_error.lower() and "hunter2-xyz" not in watch.last_error
        bad.close()


def test_heartbeats_stop_then_unhealthy_then_removed(servers) -> None:
    with FakeNacos(beat_timeout=0.5, delete_timeout=2.5) as fake:
        s, steady = servers("1.4.2"), servers("1.4.2")
        fake.register("orders", steady.host, steady.port, metadata={"version": "1.4.2"})  # never expires
        base = f"{fake.url}/nacos/v1/ns/instance"
        params = {
            "serviceName": "orders",
            "ip": s.host,
            "port": str(s.port),
            "ephemeral": "true",
            "metadata": '{"version": "1.4.2"}',
        }
        httpx.post(base, params=params).raise_for_status()
        httpx.put(
            f"{base}/beat",
            params={**params, "beat": f'{{"serviceName": "orders", "ip": "{s.host}", "port": {s.port}}}'},
        ).raise_for_status()
        disco = NacosDiscovery(NacosConfig(fake.url), refresh_interval=0.05)
        watch = disco.watch("orders")
        assert watch.wait_ready(5)
        assert len(watch.snapshot.instances) == 2  # s sends no more beats, like a crashed process
        wait_until(
            lambda: len(watch.snapshot.instances) == 2 and len(watch.snapshot.healthy) == 1,
            message="unhealthy after beat_timeout",
        )
        wait_until(
            lambda: [i.port for i in watch.snapshot.instances] == [steady.port], message="removed after delete_timeout"
        )
        disco.close()
