"""FakeNacos over real sockets, checked with raw httpx and with the official nacos-sdk-python client.

These are contract tests: each asserts what a real Nacos 2.x server does on the wire, so the same
assertions can later run against a real server. Tests named ``test_fake_only_*`` check behaviour
that is specific to the fake (its controls, or a documented deviation) and must be skipped there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pickle
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any
from urllib.error import HTTPError

import httpx
import nacos
import pytest
from nacos.exception import NacosException

from graylb.testing.fake_nacos import FakeNacos, config_md5, java_url_encode
from tests.conftest import wait_until

USERS = {"nacos": "s3cret"}
W, L = "\x02", "\x01"  # Listening-Configs word / line separators


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # nacos-sdk-python uses urllib, which honours proxy variables
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeNacos]:
    with FakeNacos(long_poll_min_hold=0.2) as f:
        yield f


@pytest.fixture
def http(fake: FakeNacos) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{fake.url}/nacos", timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def secured() -> Iterator[FakeNacos]:
    with FakeNacos(auth=USERS, long_poll_min_hold=0.2) as f:
        yield f


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


def client_for(fake: FakeNacos) -> httpx.Client:
    return httpx.Client(base_url=f"{fake.url}/nacos", timeout=10, trust_env=False)


def listing(http: httpx.Client, service: str = "orders", **params: Any) -> dict[str, Any]:
    r = http.get("/v1/ns/instance/list", params={"serviceName": service, **params})
    assert r.status_code == 200, r.text
    return r.json()


def ips(body: dict[str, Any]) -> list[str]:
    return sorted(h["ip"] for h in body["hosts"])


def entry(data_id: str, group: str, md5: str, tenant: str | None = None) -> str:
    """One Listening-Configs entry: 3 fields, or 4 with a tenant (nacos-sdk-python always sends 4)."""
    return W.join([data_id, group, md5, *([tenant] if tenant is not None else [])]) + L


def listen(
    http: httpx.Client, *entries: str, timeout_ms: int | None = 30000, no_hangup: bool = False
) -> httpx.Response:
    headers = {} if timeout_ms is None else {"Long-Pulling-Timeout": str(timeout_ms)}
    if no_hangup:
        headers["Long-Pulling-Timeout-No-Hangup"] = "true"
    return http.post(
        "/v1/cs/configs/listener",
        data={"Listening-Configs": "".join(entries)},
        headers=headers,
        timeout=(timeout_ms or 0) / 1000 + 10,
    )


def register(http: httpx.Client, ip: str, port: int = 8080, service: str = "orders", **params: Any) -> httpx.Response:
    return http.post("/v1/ns/instance", params={"serviceName": service, "ip": ip, "port": str(port), **params})


# ---- naming: instance list shape and filtering ------------------------------------------------


def test_instance_list_shape(fake: FakeNacos, http: httpx.Client) -> None:
    iid = fake.register("orders", "10.0.0.1", 8080, weight=2, metadata={"version": "1.4.2", "lane": "gray"})
    assert iid == "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"
    r = http.get("/v1/ns/instance/list", params={"serviceName": "orders"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {
        "name",
        "groupName",
        "clusters",
        "cacheMillis",
        "hosts",
        "lastRefTime",
        "checksum",
        "allIPs",
        "reachProtectionThreshold",
        "valid",
    }
    assert body["name"] == "DEFAULT_GROUP@@orders" and body["groupName"] == "DEFAULT_GROUP" and body["clusters"] == ""
    assert body["cacheMillis"] == 10000 and abs(body["lastRefTime"] - time.time() * 1000) < 60_000
    assert (
        isinstance(body["checksum"], str)
        and body["allIPs"] is False
        and body["reachProtectionThreshold"] is False
        and body["valid"] is True
    )
    (host,) = body["hosts"]
    assert host == {
        "instanceId": "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders",
        "ip": "10.0.0.1",
        "port": 8080,
        "weight": 2.0,
        "healthy": True,
        "enabled": True,
        "ephemeral": True,
        "clusterName": "DEFAULT",
        "serviceName": "DEFAULT_GROUP@@orders",
        "metadata": {"version": "1.4.2", "lane": "gray"},
        "instanceHeartBeatInterval": 5000,
        "instanceHeartBeatTimeOut": 15000,
        "ipDeleteTimeout": 30000,
        "instanceIdGenerator": "simple",
    }
    assert '"weight":2.0' in r.text, "weight is a double on the wire"


def test_register_over_http_form_query_and_sdk_quirks(fake: FakeNacos, http: httpx.Client) -> None:
    r = http.post(
        "/v1/ns/instance",
        data={
            "serviceName": "orders",
            "ip": "10.0.0.1",
            "port": "8080",
            "weight": "3",
            "clusterName": "blue",
            "metadata": json.dumps({"version": "2.0.0"}),
        },
    )
    assert r.status_code == 200 and r.text == "ok" and r.headers["Content-Type"].startswith("text/plain")
    # what nacos-sdk-python sends: Python booleans, `enable` (not `enabled`), legacy metadata
    assert register(http, "10.0.0.2", enable="True", healthy="False", ephemeral="True", metadata="a=1,b=2").text == "ok"
    assert register(http, "10.0.0.3", enabled="FALSE").text == "ok"
    assert register(http, "10.0.0.4", enabled="true", enable="false").text == "ok", "`enabled` wins over `enable`"
    hosts = {h["ip"]: h for h in listing(http)["hosts"]}
    assert set(hosts) == {"10.0.0.1", "10.0.0.2", "10.0.0.4"}, "disabled instances are not listed"
    blue = hosts["10.0.0.1"]
    assert (
        blue["weight"] == 3.0
        and blue["clusterName"] == "blue"
        and blue["metadata"] == {"version": "2.0.0"}
        and blue["healthy"] is True
    )
    assert blue["instanceId"] == "10.0.0.1#8080#blue#DEFAULT_GROUP@@orders"
    assert hosts["10.0.0.2"]["healthy"] is False and hosts["10.0.0.2"]["metadata"] == {"a": "1", "b": "2"}
    assert [i["enabled"] for i in fake.instances("orders") if i["ip"] == "10.0.0.3"] == [False]
    # a grouped serviceName wins over groupName; an ungrouped one gets groupName@@
    assert register(http, "10.0.1.1", service="PAY@@checkout", groupName="ignored").text == "ok"
    body = listing(http, "checkout", groupName="PAY")
    assert body["name"] == "PAY@@checkout" and body["groupName"] == "PAY" and ips(body) == ["10.0.1.1"]
    assert ips(listing(http, "PAY@@checkout")) == ["10.0.1.1"]
    # re-registering the same ip:port replaces the instance (one per ip:port in 2.x)
    assert register(http, "10.0.0.1", weight="7", clusterName="blue").text == "ok"
    assert [h["weight"] for h in listing(http)["hosts"] if h["ip"] == "10.0.0.1"] == [7.0]


def test_fake_only_sdk_cluster_none_is_default(fake: FakeNacos, http: httpx.Client) -> None:
    # The brief: clusterName=None (nacos-sdk-python's unset cluster) counts as DEFAULT. A real 2.x
    # server keeps it as a cluster literally named "None".
    assert register(http, "10.0.0.2", clusterName="None").text == "ok"
    assert [h["clusterName"] for h in listing(http)["hosts"]] == ["DEFAULT"]


def test_register_validation(http: httpx.Client) -> None:
    base = {"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"}
    cases = [
        ({"ip": "10.0.0.1", "port": "1"}, "Param 'serviceName' is required."),
        ({"serviceName": "orders", "port": "1"}, "Param 'ip' is required."),
        ({"serviceName": "orders", "ip": "10.0.0.1"}, "Param 'port' is required."),
        ({**base, "port": "x"}, 'For input string: "x"'),
        ({**base, "weight": "10000.5"}, "instance format invalid: The weights range from 0.0 to 10000.0"),
        ({**base, "weight": "-1"}, "instance format invalid: The weights range from 0.0 to 10000.0"),
        ({**base, "metadata": "oops"}, "metadata format incorrect:oops"),
        (
            {**base, "clusterName": "a_b"},
            "Instance 'clusterName' should be characters with only 0-9a-zA-Z-. (current: a_b)",
        ),
        ({**base, "serviceName": "@@orders"}, "Param 'serviceName' is illegal, groupName can't be empty"),
        (
            {**base, "metadata": json.dumps({"preserved.heart.beat.timeout": "1000"})},
            "Instance 'heart beat interval' must less than 'heart beat timeout' and 'ip delete timeout'.",
        ),
    ]
    for params, message in cases:
        r = http.post("/v1/ns/instance", params=params)
        assert (r.status_code, r.text) == (400, message), params
    for weight in ("0", "10000"):
        assert http.post("/v1/ns/instance", params={**base, "weight": weight}).text == "ok"
        assert [h["weight"] for h in listing(http)["hosts"]] == [float(weight)], "weight 0 is legal"


def test_unknown_service_and_missing_service_name(http: httpx.Client) -> None:
    body = listing(http, "nope")
    assert body["hosts"] == [] and body["name"] == "DEFAULT_GROUP@@nope" and body["reachProtectionThreshold"] is False
    r = http.get("/v1/ns/instance/list")
    assert (r.status_code, r.text) == (400, "Param 'serviceName' is required.")
    r = http.get("/v1/ns/instance/list", params={"serviceName": "G@@"})
    assert r.status_code == 400 and r.text.startswith("Param 'serviceName' is illegal")


def test_enabled_filter_and_healthy_only(fake: FakeNacos, http: httpx.Client) -> None:
    fake.register("orders", "10.0.0.1", 1)
    fake.register("orders", "10.0.0.2", 1, healthy=False)
    fake.register("orders", "10.0.0.3", 1, enabled=False)
    assert ips(listing(http)) == ["10.0.0.1", "10.0.0.2"]
    for flag in ("true", "True", "TRUE"):
        assert ips(listing(http, healthyOnly=flag)) == ["10.0.0.1"], flag
    assert ips(listing(http, healthyOnly="false")) == ["10.0.0.1", "10.0.0.2"]
    fake.set_enabled("orders", "10.0.0.3", 1, True)
    assert ips(listing(http)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_protection_threshold_returns_everyone_as_healthy(fake: FakeNacos, http: httpx.Client) -> None:
    fake.register("orders", "10.0.0.1", 1, healthy=False)
    fake.register("orders", "10.0.0.2", 1, healthy=False)
    for params in ({}, {"healthyOnly": "true"}):
        body = listing(http, **params)
        assert body["reachProtectionThreshold"] is True, params
        assert ips(body) == ["10.0.0.1", "10.0.0.2"] and all(h["healthy"] for h in body["hosts"]), (
            "2.x returns healthy copies"
        )
    assert [i["healthy"] for i in fake.instances("orders")] == [False, False], "the copies do not change the instances"
    fake.set_healthy("orders", "10.0.0.1", 1, True)
    body = listing(http)
    assert body["reachProtectionThreshold"] is False and {h["ip"]: h["healthy"] for h in body["hosts"]} == {
        "10.0.0.1": True,
        "10.0.0.2": False,
    }
    assert ips(listing(http, healthyOnly="true")) == ["10.0.0.1"]
    fake.deregister("orders", "10.0.0.1", 1)
    fake.deregister("orders", "10.0.0.2", 1)
    body = listing(http)
    assert body["hosts"] == [] and body["reachProtectionThreshold"] is False, (
        "an empty list never reaches the threshold"
    )


def test_fake_only_protection_threshold_settings() -> None:
    with FakeNacos(protect_threshold=0.5) as fake, client_for(fake) as http:
        fake.register("orders", "10.0.0.1", 1)
        fake.register("orders", "10.0.0.2", 1, healthy=False)
        body = listing(http)
        assert body["reachProtectionThreshold"] is True and all(h["healthy"] for h in body["hosts"]), "1/2 <= 0.5"
        fake.set_protect_threshold("orders", 0.4)
        body = listing(http)
        assert body["reachProtectionThreshold"] is False and sorted(h["healthy"] for h in body["hosts"]) == [
            False,
            True,
        ]


def test_clusters_filter_and_per_cluster_protection(fake: FakeNacos, http: httpx.Client) -> None:
    fake.register("orders", "10.0.0.1", 1, cluster="A")
    fake.register("orders", "10.0.0.2", 1, cluster="B", healthy=False)
    fake.register("orders", "10.0.0.3", 1, cluster="B")
    assert ips(listing(http, clusters="A")) == ["10.0.0.1"]
    body = listing(http, clusters="A,B")
    assert ips(body) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] and body["clusters"] == "A,B"
    fake.set_healthy("orders", "10.0.0.3", 1, False)
    body = listing(http, clusters="B")
    assert body["reachProtectionThreshold"] is True and all(h["healthy"] for h in body["hosts"]), (
        "the ratio is computed within the asked clusters"
    )
    assert listing(http)["reachProtectionThreshold"] is False, "1 of 3 healthy overall"


def test_fake_only_checksum_tracks_the_hosts(fake: FakeNacos, http: httpx.Client) -> None:
    # The brief asks for an md5 of the hosts; a real 2.x server sends "".
    fake.register("orders", "10.0.0.1", 1)
    first = listing(http)["checksum"]
    assert len(first) == 32 and listing(http)["checksum"] == first, "stable while nothing changes"
    fake.set_weight("orders", "10.0.0.1", 1, 5)
    assert listing(http)["checksum"] != first


def test_update_detail_and_deregister(fake: FakeNacos, http: httpx.Client) -> None:
    assert register(http, "10.0.0.1", metadata=json.dumps({"version": "1"})).text == "ok"
    r = http.put(
        "/v1/ns/instance",
        params={
            "serviceName": "orders",
            "ip": "10.0.0.1",
            "port": "8080",
            "weight": "5",
            "metadata": json.dumps({"lane": "gray"}),
        },
    )
    assert (r.status_code, r.text) == (200, "ok")
    r = http.get("/v1/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
    assert r.json() == {
        "service": "DEFAULT_GROUP@@orders",
        "ip": "10.0.0.1",
        "port": 8080,
        "clusterName": "DEFAULT",
        "weight": 5.0,
        "healthy": True,
        "instanceId": "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders",
        "metadata": {"version": "1", "lane": "gray"},
    }
    assert (
        http.put(
            "/v1/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080", "enable": "false"}
        ).text
        == "ok"
    )
    assert listing(http)["hosts"] == [], "an update can disable the instance"
    r = http.put("/v1/ns/instance", params={"serviceName": "ghost", "ip": "10.0.0.1", "port": "8080"})
    assert r.status_code == 400 and r.text.startswith("service not found, namespace: public, service: ")
    assert (
        http.delete("/v1/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"}).text == "ok"
    )
    assert fake.instances("orders") == []
    assert (
        http.delete("/v1/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"}).text == "ok"
    ), "idempotent"
    assert (
        http.delete("/v1/ns/instance", params={"serviceName": "ghost", "ip": "10.0.0.1", "port": "8080"}).text == "ok"
    )
    r = http.get("/v1/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
    assert (r.status_code, r.text) == (404, "no ips found for cluster DEFAULT in service DEFAULT_GROUP@@orders")


def test_service_ephemerality_is_fixed(http: httpx.Client) -> None:
    assert register(http, "10.0.0.1").text == "ok"
    r = register(http, "10.0.0.2", ephemeral="false")
    assert r.status_code == 400 and "can't register persistent instance" in r.text
    assert register(http, "10.0.0.9", service="db", ephemeral="false").text == "ok"
    assert [h["ephemeral"] for h in listing(http, "db")["hosts"]] == [False]
    # deregistering with the wrong kind finds nothing
    assert http.delete("/v1/ns/instance", params={"serviceName": "db", "ip": "10.0.0.9", "port": "8080"}).text == "ok"
    assert ips(listing(http, "db")) == ["10.0.0.9"]
    assert (
        http.delete(
            "/v1/ns/instance", params={"serviceName": "db", "ip": "10.0.0.9", "port": "8080", "ephemeral": "false"}
        ).text
        == "ok"
    )
    assert listing(http, "db")["hosts"] == []


def test_service_list(fake: FakeNacos, http: httpx.Client) -> None:
    fake.register("alpha", "10.0.0.1", 1)
    fake.register("beta", "10.0.0.2", 1)
    fake.register("gamma", "10.0.0.3", 1, group="G2")
    r = http.get("/v1/ns/service/list", params={"pageNo": 1, "pageSize": 10})
    assert r.json()["count"] == 2 and sorted(r.json()["doms"]) == ["alpha", "beta"], "names without the group"
    page = http.get("/v1/ns/service/list", params={"pageNo": 2, "pageSize": 1}).json()
    assert page["count"] == 2 and len(page["doms"]) == 1
    assert http.get("/v1/ns/service/list", params={"pageNo": 1, "pageSize": 10, "groupName": "G2"}).json() == {
        "count": 1,
        "doms": ["gamma"],
    }
    r = http.get("/v1/ns/service/list", params={"pageSize": 10})
    assert (r.status_code, r.text) == (400, "Param 'pageNo' is required.")
    body = http.get("/v2/ns/service/list").json()
    assert (
        body["code"] == 0
        and body["message"] == "success"
        and body["data"]["count"] == 2
        and sorted(body["data"]["services"]) == ["alpha", "beta"]
    )


# ---- naming v2 ------------------------------------------------------------------------------


def test_v2_wrapper_register_list_detail_deregister(http: httpx.Client) -> None:
    form = {
        "serviceName": "orders",
        "ip": "10.0.0.1",
        "port": "8080",
        "weight": "2",
        "clusterName": "blue",
        "metadata": json.dumps({"version": "2"}),
    }
    r = http.post("/v2/ns/instance", data=form)
    assert r.status_code == 200 and r.json() == {"code": 0, "message": "success", "data": "ok"}
    r = http.get("/v2/ns/instance/list", params={"serviceName": "orders", "clusterName": "blue"})
    body = r.json()
    assert body["code"] == 0 and body["message"] == "success"
    data = body["data"]
    assert data["name"] == "DEFAULT_GROUP@@orders" and data["reachProtectionThreshold"] is False
    (host,) = data["hosts"]
    assert (
        host["clusterName"] == "blue"
        and host["weight"] == 2.0
        and host["metadata"] == {"version": "2"}
        and host["instanceId"] == "10.0.0.1#8080#blue#DEFAULT_GROUP@@orders"
    )
    assert (
        http.get("/v2/ns/instance/list", params={"serviceName": "orders", "clusterName": "red"}).json()["data"]["hosts"]
        == []
    )
    r = http.get(
        "/v2/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080", "clusterName": "blue"}
    )
    assert (
        r.json()["data"]["weight"] == 2.0
        and r.json()["data"]["instanceId"] == "10.0.0.1#8080#blue#DEFAULT_GROUP@@orders"
    )
    r = http.get(
        "/v2/ns/instance", params={"serviceName": "orders", "ip": "10.9.9.9", "port": "1", "clusterName": "blue"}
    )
    assert r.status_code == 404 and r.json()["code"] == 20004 and r.json()["message"] == "resource not found"
    r = http.delete("/v2/ns/instance", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
    assert r.json() == {"code": 0, "message": "success", "data": "ok"}
    assert http.get("/v2/ns/instance/list", params={"serviceName": "orders"}).json()["data"]["hosts"] == []


def test_v2_errors_keep_the_wrapper(http: httpx.Client) -> None:
    r = http.get("/v2/ns/instance/list")
    assert (
        r.status_code == 400
        and r.json()["code"] == 10000
        and r.json()["message"] == "parameter missing"
        and "serviceName" in r.json()["data"]
    )
    r = http.post("/v2/ns/instance", data={"serviceName": "orders", "port": "8080"})
    assert r.status_code == 400 and r.json() == {
        "code": 10000,
        "message": "parameter missing",
        "data": "Required parameter 'ip' type String is not present",
    }
    r = http.post(
        "/v2/ns/instance", data={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080", "weight": "20000"}
    )
    assert r.status_code == 400 and r.json()["code"] == 21001 and r.json()["message"] == "weight error"


# ---- naming: beats and expiry ---------------------------------------------------------------


def test_beat_answers_10200_then_recreates_from_the_beat_body(fake: FakeNacos, http: httpx.Client) -> None:
    r = http.put("/v1/ns/instance/beat", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
    assert r.status_code == 200 and r.json() == {"clientBeatInterval": 5000, "code": 10200, "lightBeatEnabled": True}, (
        "unknown instance: re-register"
    )
    beat = {
        "serviceName": "DEFAULT_GROUP@@orders",
        "ip": "10.0.0.1",
        "port": 8080,
        "cluster": "blue",
        "weight": 2.0,
        "metadata": {"version": "3"},
        "scheduled": True,
        "ephemeral": True,
    }
    r = http.put("/v1/ns/instance/beat", params={"serviceName": "DEFAULT_GROUP@@orders", "beat": json.dumps(beat)})
    assert r.json() == {"clientBeatInterval": 5000, "code": 10000, "lightBeatEnabled": True}
    (host,) = listing(http)["hosts"]
    assert (host["clusterName"], host["weight"], host["metadata"], host["healthy"], host["ephemeral"]) == (
        "blue",
        2.0,
        {"version": "3"},
        True,
        True,
    )
    r = http.put("/v1/ns/instance/beat", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
    assert r.json()["code"] == 10000, "a known instance needs no beat body"
    fake.register("orders", "10.0.0.2", 1, metadata={"preserved.heart.beat.interval": "3000"})
    r = http.put("/v1/ns/instance/beat", params={"serviceName": "orders", "ip": "10.0.0.2", "port": "1"})
    assert r.json()["clientBeatInterval"] == 3000
    r = http.put("/v1/ns/instance/beat", params={"ip": "10.0.0.2", "port": "1"})
    assert (r.status_code, r.text) == (400, "Param 'serviceName' is required.")


def test_ephemeral_instances_expire_without_beats() -> None:
    with FakeNacos(beat_timeout=0.3, delete_timeout=1.5) as fake, client_for(fake) as http:
        fake.register(
            "orders", "10.0.0.100", 1
        )  # a direct registration never expires: keeps us off the protection threshold
        fake.register("orders", "10.0.0.50", 1, beats_required=True)
        assert register(http, "10.0.0.1").text == "ok"
        assert (
            register(
                http,
                "10.0.0.2",
                metadata=json.dumps({"preserved.heart.beat.timeout": "60000", "preserved.ip.delete.timeout": "60000"}),
            ).text
            == "ok"
        )
        assert register(http, "10.0.0.9", service="db", ephemeral="false").text == "ok"

        def health() -> dict[str, bool]:
            return {h["ip"]: h["healthy"] for h in listing(http)["hosts"]}

        assert health() == {"10.0.0.100": True, "10.0.0.50": True, "10.0.0.1": True, "10.0.0.2": True}
        wait_until(lambda: health().get("10.0.0.1") is False, message="unhealthy after beat_timeout")
        assert health()["10.0.0.2"] is True and health()["10.0.0.100"] is True, (
            "metadata timeouts win; direct registrations do not expire"
        )
        assert [h["instanceHeartBeatTimeOut"] for h in listing(http)["hosts"] if h["ip"] == "10.0.0.1"] == [300]
        r = http.put("/v1/ns/instance/beat", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
        assert r.json()["code"] == 10000 and health()["10.0.0.1"] is True, "a beat makes it healthy again"
        wait_until(
            lambda: "10.0.0.1" not in health() and "10.0.0.50" not in health(), message="removed after delete_timeout"
        )
        r = http.put("/v1/ns/instance/beat", params={"serviceName": "orders", "ip": "10.0.0.1", "port": "8080"})
        assert r.json()["code"] == 10200, "gone: the client must re-register"
        assert set(health()) == {"10.0.0.100", "10.0.0.2"}
        assert ips(listing(http, "db")) == ["10.0.0.9"], "persistent instances do not expire"


# ---- config ---------------------------------------------------------------------------------


def test_config_publish_get_delete(fake: FakeNacos, http: httpx.Client) -> None:
    content = "version: 1\nlanes: [gray]\nnote: 灰度 ✓\n"
    r = http.post(
        "/v1/cs/configs", data={"dataId": "graylb-rules", "group": "DEFAULT_GROUP", "content": content, "type": "yaml"}
    )
    assert r.status_code == 200 and r.text == "true" and r.json() is True
    r = http.get("/v1/cs/configs", params={"dataId": "graylb-rules", "group": "DEFAULT_GROUP"})
    assert r.status_code == 200 and r.content == content.encode("utf-8")
    assert r.headers["Content-MD5"] == hashlib.md5(content.encode("utf-8")).hexdigest() == config_md5(content)
    assert r.headers["Content-Type"] == "text/plain;charset=UTF-8" and r.headers["Config-Type"] == "yaml"
    assert (
        r.headers["Cache-Control"] == "no-cache,no-store"
        and r.headers["Pragma"] == "no-cache"
        and "Last-Modified" in r.headers
    )
    assert fake.get_config("graylb-rules", "DEFAULT_GROUP") == content
    assert (
        http.post("/v1/cs/configs", data={"dataId": "j", "group": "G", "content": "{}", "type": "json"}).json() is True
    )
    assert (
        http.get("/v1/cs/configs", params={"dataId": "j", "group": "G"}).headers["Content-Type"]
        == "application/json;charset=UTF-8"
    )
    r = http.get("/v1/cs/configs", params={"dataId": "absent", "group": "DEFAULT_GROUP"})
    assert (r.status_code, r.text) == (404, "config data not exist\n")
    assert http.delete("/v1/cs/configs", params={"dataId": "graylb-rules", "group": "DEFAULT_GROUP"}).json() is True
    assert http.get("/v1/cs/configs", params={"dataId": "graylb-rules", "group": "DEFAULT_GROUP"}).status_code == 404
    assert http.delete("/v1/cs/configs", params={"dataId": "graylb-rules", "group": "DEFAULT_GROUP"}).json() is True, (
        "deleting nothing is fine"
    )
    assert fake.get_config("graylb-rules", "DEFAULT_GROUP") is None


def test_config_validation(http: httpx.Client) -> None:
    r = http.post("/v1/cs/configs", data={"dataId": "d", "group": "g"})
    assert r.status_code == 400 and "content" in r.text
    r = http.post("/v1/cs/configs", data={"dataId": "d", "group": "g", "content": "   "})
    assert r.status_code == 400 and r.text.startswith("caused: content is blank")
    r = http.post("/v1/cs/configs", data={"dataId": "bad id", "group": "g", "content": "x"})
    assert (r.status_code, r.text) == (400, "caused: invalid dataId : bad id;")
    r = http.get("/v1/cs/configs", params={"dataId": "d"})
    assert r.status_code == 400 and "group" in r.text


def test_config_tenants(fake: FakeNacos, http: httpx.Client) -> None:
    for tenant, content in (("", "for-empty"), ("dev", "for-dev"), ("public", "for-public")):
        assert (
            http.post("/v1/cs/configs", data={"dataId": "d", "group": "g", "content": content, "tenant": tenant}).json()
            is True
        )

    def get(**params: str) -> httpx.Response:
        return http.get("/v1/cs/configs", params={"dataId": "d", "group": "g", **params})

    assert get().text == "for-empty" and get(tenant="").text == "for-empty" and get(tenant="dev").text == "for-dev"
    assert (fake.get_config("d", "g", ""), fake.get_config("d", "g", "public")) == ("for-empty", "for-public"), (
        "'' and 'public' are different keys"
    )
    # ConfigController.getConfig maps a public (or null) tenant to "" before reading (2.x)
    assert get(tenant="public").text == "for-empty"
    # ...but long polling does not: each tenant is compared with its own key
    assert listen(http, entry("d", "g", config_md5("for-public"), "public"), no_hangup=True).content == b""
    assert listen(http, entry("d", "g", config_md5("for-public")), no_hangup=True).text == "d%02g%01\n"
    assert http.delete("/v1/cs/configs", params={"dataId": "d", "group": "g", "tenant": "dev"}).json() is True
    assert get(tenant="dev").status_code == 404 and get().text == "for-empty"


# ---- config long polling --------------------------------------------------------------------


def test_long_poll_answers_at_once_when_an_md5_differs(fake: FakeNacos, http: httpx.Client) -> None:
    fake.publish_config("a.yaml", "G", "x")
    fake.publish_config("b.yaml", "G", "y", tenant="dev")
    ok_a, ok_b = config_md5("x"), config_md5("y")
    for stale in ("wrong", "", ok_a.upper()):
        for e in (entry("a.yaml", "G", stale), entry("a.yaml", "G", stale, "")):  # 3 fields, and 4 with an empty tenant
            started = time.monotonic()
            r = listen(http, e)
            assert r.status_code == 200 and r.text == "a.yaml%02G%01\n", (stale, e)
            assert time.monotonic() - started < 5
    assert listen(http, entry("b.yaml", "G", "", "dev")).text == "b.yaml%02G%02dev%01\n", (
        "the tenant is the 3rd field of the reply"
    )
    assert (
        listen(http, entry("a.yaml", "G", ok_a), entry("b.yaml", "G", "stale", "dev")).text == "b.yaml%02G%02dev%01\n"
    ), "only the changed key"
    both = listen(http, entry("a.yaml", "G", ""), entry("b.yaml", "G", ok_b[::-1], "dev")).text
    assert both == "a.yaml%02G%01b.yaml%02G%02dev%01\n"
    # the field is URL-decoded once more by the server: an already-encoded entry works too
    r = http.post(
        "/v1/cs/configs/listener",
        data={"Listening-Configs": "a.yaml%02G%02wrong%01"},
        headers={"Long-Pulling-Timeout": "30000"},
    )
    assert r.text == "a.yaml%02G%01\n"


def test_long_poll_md5_is_zero_padded_lowercase(fake: FakeNacos, http: httpx.Client) -> None:
    content = next(c for c in (f"v{i}" for i in range(1000)) if config_md5(c).startswith("0"))
    fake.publish_config("rules", "G", content)
    assert listen(http, entry("rules", "G", config_md5(content)), no_hangup=True).content == b""
    truncated = format(int(config_md5(content), 16), "x")  # the old client bug (alibaba/nacos#2618)
    assert listen(http, entry("rules", "G", truncated), no_hangup=True).text == "rules%02G%01\n", (
        "a wrong md5 always looks changed"
    )


def test_long_poll_times_out_with_an_empty_body(fake: FakeNacos, http: httpx.Client) -> None:
    fake.publish_config("rules", "G", "v1")
    md5 = config_md5("v1")
    for timeout_ms in (700, 100):  # hold = max(floor 0.2 s, timeout - 0.5 s)
        started = time.monotonic()
        r = listen(http, entry("rules", "G", md5), timeout_ms=timeout_ms)
        elapsed = time.monotonic() - started
        assert r.status_code == 200 and r.content == b"", timeout_ms
        assert 0.15 <= elapsed < 5, elapsed
    assert listen(http, entry("missing", "G", ""), timeout_ms=100).content == b"", (
        "no copy of a missing key: nothing changed"
    )
    started = time.monotonic()
    assert listen(http, entry("rules", "G", md5), timeout_ms=30000, no_hangup=True).content == b""
    assert time.monotonic() - started < 5, "No-Hangup answers at once (it would otherwise hold 29.5 s)"


def test_long_poll_wakes_on_publish_and_delete(fake: FakeNacos, http: httpx.Client, pool: ThreadPoolExecutor) -> None:
    fake.publish_config("rules", "G", "v1")
    fut: Future = pool.submit(listen, http, entry("rules", "G", config_md5("v1")))
    assert fake.wait_long_polls(1)
    fake.publish_config("other", "G", "zzz")
    fake.publish_config("rules", "G", "v1")  # same content: the md5 does not move, nothing fires
    with pytest.raises(FutureTimeout):
        fut.result(timeout=0.3)
    assert fake.long_polls == 1
    started = time.monotonic()
    assert http.post("/v1/cs/configs", data={"dataId": "rules", "group": "G", "content": "v2"}).json() is True
    r = fut.result(timeout=5)
    assert r.status_code == 200 and r.text == "rules%02G%01\n" and time.monotonic() - started < 5
    assert fake.long_polls == 0
    fut = pool.submit(listen, http, entry("rules", "G", config_md5("v2"), ""))
    assert fake.wait_long_polls(1)
    fake.remove_config("rules", "G")
    assert fut.result(timeout=5).text == "rules%02G%01\n", "a delete wakes the poll too"


def test_listener_bad_requests(http: httpx.Client) -> None:
    r = http.post("/v1/cs/configs/listener", headers={"Long-Pulling-Timeout": "30000"})
    assert (r.status_code, r.text) == (400, "caused: invalid probeModify;")
    for bad in ("a" + L, W.join("abcde") + L):
        r = listen(http, bad)
        assert (r.status_code, r.text) == (400, "caused: invalid probeModify;"), repr(bad)
    r = http.post(
        "/v1/cs/configs/listener",
        data={"Listening-Configs": entry("a", "G", "")},
        headers={"Long-Pulling-Timeout": "soon"},
    )
    assert r.status_code == 400


def test_java_url_encoding_helper() -> None:
    assert java_url_encode("a b~*._-\x02\x01é") == "a+b%7E*._-%02%01%C3%A9"
    assert config_md5(None) == "" and config_md5("") == "d41d8cd98f00b204e9800998ecf8427e"


# ---- auth -----------------------------------------------------------------------------------


def test_login(secured: FakeNacos) -> None:
    with client_for(secured) as http:
        r = http.post("/v1/auth/login", data={"username": "nacos", "password": "s3cret"})
        assert r.status_code == 200
        body = r.json()
        assert (
            set(body) == {"accessToken", "tokenTtl", "globalAdmin", "username"}
            and body["globalAdmin"] is True
            and body["username"] == "nacos"
        )
        assert 17990 <= body["tokenTtl"] <= 18000 and r.headers["Authorization"] == f"Bearer {body['accessToken']}"
        _header, payload, signature = body["accessToken"].split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["sub"] == "nacos" and abs(claims["exp"] - (time.time() + 18000)) < 60 and signature
        assert http.post("/v1/auth/login", params={"username": "nacos", "password": "s3cret"}).status_code == 200, (
            "query parameters work too"
        )
        assert http.post("/v1/auth/users/login", data={"username": "nacos", "password": "s3cret"}).status_code == 200
        for creds in ({"username": "nacos", "password": "nope"}, {"username": "who", "password": "s3cret"}):
            r = http.post("/v1/auth/login", data=creds)
            assert (r.status_code, r.text) == (403, "unknown user!"), creds


def test_token_sources_and_403_messages(secured: FakeNacos) -> None:
    secured.register("orders", "10.0.0.1", 1)
    with client_for(secured) as http:
        token = http.post("/v1/auth/login", data={"username": "nacos", "password": "s3cret"}).json()["accessToken"]
        params = {"serviceName": "orders"}
        r = http.get("/v1/ns/instance/list", params=params)
        assert r.status_code == 403 and "user not found!" in r.text
        r = http.get("/v1/ns/instance/list", params={**params, "accessToken": "not-a-token"})
        assert r.status_code == 403 and "token invalid!" in r.text
        assert http.get("/v1/ns/instance/list", params={**params, "accessToken": token}).status_code == 200
        assert http.get("/v1/ns/instance/list", params=params, headers={"accessToken": token}).status_code == 200
        assert (
            http.get("/v1/ns/instance/list", params=params, headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
        assert (
            http.get("/v1/ns/instance/list", params={**params, "username": "nacos", "password": "s3cret"}).status_code
            == 200
        )
        assert (
            http.post("/v1/cs/configs", data={"dataId": "d", "group": "g", "content": "x", "accessToken": token}).json()
            is True
        ), "a form field works"
        assert http.get("/v2/ns/instance/list", params=params).status_code == 403
        assert listen(http, entry("d", "g", "")).status_code == 403
        secured.expire_tokens()
        r = http.get("/v1/ns/instance/list", params={**params, "accessToken": token})
        assert r.status_code == 403 and "token expired!" in r.text
        fresh = http.post("/v1/auth/login", data={"username": "nacos", "password": "s3cret"}).json()["accessToken"]
        assert http.get("/v1/ns/instance/list", params={**params, "accessToken": fresh}).status_code == 200


def test_tokens_expire_after_their_ttl() -> None:
    with FakeNacos(auth=USERS, token_ttl=0.3) as fake, client_for(fake) as http:
        body = http.post("/v1/auth/login", data={"username": "nacos", "password": "s3cret"}).json()
        assert body["tokenTtl"] == 0
        wait_until(
            lambda: (
                "token expired!"
                in http.get(
                    "/v1/cs/configs", params={"dataId": "d", "group": "g", "accessToken": body["accessToken"]}
                ).text
            )
        )


def test_auth_disabled_ignores_tokens(fake: FakeNacos, http: httpx.Client) -> None:
    fake.register("orders", "10.0.0.1", 1)
    assert ips(listing(http, accessToken="anything")) == ["10.0.0.1"]
    assert http.post("/v1/auth/login", data={"username": "x", "password": "y"}).status_code == 200


# ---- failure injection, lifecycle, protocol edges -------------------------------------------


def test_fail_next_fail_all_heal_stall(fake: FakeNacos, http: httpx.Client) -> None:
    fake.fail_next(503)
    r = http.get("/v1/ns/instance/list", params={"serviceName": "x"})
    assert (r.status_code, r.text) == (503, "server is DOWN now, please try again later!")
    assert http.get("/v1/ns/instance/list", params={"serviceName": "x"}).status_code == 200
    fake.fail_next(500, count=2, body="boom")
    assert [(r.status_code, r.text) for r in (http.get("/v1/cs/configs"), http.post("/v1/auth/login"))] == [
        (500, "boom")
    ] * 2
    fake.fail_all(429)
    assert {http.get("/v1/ns/service/list").status_code for _ in range(3)} == {429}
    fake.heal()
    assert http.get("/v1/ns/service/list", params={"pageNo": 1, "pageSize": 1}).status_code == 200
    fake.stall(0.3)
    started = time.monotonic()
    assert http.get("/v1/ns/instance/list", params={"serviceName": "x"}).status_code == 200
    elapsed = time.monotonic() - started
    fake.stall(0)
    assert 0.25 <= elapsed < 5


def test_stop_kills_a_held_long_poll_and_start_serves_the_same_state(fake: FakeNacos, pool: ThreadPoolExecutor) -> None:
    fake.publish_config("rules", "G", "v1")
    fake.register("orders", "10.0.0.1", 8080)
    port = fake.port
    with client_for(fake) as http:
        fut: Future = pool.submit(listen, http, entry("rules", "G", config_md5("v1")))
        assert fake.wait_long_polls(1)
        fake.stop()
        with pytest.raises(httpx.TransportError):
            fut.result(timeout=5)
        assert fake.long_polls == 0 and not fake.running
        with pytest.raises(httpx.TransportError):
            http.get("/v1/cs/configs", params={"dataId": "rules", "group": "G"})
        fake.start()
        assert fake.port == port and fake.running
        assert http.get("/v1/cs/configs", params={"dataId": "rules", "group": "G"}).text == "v1"
        assert ips(listing(http)) == ["10.0.0.1"]
        fut = pool.submit(listen, http, entry("rules", "G", config_md5("v1")))
        assert fake.wait_long_polls(1)
        fake.publish_config("rules", "G", "v2")
        assert fut.result(timeout=5).text == "rules%02G%01\n"


def test_routing(fake: FakeNacos, http: httpx.Client) -> None:
    r = http.get("/v1/ns/nope")
    assert r.status_code == 404 and r.json()["status"] == 404
    r = http.delete("/v1/ns/instance/list")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
    with httpx.Client(trust_env=False) as raw:
        assert raw.get(f"{fake.url}/v1/ns/instance/list", params={"serviceName": "x"}).status_code == 404, (
            "everything lives under /nacos"
        )
    assert http.get("/v1/ns/instance/list/", params={"serviceName": "x"}).status_code == 200, (
        "Spring's trailing-slash match"
    )


def test_fake_only_requests_are_recorded_over_keep_alive(fake: FakeNacos, http: httpx.Client) -> None:
    fake.clear_requests()
    for _ in range(3):
        r = http.post(
            "/v1/cs/configs",
            params={"tenant": "dev"},
            data={"dataId": "d", "group": "g", "content": "a b"},
            headers={"X-Probe": "1"},
        )
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    req = fake.requests[0]
    assert len(fake.requests) == 3 and req.method == "POST" and req.path == "/nacos/v1/cs/configs"
    assert (
        req.query == {"tenant": ["dev"]}
        and req.form["content"] == ["a b"]
        and req.param("dataId") == "d"
        and req.param("nope") is None
    )
    assert req.headers["x-probe"] == "1" and "host" in req.headers and b"content=a+b" in req.body
    assert fake.get_config("d", "g", "dev") == "a b"


# ---- peer check: the official nacos-sdk-python client (v1 HTTP) ------------------------------


def sdk_client(fake: FakeNacos, tmp_path: Path, **kwargs: Any) -> nacos.NacosClient:
    client = nacos.NacosClient(server_addresses=fake.address, namespace="", logDir=str(tmp_path / "logs"), **kwargs)
    # keep its snapshot / failover files out of the working directory; poll with a 1 s timeout
    client.set_options(
        snapshot_base=str(tmp_path / "snapshot"), failover_base=str(tmp_path / "failover"), pulling_timeout=1
    )
    return client


class _StopProcessing:
    """Unpickles as EOFError: the SDK's _process_polling_result thread takes that as "queue closed" and returns."""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[bytes]]:
        return (pickle.loads, (b"",))


