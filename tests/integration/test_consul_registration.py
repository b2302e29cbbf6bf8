"""ConsulRegistration against FakeConsul over real sockets (py-consul on the wire): what is Consul's
own (TTL and HTTP checks, Weights, the agent forgetting us, ACL tokens). What Consul and Nacos
registration do alike (context manager, exit signals, the registry going away) is in
``test_registry_registration.py``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import httpx
import pytest

from graylb.consul import ConsulACLError, ConsulConfig, ConsulRegistration
from graylb.consul.discovery import instances_from_health
from graylb.consul.registration import go_duration
from graylb.instance import Health
from graylb.testing import serve_wsgi
from graylb.testing.fake_consul import FakeConsul
from tests.conftest import wait_until

TTL = 0.6


@pytest.fixture
def fake() -> Iterator[FakeConsul]:
    with FakeConsul() as f:
        yield f


def health(fake: FakeConsul, service: str = "orders") -> list[dict]:
    return httpx.get(f"{fake.url}/v1/health/service/{service}", timeout=5).json()


def check_status(entry: dict, check_id: str) -> str:
    return next(c["Status"] for c in entry["Checks"] if c["CheckID"] == check_id)


def passes(fake: FakeConsul, check_id: str) -> int:
    return sum(1 for r in fake.requests if r.method == "PUT" and r.path == f"/v1/agent/check/pass/{check_id}")


def registrations(fake: FakeConsul) -> list[dict]:
    return [json.loads(r.body) for r in fake.requests if r.path == "/v1/agent/service/register"]


def read_back(fake: FakeConsul) -> list:
    """The instances as graylb's ConsulDiscovery reads them."""
    problems: list[str] = []
    out = instances_from_health("orders", health(fake), lambda *a: problems.append(a[-1]))
    assert problems == []
    return out


def make(fake: FakeConsul, **kw) -> ConsulRegistration:
    args = {
        "address": "127.0.0.1",
        "port": 9001,
        "version": "2.0.0",
        "ttl": TTL,
        "env": {},
    }  # env: the runner's own SERVICE_IMAGE etc. must not leak in
    args.update(kw)
    return ConsulRegistration(ConsulConfig(fake.url), "orders", **args)


def test_go_duration() -> None:
    assert [go_duration(s) for s in (60, 90, 10, 0.6, 3600, 1.5)] == ["1m", "90s", "10s", "600ms", "1h", "1500ms"]


def test_registers_meta_weights_and_stays_passing_past_several_ttls(fake: FakeConsul) -> None:
    reg = make(fake, lane="beta", weight=5, meta={"zone": "a"}, tags=["team=payments", "http"])
    with reg:
        [entry] = health(fake)
        svc = entry["Service"]
        assert svc["ID"] == "orders-127.0.0.1-9001" and svc["Address"] == "127.0.0.1" and svc["Port"] == 9001
        assert svc["Meta"] == {"version": "2.0.0", "lane": "beta", "weight": "5", "zone": "a"}
        assert svc["Weights"] == {"Passing": 5, "Warning": 1}
        assert svc["Tags"] == ["team=payments", "http"]
        # Passing as soon as register() returns (first pass sent at once).
        assert check_status(entry, reg.check_id) == "passing"
        [body] = registrations(fake)
        [check] = body["checks"]
        assert check["TTL"] == "600ms" and check["DeregisterCriticalServiceAfter"] == "1m"

        # Several TTLs' worth of heartbeats (every ttl/3): still passing at every look.
        def beat_and_check() -> bool:
            [e] = health(fake)
            assert check_status(e, reg.check_id) == "passing"
            return passes(fake, reg.check_id) >= 10  # ~3.3 TTLs

        wait_until(beat_and_check, message="10 heartbeats")
        [inst] = read_back(fake)
        assert (
            inst.version,
            inst.lane,
            inst.weight,
            inst.health,
            inst.labels.get("zone"),
            inst.labels.get("team"),
        ) == ("2.0.0", "beta", 5, Health.PASSING, "a", "payments")
    assert health(fake) == []


def test_weight_zero_is_carried_in_meta(fake: FakeConsul) -> None:
    with make(fake, weight=0):
        svc = health(fake)[0]["Service"]
        assert svc["Weights"]["Passing"] == 1  # Consul's minimum
        assert svc["Meta"]["weight"] == "0"
        assert [i.weight for i in read_back(fake)] == [0]  # what ConsulDiscovery routes by


