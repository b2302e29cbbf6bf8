"""ConsulDiscovery and ConsulRuleSource against FakeConsul, with real HTTP services behind them: what
is Consul's own (health checks, TTLs, blocking-query indexes, ACLs, KV rules). What Consul and Nacos
discovery do alike is in ``test_registry_discovery.py``."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest

import graylb
from graylb.consul.client import ConsulConfig
from graylb.consul.discovery import ConsulDiscovery
from graylb.consul.rules import ConsulRuleSource
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.http_server import serve_wsgi
from tests.conftest import wait_until
from tests.integration.discovery_setup import RULES, OrdersServers, clear_registry_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_registry_env(monkeypatch)


@pytest.fixture
def consul():
    with FakeConsul() as fake:
        yield fake


@pytest.fixture
def servers() -> Iterator[OrdersServers]:
    started = OrdersServers()
    yield started
    started.stop()


def register(fake: FakeConsul, server, version: str, **kw) -> str:
    meta = {"version": version, **kw.pop("meta", {})}
    return fake.register("orders", id=f"orders-{server.port}", address=server.host, port=server.port, meta=meta, **kw)


def versions_seen(client: httpx.Client, n: int = 20, headers: dict | None = None) -> set[str]:
    return {client.get("http://orders/x", headers=headers or {}).extensions["graylb"].version for _ in range(n)}


def test_registered_instance_becomes_routable_and_leaves(consul: FakeConsul, servers) -> None:
    v1 = servers("1.4.2")
    register(consul, v1, "1.4.2")
    disco = ConsulDiscovery(ConsulConfig(consul.url))
    balancer = graylb.Balancer(disco, RULES)
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        assert versions_seen(client) == {"1.4.2"}
        v2 = servers("2.0.0")
        sid = register(consul, v2, "2.0.0")
        wait_until(
            lambda: (
                client.get("http://orders/x", headers={"user-group": "beta"}).extensions["graylb"].version == "2.0.0"
            )
        )
        consul.deregister(sid)
        wait_until(lambda: len(disco.snapshot("orders").instances) == 1)
        served = client.get("http://orders/x", headers={"user-group": "beta"}).extensions["graylb"]
        assert (served.version, served.fallback_from) == ("1.4.2", "canary")
    balancer.close()


def test_failing_check_removes_instance(consul: FakeConsul, servers) -> None:
    a, b = servers("1.4.2"), servers("1.4.2")
    register(consul, a, "1.4.2")
    sid_b = register(consul, b, "1.4.2")
    disco = ConsulDiscovery(ConsulConfig(consul.url))
    watch = disco.watch("orders")
    assert watch.wait_ready(5) and len(watch.snapshot.instances) == 2
    consul.set_check_status(sid_b, "critical")
    wait_until(lambda: [i.port for i in watch.snapshot.instances] == [a.port])
    consul.set_check_status(sid_b, "warning")  # ?passing drops warning too
    consul.set_check_status(sid_b, "passing")
    wait_until(lambda: len(watch.snapshot.instances) == 2)
    disco.close()


def test_ttl_expiry_then_deregistration(servers) -> None:
    with FakeConsul(min_deregister_after=0.3) as fake:
        s = servers("1.4.2")
        fake.register("orders", id="ttl-1", address=s.host, port=s.port, meta={"version": "1.4.2"}, check_status=None)
        # Register a TTL check over the HTTP API, as a serving process would.
        httpx.put(
            f"{fake.url}/v1/agent/service/register",
            json={
                "Name": "orders",
                "ID": "ttl-1",
                "Address": s.host,
                "Port": s.port,
                "Meta": {"version": "1.4.2"},
                "Check": {"TTL": "0.3s", "Status": "passing", "DeregisterCriticalServiceAfter": "0.3s"},
            },
        ).raise_for_status()
        disco = ConsulDiscovery(ConsulConfig(fake.url))
        watch = disco.watch("orders")
        wait_until(lambda: watch.snapshot and len(watch.snapshot.instances) == 1)
        wait_until(lambda: len(watch.snapshot.instances) == 0, message="TTL expiry removes the instance")
        wait_until(
            lambda: "ttl-1" not in httpx.get(f"{fake.url}/v1/agent/services").json(),
            message="deregistered after the critical period",
        )
        disco.close()


def test_index_going_backwards_resets_and_keeps_watching(consul: FakeConsul, servers) -> None:
    register(consul, servers("1.4.2"), "1.4.2")
    disco = ConsulDiscovery(ConsulConfig(consul.url), wait=2)
    watch = disco.watch("orders")
    assert watch.wait_ready(5)
    # Reset while the client is parked in a blocking query (as after a real snapshot restore).
    # A query that reaches the server only *after* the reset, with the old higher index, hangs
    # (on real Consul too) until its wait runs out; the short wait bounds that case.
    consul.wait_blocking(1, timeout=5)
    consul.reset_index(1)
    register(consul, servers("2.0.0"), "2.0.0")
    wait_until(lambda: len(watch.snapshot.instances) == 2, message="a change after an index reset is still seen")
    disco.close()


def test_bad_entries_are_skipped_with_one_warning(consul: FakeConsul, servers, caplog) -> None:
    good = servers("1.4.2")
    register(consul, good, "1.4.2")
    consul.register("orders", id="no-port", address="127.0.0.1", port=0, meta={"version": "1.4.2"})
    consul.register("orders", id="no-address", address="", port=9, meta={"version": "1.4.2"}, node_address="")
    consul.register("orders", id="bad-weight", address="127.0.0.1", port=9, meta={"version": "1.4.2", "weight": "abc"})
    disco = ConsulDiscovery(ConsulConfig(consul.url))
    with caplog.at_level(logging.WARNING, logger="graylb.discovery"):
        watch = disco.watch("orders")
        assert watch.wait_ready(5)
        snap = watch.snapshot
    ports = sorted(i.port for i in snap.instances)
    assert ports == sorted([good.port, 9])  # bad weight defaulted, the other two skipped
    text = caplog.text
    assert "no-port" in text and "no-address" in text and "bad-weight" in text and "'abc'" in text
    disco.close()


def test_acl_unknown_token_gives_clear_error(servers) -> None:
    with FakeConsul(acl_tokens={"good": "read"}) as fake:
        s = servers("1.4.2")
        fake.register("orders", id="o1", address=s.host, port=s.port, meta={"version": "1.4.2"})
        disco = ConsulDiscovery(ConsulConfig(fake.url, token="wrong-secret"))
        balancer = graylb.Balancer(disco, services=["orders"])
        with pytest.raises(graylb.NoInstanceAvailable) as err:
            balancer.start("orders", graylb.RequestInfo())
        assert "unknown" in str(err.value) and "403" in str(err.value)
        assert "wrong-secret" not in str(err.value)
        for req in fake.requests:
            assert "wrong-secret" not in req.path and "wrong-secret" not in str(req.query)
        ok = ConsulDiscovery(ConsulConfig(fake.url, token="good"))
        assert ok.watch("orders").wait_ready(5) and len(ok.snapshot("orders").instances) == 1
        disco.close(), ok.close()


def test_errors_keep_last_snapshot_and_recover(consul: FakeConsul, servers) -> None:
    register(consul, servers("1.4.2"), "1.4.2")
    disco = ConsulDiscovery(ConsulConfig(consul.url, timeout=2))
    watch = disco.watch("orders")
    assert watch.wait_ready(5)
    for status in (500, 429, 503):
        consul.fail_all(status)
        register(consul, servers("2.0.0"), "2.0.0")  # wakes the blocking query, which now fails
        wait_until(lambda: watch.stale and str(status) in watch.last_error)
        assert watch.snapshot.instances  # still serving the last good list
        consul.heal()
        wait_until(lambda: not watch.stale)
    disco.close()


def test_rules_from_kv_apply_and_bad_document_is_kept_out(consul: FakeConsul, servers) -> None:
    v1, v2 = servers("1.4.2"), servers("2.0.0")
    register(consul, v1, "1.4.2"), register(consul, v2, "2.0.0")
    consul.kv_put("graylb/rules", RULES)
    rules = ConsulRuleSource(ConsulConfig(consul.url), "graylb/rules")
    assert rules.current.service("orders") is not None
    balancer = graylb.Balancer(ConsulDiscovery(ConsulConfig(consul.url)), rules)
    with httpx.Client(transport=graylb.GrayTransport(balancer)) as client:
        assert versions_seen(client, 10, {"user-group": "beta"}) == {"2.0.0"}
        consul.kv_put("graylb/rules", RULES.replace("to: [{subset: canary}]", "to: [{subset: stable}]"))
        wait_until(lambda: versions_seen(client, 5, {"user-group": "beta"}) == {"1.4.2"})
        good_revision = rules.current.revision
        consul.kv_put("graylb/rules", RULES.replace("subset: canary", "subset: canery"))
        wait_until(lambda: rules.last_error is not None)
        assert "unknown subset 'canery'" in str(rules.last_error)
        assert rules.current.revision == good_revision
        assert versions_seen(client, 5, {"user-group": "beta"}) == {"1.4.2"}
    rules.close()
    balancer.close()


def test_a_kv_entry_without_modify_index_is_versioned_by_the_response_index() -> None:
    """A KV entry without ``ModifyIndex`` (or 0) takes the answer's ``X-Consul-Index`` as its
    version: reading it used to raise NameError, so such a document was never applied."""
    body = json.dumps([{"Key": "graylb/rules", "Value": base64.b64encode(RULES.encode()).decode()}]).encode()

    def kv(environ: dict, start_response) -> list[bytes]:
        if "index=" in environ["QUERY_STRING"]:
            time.sleep(0.05)  # a blocking query that saw no change
        start_response("200 OK", [("Content-Type", "application/json"), ("X-Consul-Index", "7")])
        return [body]

    server = serve_wsgi(kv)
    rules = ConsulRuleSource(ConsulConfig(server.url), "graylb/rules", initial_timeout=5)
    try:
        assert rules.last_fetch_error is None
        assert rules.current.service("orders") is not None and rules.modify_index == 7
    finally:
        rules.close()
        server.stop()


def test_a_document_nested_too_deep_is_one_counted_rejection_and_the_watch_waits(consul: FakeConsul) -> None:
    """``services: [[[[...]]]]`` 500 levels deep used to raise RecursionError out of the parser:
    the watch logged "cannot read" and fetched the same document forever. It is a bad document
    like any other: rejected once, counted, and the watch blocks until the key changes."""
    consul.kv_put("graylb/rules", RULES)
    rules = ConsulRuleSource(ConsulConfig(consul.url), "graylb/rules")
    try:
        good = rules.current.revision
        consul.kv_put("graylb/rules", "services: " + "[" * 500 + "]" * 500)
        wait_until(lambda: rules.rejected_count == 1, message="the deep document rejected")
        assert "nested more than 64 levels deep" in str(rules.last_error)
        assert rules.current.revision == good and rules.last_fetch_error is None
        consul.clear_requests()
        consul.kv_put("graylb/rules", RULES.replace("to: [{subset: canary}]", "to: [{subset: stable}]"))
        wait_until(lambda: rules.current.revision != good, message="the next good document applied")
        # The read that brought it may have started before clear_requests(): wait for the next.
        wait_until(lambda: any(r.path.startswith("/v1/kv/") for r in consul.requests), message="the next read")
        reads = [r for r in consul.requests if r.path.startswith("/v1/kv/")]
        assert reads and all("index" in r.query for r in reads), (
            "after the rejection the watch only blocks for the next change"
        )
        assert rules.rejected_count == 1
    finally:
        rules.close()


def test_rules_snapshot_used_when_consul_is_down_at_start(consul: FakeConsul, tmp_path) -> None:
    consul.kv_put("graylb/rules", RULES)
    first = ConsulRuleSource(ConsulConfig(consul.url), "graylb/rules", snapshot_dir=str(tmp_path))
    assert first.current.service("orders") is not None
    first.close()
    consul.stop()
    second = ConsulRuleSource(ConsulConfig(consul.url), "graylb/rules", snapshot_dir=str(tmp_path), initial_timeout=2)
    assert second.current.service("orders") is not None and second.current.revision == "disk"
    second.close()


def test_watch_is_lazy_and_dropped_when_idle(consul: FakeConsul, servers) -> None:
    register(consul, servers("1.4.2"), "1.4.2")
    disco = ConsulDiscovery(ConsulConfig(consul.url), idle_timeout=0.4)
    balancer = graylb.Balancer(disco, services=["orders"])
    assert disco.services() == []
    balancer.start("orders", graylb.RequestInfo())
    assert disco.services() == ["orders"]
    wait_until(lambda: disco.services() == [], message="unused watch dropped")
    balancer.start("orders", graylb.RequestInfo())  # comes back on the next call
    assert disco.services() == ["orders"]
    disco.close()