def stop_sdk_watchers(
    client: nacos.NacosClient, started: set[threading.Thread], watches: list[tuple[str, str, Callable[..., Any]]]
) -> None:
    """Stop everything add_config_watcher started: puller threads, the result thread, the pool and
    the Manager process."""
    pullers = {info[0] for info in (client.puller_mapping or {}).values()}
    for data_id, group, cb in watches:
        client.remove_config_watcher(data_id, group, cb, remove_all=True)
    for puller in pullers:  # each ends after its current (short) poll once its key list is empty
        puller.join(10)
        assert not puller.is_alive(), "SDK puller thread did not stop"
    if client.notify_queue is not None:
        processors = [t for t in started if t.name.endswith("(_process_polling_result)")]
        client.notify_queue.put(_StopProcessing())
        for t in processors:
            t.join(10)
            assert not t.is_alive(), "SDK result thread did not stop"
        client.notify_queue.close()
        client.notify_queue.join_thread()
        client.callback_tread_pool.close()
        client.callback_tread_pool.join()
        client.process_mgr.shutdown()


sdk_warnings = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # the SDK calls Thread.setDaemon and ssl.SSLContext()


@sdk_warnings
def test_sdk_naming_peer(fake: FakeNacos, tmp_path: Path) -> None:
    client = sdk_client(fake, tmp_path)
    assert client.add_naming_instance("orders", "10.0.0.7", 8080, metadata={"version": "1.4.2"}, weight=2.0) is True
    (host,) = client.list_naming_instance("orders")["hosts"]
    assert (host["ip"], host["port"], host["weight"], host["metadata"], host["healthy"], host["enabled"]) == (
        "10.0.0.7",
        8080,
        2.0,
        {"version": "1.4.2"},
        True,
        True,
    )
    assert [h["ip"] for h in client.list_naming_instance("orders", healthy_only=True)["hosts"]] == ["10.0.0.7"]
    beat = client.send_heartbeat("orders", "10.0.0.7", 8080)
    assert beat == {"clientBeatInterval": 5000, "code": 10000, "lightBeatEnabled": True}
    # what the SDK puts on the wire (and the fake tolerates): Python booleans, `enable`, clusterName=None
    reg = next(r for r in fake.requests if r.method == "POST" and r.path == "/nacos/v1/ns/instance")
    assert (
        reg.param("enable") == "True"
        and reg.param("enabled") is None
        and reg.param("healthy") == "True"
        and reg.param("clusterName") == "None"
    )
    assert reg.headers["user-agent"].startswith("Nacos-Python-Client:v")
    hb = next(r for r in fake.requests if r.path == "/nacos/v1/ns/instance/beat")
    assert (
        hb.param("serviceName") == "DEFAULT_GROUP@@orders" and json.loads(hb.param("beat") or "{}")["ip"] == "10.0.0.7"
    )
    assert client.modify_naming_instance("orders", "10.0.0.7", 8080, weight=5.0, enable=False) is True
    assert client.list_naming_instance("orders")["hosts"] == []
    assert client.modify_naming_instance("orders", "10.0.0.7", 8080, weight=5.0) is True, (
        "no enable param: enabled again (2.x default)"
    )
    assert [h["weight"] for h in client.list_naming_instance("orders")["hosts"]] == [5.0]
    assert client.remove_naming_instance("orders", "10.0.0.7", 8080) is True
    assert client.list_naming_instance("orders")["hosts"] == [] and fake.instances("orders") == []
    assert client.send_heartbeat("orders", "10.0.0.7", 8080)["code"] == 10000, (
        "the SDK always sends the beat body: the instance comes back"
    )
    assert [h["ip"] for h in client.list_naming_instance("orders")["hosts"]] == ["10.0.0.7"]


