"""NacosRegistration against FakeNacos over real sockets: metadata and weight, heartbeats past
several beat timeouts, the server's clientBeatInterval, re-registration on code 10200,
deregistration on close and at interpreter exit, outages and token expiry. What Consul and Nacos
registration do alike (context manager, exit signals, the registry going away) is in
``test_registry_registration.py``."""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from graylb.instance import Health
from graylb.nacos import NacosAuthError, NacosConfig, NacosRegistration
from graylb.nacos.discovery import instances_from_hosts
from graylb.testing.fake_nacos import FakeNacos, RecordedRequest
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
BEAT_TIMEOUT, DELETE_TIMEOUT = 0.5, 1.0
BEAT = 0.1  # our beat interval: 5 beats per beat timeout


@pytest.fixture
def fake() -> Iterator[FakeNacos]:
    with FakeNacos(beat_timeout=BEAT_TIMEOUT, delete_timeout=DELETE_TIMEOUT) as f:
        yield f


def make(fake: FakeNacos, config: NacosConfig | None = None, **kw) -> NacosRegistration:
    args = {
        "ip": "127.0.0.1",
        "port": 9001,
        "version": "2.0.0",
        "beat_interval": BEAT,
        "env": {},
    }  # env: the runner's own SERVICE_IMAGE etc. must not leak in
    args.update(kw)
    return NacosRegistration(config or NacosConfig(fake.url), "orders", **args)


def beats(fake: FakeNacos) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.method == "PUT" and r.path == "/nacos/v1/ns/instance/beat"]


def registrations(fake: FakeNacos, version: str = "v1") -> list[RecordedRequest]:
    return [r for r in fake.requests if r.method == "POST" and r.path == f"/nacos/{version}/ns/instance"]


def deregistrations(fake: FakeNacos, version: str = "v1") -> list[RecordedRequest]:
    return [r for r in fake.requests if r.method == "DELETE" and r.path == f"/nacos/{version}/ns/instance"]


def listed(fake: FakeNacos, service: str = "orders", **params: str) -> list[dict]:
    """The instance list as a client sees it (HTTP, healthy and unhealthy)."""
    query = {"serviceName": service, "healthyOnly": "false", **params}
    return httpx.get(f"{fake.url}/nacos/v1/ns/instance/list", params=query, timeout=5).json()["hosts"]


def read_back(fake: FakeNacos) -> list:
    """The instances as graylb's NacosDiscovery reads them."""
    problems: list[str] = []
    out = instances_from_hosts("orders", listed(fake), lambda *a: problems.append(a[-1]))
    assert problems == []
    return out


def stored(fake: FakeNacos, **kw) -> list[dict]:
    return fake.instances("orders", **kw)


def test_registers_metadata_and_weight_and_stays_healthy_past_several_beat_timeouts(fake: FakeNacos) -> None:
    reg = make(fake, lane="beta", weight=0.5, metadata={"zone": "a"})
    with reg:
        [inst] = stored(fake)
        assert inst["instanceId"] == reg.instance_id == "127.0.0.1#9001#DEFAULT#DEFAULT_GROUP@@orders"
        assert (inst["ip"], inst["port"], inst["weight"], inst["healthy"], inst["enabled"], inst["ephemeral"]) == (
            "127.0.0.1",
            9001,
            0.5,
            True,
            True,
            True,
        )
        assert inst["metadata"] == {
            "zone": "a",
            "version": "2.0.0",
            "lane": "beta",
            "preserved.heart.beat.interval": "100",
        }
        [form] = [r.form for r in registrations(fake)]
        assert (
            form["serviceName"] == ["orders"]
            and form["groupName"] == ["DEFAULT_GROUP"]
            and form["namespaceId"] == ["public"]
        )
        assert form["clusterName"] == ["DEFAULT"] and form["ephemeral"] == ["true"] and form["weight"] == ["0.5"]

        # 20 beats = 4 beat timeouts (2 delete timeouts): healthy at every look.
        def beat_and_check() -> bool:
            [i] = stored(fake)
            assert i["healthy"], "instance went unhealthy while beating"
            return len(beats(fake)) >= 20

        wait_until(beat_and_check, message="20 heartbeats")
        [graylb_view] = read_back(fake)
        assert (
            graylb_view.version,
            graylb_view.lane,
            graylb_view.weight,
            graylb_view.health,
            graylb_view.labels.get("zone"),
        ) == ("2.0.0", "beta", 50, Health.PASSING, "a")
        # The first beat carries the beat JSON; the server says lightBeatEnabled, so later ones don't.
        first, *rest = beats(fake)
        beat = json.loads(first.query["beat"][0])
        assert (
            beat["ip"] == "127.0.0.1"
            and beat["port"] == 9001
            and beat["cluster"] == "DEFAULT"
            and beat["weight"] == 0.5
        )
        assert beat["metadata"]["version"] == "2.0.0" and beat["serviceName"] == "DEFAULT_GROUP@@orders"
        assert rest and all("beat" not in r.query for r in rest)
        assert all(
            r.query["serviceName"] == ["orders"] and r.query["ip"] == ["127.0.0.1"] and r.query["port"] == ["9001"]
            for r in rest
        )
    assert stored(fake) == []