def test_close_deregisters_stops_heartbeat_and_is_idempotent(fake: FakeConsul) -> None:
    reg = make(fake)
    reg.register()
    thread = reg._thread
    assert thread is not None and thread.is_alive()
    wait_until(lambda: passes(fake, reg.check_id) >= 2, message="a heartbeat")
    reg.close()
    assert not thread.is_alive()  # joined: no heartbeat after close
    assert health(fake) == [] and not reg.registered
    sent = passes(fake, reg.check_id)
    deregs = [r for r in fake.requests if r.path.startswith("/v1/agent/service/deregister/")]
    reg.close()
    reg.deregister()
    assert [r for r in fake.requests if r.path.startswith("/v1/agent/service/deregister/")] == deregs  # nothing re-sent
    assert passes(fake, reg.check_id) == sent


def test_deregister_of_an_id_the_agent_already_forgot_is_fine(fake: FakeConsul) -> None:
    reg = make(fake, ttl=None)  # no heartbeat to re-register it
    reg.register()
    fake.deregister(reg.service_id)
    reg.deregister()  # the agent answers 404: fine
    assert not reg.registered


def test_agent_forgets_us_heartbeat_reregisters(fake: FakeConsul) -> None:
    with make(fake, lane="beta") as reg:
        fake.deregister(reg.service_id)  # the agent restarted without our registration
        assert health(fake) == []
        entry = wait_until(lambda: health(fake), message="re-registration")[0]
        assert entry["Service"]["Meta"]["lane"] == "beta"
        wait_until(lambda: check_status(health(fake)[0], reg.check_id) == "passing", message="passing again")
        assert len(registrations(fake)) == 2


def test_heartbeat_logs_once_per_outage_and_once_on_recovery(
    fake: FakeConsul, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="graylb.consul")
    with make(fake) as reg:
        fake.fail_all(500)
        start = passes(fake, reg.check_id)
        wait_until(lambda: passes(fake, reg.check_id) >= start + 4, message="heartbeats during the outage")
        fake.heal()
        wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records), message="recovery log line")
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING
    assert "500" in failing[0].getMessage()
    assert len([r for r in caplog.records if "recovered" in r.getMessage()]) == 1


def test_http_check_variant(fake: FakeConsul) -> None:
    server = serve_wsgi(lambda environ, start: (start("200 OK", []), [b"ok"])[1])
    try:
        reg = make(fake, http_check=f"{server.url}/health", check_interval=0.2, deregister_after=90)
        with reg:
            [check] = registrations(fake)[0]["checks"]
            assert check == {
                "CheckID": reg.check_id,
                "Name": "graylb HTTP check for orders",
                "HTTP": f"{server.url}/health",
                "Interval": "200ms",
                "DeregisterCriticalServiceAfter": "90s",
            }
            assert reg._thread is None  # the agent runs the check: no heartbeat thread
            wait_until(lambda: check_status(health(fake)[0], reg.check_id) == "passing", message="HTTP check passing")
            assert passes(fake, reg.check_id) == 0
        assert health(fake) == []
    finally:
        server.stop()


def test_acl_read_token_cannot_register_and_token_stays_out_of_urls() -> None:
    with FakeConsul(acl_tokens={"w-secret-1": "write", "r-secret-2": "read"}) as fake:
        reg = ConsulRegistration(
            ConsulConfig(fake.url, token="r-secret-2"), "orders", address="127.0.0.1", port=9001, version="2.0.0"
        )
        with pytest.raises(ConsulACLError) as err:
            reg.register()
        assert "403" in str(err.value) and "lacks a permission" in str(err.value)
        assert "r-secret-2" not in str(err.value)
        with ConsulRegistration(
            ConsulConfig(fake.url, token="w-secret-1"),
            "orders",
            address="127.0.0.1",
            port=9001,
            version="2.0.0",
            ttl=TTL,
        ) as ok:
            wait_until(lambda: passes(fake, ok.check_id) >= 2, message="heartbeats")
        for r in fake.requests:
            assert "secret" not in r.target
        assert all(r.headers.get("x-consul-token") in ("r-secret-2", "w-secret-1") for r in fake.requests)


def test_rejects_bad_arguments() -> None:
    cfg = ConsulConfig("http://127.0.0.1:1")
    with pytest.raises(ValueError, match="weight"):
        ConsulRegistration(cfg, "orders", address="h", port=1, version="2.0.0", weight=10001)
    with pytest.raises(ValueError, match="meta key"):
        ConsulRegistration(cfg, "orders", address="h", port=1, version="2.0.0", meta={"consul-x": "1"})