@sdk_warnings
def test_sdk_config_peer_with_watcher(fake: FakeNacos, tmp_path: Path) -> None:
    client = sdk_client(fake, tmp_path)
    assert client.publish_config("graylb-rules", "DEFAULT_GROUP", "version: 1") is True
    assert client.get_config("graylb-rules", "DEFAULT_GROUP") == "version: 1"
    assert client.get_config("absent", "DEFAULT_GROUP") is None
    events: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_change(params: dict[str, Any]) -> None:
        events.put(params)

    before = set(threading.enumerate())
    client.add_config_watcher("graylb-rules", "DEFAULT_GROUP", on_change)
    started = set(threading.enumerate()) - before
    try:
        assert fake.wait_long_polls(1, timeout=10), "the SDK's puller parks a long poll on the fake"
        assert client.publish_config("graylb-rules", "DEFAULT_GROUP", "version: 2") is True
        change = events.get(timeout=10)
        assert (change["data_id"], change["group"], change["content"]) == (
            "graylb-rules",
            "DEFAULT_GROUP",
            "version: 2",
        )
        poll = [r for r in fake.requests if r.path == "/nacos/v1/cs/configs/listener"][-1]
        assert poll.headers["long-pulling-timeout"] == "1000"
        assert (poll.param("Listening-Configs") or "").split(W) == [
            "graylb-rules",
            "DEFAULT_GROUP",
            config_md5("version: 1"),
            L,
        ], "4 fields, empty tenant"
    finally:
        stop_sdk_watchers(client, started, [("graylb-rules", "DEFAULT_GROUP", on_change)])
    assert events.empty(), "exactly one change notification"
    assert client.remove_config("graylb-rules", "DEFAULT_GROUP") is True
    assert fake.get_config("graylb-rules", "DEFAULT_GROUP") is None


@sdk_warnings
def test_sdk_with_auth(secured: FakeNacos, tmp_path: Path) -> None:
    client = sdk_client(secured, tmp_path, username="nacos", password="s3cret")
    assert client.token and client.token_ttl == 18000
    assert client.add_naming_instance("orders", "10.0.0.7", 8080) is True
    assert (
        client.publish_config("rules", "DEFAULT_GROUP", "v1") is True
        and client.get_config("rules", "DEFAULT_GROUP") == "v1"
    )
    api = [r for r in secured.requests if "/auth/" not in r.path]
    assert api and all(r.param("accessToken") == client.token for r in api), "the SDK sends ?accessToken="
    secured.expire_tokens()
    with pytest.raises(NacosException, match="Insufficient privilege"):
        client.list_naming_instance("orders")
    client.get_access_token(force_refresh=True)
    assert [h["ip"] for h in client.list_naming_instance("orders")["hosts"]] == ["10.0.0.7"]
    with pytest.raises(HTTPError) as e:
        sdk_client(secured, tmp_path, username="nacos", password="wrong")
    assert e.value.code == 403