def test_without_beats_the_fake_expires_it(fake: FakeNacos) -> None:
    """The control for the test above: the same registration with its heartbeat stopped goes
    unhealthy after the beat timeout and disappears after the delete timeout."""
    reg = make(fake)
    reg.register()
    reg._stop.set()  # silence the heartbeat, keep the registration
    wait_until(lambda: stored(fake) and not stored(fake)[0]["healthy"], message="unhealthy")
    wait_until(lambda: stored(fake) == [], message="removal")
    reg.close()  # deregistering what the server already dropped is fine
    assert not reg.registered


def test_weight_zero_and_nacos_weight_scaling(fake: FakeNacos) -> None:
    with make(fake, weight=0):
        assert stored(fake)[0]["weight"] == 0.0
        assert [i.weight for i in read_back(fake)] == [0]  # graylb: no traffic
    with make(fake, port=9002, weight=1.0):
        assert [i.weight for i in read_back(fake)] == [100]  # Nacos's default weighs graylb's default
    with make(fake, port=9003, weight=250):
        assert [i.weight for i in read_back(fake)] == [10000]  # x100, capped


def test_client_beat_interval_from_the_server_is_honoured(fake: FakeNacos) -> None:
    """The server answers each beat with clientBeatInterval (the instance's
    preserved.heart.beat.interval); the heartbeat follows it instead of its own interval."""
    reg = make(fake, beat_interval=0.05, metadata={"preserved.heart.beat.interval": "400"})
    seen: list[float] = []
    with reg:
        start = time.monotonic()

        def track() -> bool:
            count = len(beats(fake))
            while len(seen) < count:
                seen.append(time.monotonic())
            return count >= 4

        wait_until(track, message="4 heartbeats")
        assert reg.current_interval == pytest.approx(0.4)
    first_gap = seen[0] - start
    later_gaps = [b - a for a, b in itertools.pairwise(seen[1:])]
    assert first_gap < 0.3  # the first beat came on our own 50 ms schedule
    assert all(gap >= 0.3 for gap in later_gaps), later_gaps  # then every 400 ms, as told


def test_default_beat_interval_needs_no_declaration(fake: FakeNacos) -> None:
    reg = NacosRegistration(NacosConfig(fake.url), "orders", ip="127.0.0.1", port=9001, version="2.0.0")
    assert "preserved.heart.beat.interval" not in reg.metadata and reg.current_interval == 5.0
    slow = NacosRegistration(
        NacosConfig(fake.url), "orders", ip="127.0.0.1", port=9001, version="2.0.0", beat_interval=20
    )
    assert slow.metadata["preserved.heart.beat.interval"] == "20000"
    assert (
        slow.metadata["preserved.heart.beat.timeout"] == "60000"
        and slow.metadata["preserved.ip.delete.timeout"] == "120000"
    )


def test_server_forgets_the_instance_code_10200_reregisters(fake: FakeNacos, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="graylb.nacos")
    with make(fake, lane="beta", weight=2.5) as reg:
        wait_until(lambda: len(beats(fake)) >= 2, message="light beats")
        fake.deregister("orders", "127.0.0.1", 9001)  # a restart without its data, say
        assert stored(fake) == []
        [inst] = wait_until(lambda: stored(fake), message="re-registration")
        assert inst["metadata"]["lane"] == "beta" and inst["weight"] == 2.5 and inst["healthy"]
        assert len(registrations(fake)) == 2  # a full registration, not a beat re-creation
        wait_until(lambda: len(beats(fake)) >= 6, message="beats after re-registration")
        assert reg.registered and stored(fake)[0]["healthy"]
    [warning] = [r for r in caplog.records if "no longer knows" in r.getMessage()]
    assert warning.levelno == logging.WARNING and "code 10200" in warning.getMessage()


def test_close_deregisters_stops_heartbeat_and_is_idempotent(fake: FakeNacos) -> None:
    reg = make(fake)
    reg.register()
    thread = reg._thread
    assert thread is not None and thread.is_alive()
    wait_until(lambda: len(beats(fake)) >= 2, message="a heartbeat")
    reg.close()
    assert not thread.is_alive()  # joined: no heartbeat after close
    assert stored(fake) == [] and not reg.registered
    [dereg] = deregistrations(fake)
    assert (
        dereg.query["ip"] == ["127.0.0.1"] and dereg.query["port"] == ["9001"] and dereg.query["ephemeral"] == ["true"]
    )
    sent = len(beats(fake))
    reg.close()
    reg.deregister()
    time.sleep(3 * BEAT)  # three beat intervals: a live heartbeat would have beaten by now
    assert len(deregistrations(fake)) == 1 and len(beats(fake)) == sent


def test_persistent_instance_sends_no_beats_and_deregisters_when_already_gone(fake: FakeNacos) -> None:
    reg = make(fake, ephemeral=False)
    reg.register()
    assert reg._thread is None and stored(fake)[0]["ephemeral"] is False
    fake.deregister("orders", "127.0.0.1", 9001)
    reg.deregister()  # Nacos answers ok for an instance it no longer has: fine
    assert not reg.registered and beats(fake) == []


def test_heartbeat_logs_once_per_outage_and_reregisters_after_it(
    fake: FakeNacos, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage longer than the delete timeout: the fake drops the instance meanwhile; the
    first beat after it gets 10200 and the instance registers again."""
    caplog.set_level(logging.INFO, logger="graylb.nacos")
    with make(fake) as reg:
        fake.fail_all(500)
        start = len(beats(fake))
        wait_until(lambda: len(beats(fake)) >= start + 4, message="beats during the outage")
        wait_until(lambda: stored(fake) == [], message="the fake to expire the silent instance")
        fake.heal()
        wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records), message="recovery log line")
        wait_until(lambda: stored(fake) and stored(fake)[0]["healthy"], message="registered again")
        assert reg.registered
    failing = [r for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING
    assert "Nacos unavailable while sending a heartbeat" in failing[0].getMessage() and "500" in failing[0].getMessage()
    assert len([r for r in caplog.records if "recovered" in r.getMessage()]) == 1


def test_with_auth_token_expiry_mid_heartbeat() -> None:
    with FakeNacos(auth={"nacos": "pw-reg-42"}, beat_timeout=BEAT_TIMEOUT, delete_timeout=DELETE_TIMEOUT) as fake:
        config = NacosConfig(fake.url, username="nacos", password="pw-reg-42")
        with make(fake, config) as reg:
            wait_until(lambda: len(beats(fake)) >= 2, message="beats")
            fake.expire_tokens()
            n = len(beats(fake))
            wait_until(lambda: len(beats(fake)) >= n + 4, message="beats after the expiry")
            assert stored(fake)[0]["healthy"] and reg.auth.logins == 2
        assert stored(fake) == []
        for r in fake.requests:
            assert "pw-reg-42" not in r.target
        with pytest.raises(NacosAuthError, match="login failed for user 'nacos'") as err:
            make(fake, NacosConfig(fake.url, username="nacos", password="nope-1234")).register()
        assert "nope-1234" not in str(err.value)


def test_v2_api_namespace_group_and_cluster(fake: FakeNacos) -> None:
    config = NacosConfig(fake.url, namespace="dev", group="PAY", api_version="v2")
    with make(fake, config, cluster="c1") as reg:
        assert reg.instance_id == "127.0.0.1#9001#c1#PAY@@orders"
        assert stored(fake) == []  # not in public / DEFAULT_GROUP
        [inst] = stored(fake, namespace="dev", group="PAY")
        assert inst["clusterName"] == "c1" and inst["metadata"]["version"] == "2.0.0"
        assert len(registrations(fake, "v2")) == 1
        wait_until(lambda: len(beats(fake)) >= 3, message="beats (always the v1 endpoint)")
        assert all(b.query["namespaceId"] == ["dev"] and b.query["groupName"] == ["PAY"] for b in beats(fake))
        assert stored(fake, namespace="dev", group="PAY")[0]["healthy"]
    assert stored(fake, namespace="dev", group="PAY") == [] and len(deregistrations(fake, "v2")) == 1


def test_rejects_bad_arguments() -> None:
    cfg = NacosConfig("http://127.0.0.1:1")
    for bad in (10000.5, -1, math.nan, "abc"):
        with pytest.raises(ValueError, match="weight"):
            NacosRegistration(cfg, "orders", ip="h", port=1, version="2.0.0", weight=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="port"):
        NacosRegistration(cfg, "orders", ip="h", port=0, version="2.0.0")
    with pytest.raises(ValueError, match="@@"):
        NacosRegistration(cfg, "G@@orders", ip="h", port=1, version="2.0.0")
    with pytest.raises(ValueError, match="beat_interval"):
        NacosRegistration(cfg, "orders", ip="h", port=1, version="2.0.0", beat_interval=0)
    assert "password" not in repr(
        NacosRegistration(
            NacosConfig("h:1", username="u", password="pw-xyz-1"), "orders", ip="h", port=1, version="2.0.0"
        )
    )


def test_interpreter_exit_deregisters(fake: FakeNacos) -> None:
    script = (
        "import sys\n"
        "from graylb.nacos import NacosConfig, NacosRegistration\n"
        "NacosRegistration(NacosConfig(sys.argv[1]), 'orders', ip='127.0.0.1', port=9001, version='2.0.0')"
        ".register()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NACOS_")}
    subprocess.run([sys.executable, "-c", script, fake.url], check=True, timeout=30, cwd=ROOT, env=env)
    assert len(registrations(fake)) == 1 and len(deregistrations(fake)) == 1  # the atexit hook
    assert stored(fake) == []
