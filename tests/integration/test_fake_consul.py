"""FakeConsul over real sockets, checked with raw httpx and with the third-party py-consul client.

These are contract tests: each asserts what a real Consul agent does on the wire, so the same
assertions can later run against a real agent.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import consul
import httpx
import pytest

from graylb.testing.fake_consul import FakeConsul, format_go_duration, parse_go_duration
from graylb.testing.http_server import serve_wsgi

WRITE, READ, NONE = "w-secret", "r-secret", "n-secret"


@pytest.fixture(autouse=True)
def _clean_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CONSUL_HTTP_TOKEN",
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake() -> Iterator[FakeConsul]:
    with FakeConsul(min_deregister_after=0.5) as f:
        yield f


@pytest.fixture
def acl_fake() -> Iterator[FakeConsul]:
    with FakeConsul(acl_tokens={WRITE: "write", READ: "read", NONE: "none"}) as f:
        yield f


@pytest.fixture
def http(fake: FakeConsul) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.url, timeout=10, trust_env=False) as c:
        yield c


@pytest.fixture
def pc(fake: FakeConsul) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=fake.port)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as p:
        yield p


def idx(r: httpx.Response) -> int:
    return int(r.headers["X-Consul-Index"])


def ids(r: httpx.Response) -> list[str]:
    return sorted(e["Service"]["ID"] for e in r.json())


def wait_until(
    fake: FakeConsul,
    http: httpx.Client,
    path: str,
    pred: Callable[[httpx.Response], bool],
    timeout: float = 10.0,
    **params: Any,
) -> httpx.Response:
    """Follow a blocking query until pred holds: how a real watcher waits, no sleeps."""
    deadline = time.monotonic() + timeout
    index = 0
    while True:
        r = http.get(path, params={**params, "index": index, "wait": "1s"})
        if pred(r):
            return r
        assert time.monotonic() < deadline, f"condition not reached; last answer {r.status_code} {r.text[:300]}"
        index = idx(r) if idx(r) >= index else 0


# ---- health/service shape --------------------------------------------------------------------


def test_py_consul_registration_and_health_shape(fake: FakeConsul, pc: consul.Consul) -> None:
    assert (
        pc.agent.service.register(
            "orders",
            service_id="orders-1",
            address="10.0.0.7",
            port=8080,
            tags=["v1", "blue"],
            meta={"version": "1.4.2", "lane": "gray"},
            weights={"Passing": 10, "Warning": 2},
            check=consul.Check.ttl("10s"),
        )
        is True
    )
    index, nodes = pc.health.service("orders", passing=True)
    assert nodes == [], "a TTL check starts critical"
    assert pc.agent.check.ttl_pass("service:orders-1", "all good") is True
    index, nodes = pc.health.service("orders", passing=True)
    assert isinstance(index, str) and int(index) >= 1
    (entry,) = nodes
    svc = entry["Service"]
    assert (
        svc["ID"] == "orders-1" and svc["Service"] == "orders" and svc["Address"] == "10.0.0.7" and svc["Port"] == 8080
    )
    assert svc["Tags"] == ["v1", "blue"] and svc["Meta"] == {"lane": "gray", "version": "1.4.2"}
    assert svc["Weights"] == {"Passing": 10, "Warning": 2} and svc["EnableTagOverride"] is False
    assert "Kind" not in svc, "Go omitempty: a typical service has no Kind"
    assert svc["CreateIndex"] <= svc["ModifyIndex"] <= int(index)
    node = entry["Node"]
    assert node["Node"] == "fake-node" and node["Address"] == "127.0.0.1" and node["Datacenter"] == "dc1"
    assert node["TaggedAddresses"]["lan"] == "127.0.0.1" and len(node["ID"]) == 36
    checks = {c["CheckID"]: c for c in entry["Checks"]}
    assert set(checks) == {"serfHealth", "service:orders-1"}
    ttl = checks["service:orders-1"]
    assert ttl["Status"] == "passing" and ttl["Output"] == "all good" and ttl["Type"] == "ttl"
    assert (
        ttl["Name"] == "Service 'orders' check"
        and ttl["ServiceID"] == "orders-1"
        and ttl["ServiceTags"] == ["v1", "blue"]
    )
    assert checks["serfHealth"]["ServiceID"] == "" and checks["serfHealth"]["Status"] == "passing"


def test_unset_tags_meta_address_and_port(fake: FakeConsul, http: httpx.Client) -> None:
    assert http.put("/v1/agent/service/register", json={"Name": "bare"}).status_code == 200
    (entry,) = http.get("/v1/health/service/bare").json()
    svc = entry["Service"]
    assert svc["Meta"] is None, "Go nil map"
    assert svc["Tags"] == [], "current agents replace nil tags with []"
    assert svc["Address"] == "" and entry["Node"]["Address"] == "127.0.0.1", "empty service address: use the node's"
    assert "Port" not in svc, "Port is omitempty"
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    assert entry["Checks"][0]["CheckID"] == "serfHealth"


def test_null_tags_like_older_agents() -> None:
    with FakeConsul(null_tags=True) as f, httpx.Client(base_url=f.url, trust_env=False) as http:
        f.register("bare", check_status=None)
        (entry,) = http.get("/v1/health/service/bare").json()
        assert entry["Service"]["Tags"] is None and entry["Service"]["Meta"] is None
        assert entry["Checks"][0]["ServiceTags"] is None, "old agents sent null for every nil tag list"


def test_passing_filter(fake: FakeConsul, http: httpx.Client) -> None:
    for sid, status in (("a", "passing"), ("b", "warning"), ("c", "critical")):
        fake.register("svc", id=sid, port=1, check_status=status)
    fake.register("svc", id="d", port=1, check_status=None)
    for value in ("", "1", "true", "True", "t"):
        r = http.get(f"/v1/health/service/svc?passing={value}" if value else "/v1/health/service/svc?passing")
        assert ids(r) == ["a", "d"], value
    for value in ("false", "0"):
        assert ids(http.get("/v1/health/service/svc", params={"passing": value})) == ["a", "b", "c", "d"]
    r = http.get("/v1/health/service/svc", params={"passing": "maybe"})
    assert r.status_code == 400 and r.text == "Invalid value for ?passing"
    assert idx(r) >= 1, "Consul parses ?passing after the query, so the 400 carries the index"


def test_failing_node_check_drops_every_instance_on_the_node(fake: FakeConsul, http: httpx.Client) -> None:
    fake.register("svc", id="here", port=1)
    fake.register("svc", id="there", port=1, node_address="10.9.9.9")
    before = idx(http.get("/v1/health/service/svc"))
    fake.set_check_status("serfHealth", "critical")
    r = http.get("/v1/health/service/svc", params={"passing": "1"})
    assert ids(r) == ["there"] and idx(r) > before
    other = next(e for e in http.get("/v1/health/service/svc").json() if e["Service"]["ID"] == "there")
    assert other["Node"]["Address"] == "10.9.9.9" and other["Node"]["Node"] != "fake-node"
    fake.register("svc", id="nowhere", port=1, node_address="")
    nowhere = next(e for e in http.get("/v1/health/service/svc").json() if e["Service"]["ID"] == "nowhere")
    assert nowhere["Node"]["Address"] == "" and nowhere["Service"]["Address"] == ""


def test_tag_and_bexpr_filters(fake: FakeConsul, http: httpx.Client) -> None:
    fake.register("svc", id="v1", port=1, tags=["v1", "blue"], meta={"lane": "stable", "version": "1.4.2"})
    fake.register("svc", id="v2", port=2, tags=["v2", "Blue"], meta={"lane": "gray", "version": "2.0.0"})
    fake.register("svc", id="v3", port=3, tags=["v3"])
    assert ids(http.get("/v1/health/service/svc", params=[("tag", "blue")])) == ["v1", "v2"], (
        "tags match case-insensitively"
    )
    assert ids(http.get("/v1/health/service/svc", params=[("tag", "blue"), ("tag", "v2")])) == ["v2"]
    cases = {
        'Service.Meta.lane == "gray"': ["v2"],
        '"v1" in Service.Tags': ["v1"],
        "Service.Tags contains v3": ["v3"],
        'Service.Meta.lane != "gray"': ["v1", "v3"],
        "Service.Meta is empty": ["v3"],
        'Service.Port == 2 or Service.ID == "v3"': ["v2", "v3"],
        'not (Service.Meta.version matches "^1\\\\.")': ["v2", "v3"],
        'Node.Node == "fake-node" and "v2" not in Service.Tags': ["v1", "v3"],
    }
    for expr, expected in cases.items():
        r = http.get("/v1/health/service/svc", params={"filter": expr})
        assert r.status_code == 200 and ids(r) == expected, expr
    for bad in ("Service.Nope == 1", "Service.Meta.lane ==", "lane = gray", "Service.Port == x"):
        r = http.get("/v1/health/service/svc", params={"filter": bad})
        assert r.status_code == 500 and r.text.startswith("Failed to create boolean expression evaluator: "), (
            bad,
            r.text,
        )  # Consul 1.16: 500


def test_unknown_service_is_an_empty_list_with_index(http: httpx.Client, pc: consul.Consul) -> None:
    r = http.get("/v1/health/service/nope")
    assert r.status_code == 200 and r.json() == [] and idx(r) >= 1
    assert r.headers["X-Consul-KnownLeader"] == "true" and r.headers["X-Consul-LastContact"] == "0"
    index, nodes = pc.health.service("nope")
    assert nodes == [] and int(index) >= 1


def test_headers_use_go_canonical_names(http: httpx.Client) -> None:
    with httpx.Client(trust_env=False) as raw:
        r = raw.get(str(http.base_url) + "/v1/health/service/nope")
    names = [k for k, _ in r.headers.raw]
    assert b"X-Consul-Knownleader" in names and b"X-Consul-Lastcontact" in names and b"X-Consul-Index" in names
    assert r.headers["X-Consul-Default-Acl-Policy"] == "allow" and r.headers["Content-Type"] == "application/json"


# ---- blocking queries -------------------------------------------------------------------------


def test_blocking_query_wakes_on_change(fake: FakeConsul, http: httpx.Client, pool: ThreadPoolExecutor) -> None:
    fake.register("svc", id="a", port=1)
    first = http.get("/v1/health/service/svc")
    fut: Future = pool.submit(http.get, "/v1/health/service/svc", params={"index": idx(first), "wait": "30s"})
    assert fake.wait_blocking(1)
    started = time.monotonic()
    fake.set_check_status("a", "warning")
    r = fut.result(timeout=5)
    assert time.monotonic() - started < 5
    assert idx(r) > idx(first) and r.json()[0]["Checks"][1]["Status"] == "warning"


def test_blocking_query_times_out_with_same_index_and_body(fake: FakeConsul, http: httpx.Client) -> None:
    fake.register("svc", id="a", port=1)
    first = http.get("/v1/health/service/svc")
    started = time.monotonic()
    r = http.get("/v1/health/service/svc", params={"index": idx(first), "wait": "300ms"})
    assert time.monotonic() - started < 5
    assert r.status_code == 200 and idx(r) == idx(first) and r.content == first.content


def test_blocking_query_ignores_other_services(fake: FakeConsul, http: httpx.Client, pool: ThreadPoolExecutor) -> None:
    fake.register("svc", id="a", port=1)
    first = http.get("/v1/health/service/svc")
    fut: Future = pool.submit(http.get, "/v1/health/service/svc", params={"index": idx(first), "wait": "800ms"})
    assert fake.wait_blocking(1)
    fake.register("other", port=2)
    fake.kv_put("k", "v")
    r = fut.result(timeout=5)
    assert idx(r) == idx(first), "per-service index: only changes to 'svc' end the wait"


def test_wait_and_index_parsing(fake: FakeConsul, http: httpx.Client) -> None:
    for bad in ("10", "abc", "5x"):
        r = http.get("/v1/health/service/svc", params={"index": 1, "wait": bad})
        assert r.status_code == 400 and r.text == "Invalid wait time" and "X-Consul-Index" not in r.headers
    for bad in ("-1", "x", "1.5"):
        r = http.get("/v1/kv/k", params={"index": bad})
        assert r.status_code == 400 and r.text == "Invalid index"
    for ok in ("1m30s", "1.5h", "250ms", "0"):
        assert http.get("/v1/health/service/svc", params={"wait": ok}).status_code == 200  # no index: immediate
    assert (
        parse_go_duration("1m30s") == 90 * 10**9
        and format_go_duration(90 * 10**9) == "1m30s"
        and format_go_duration(10 * 10**9) == "10s"
    )


def test_index_is_never_zero(fake: FakeConsul, http: httpx.Client) -> None:
    for path in ("/v1/health/service/x", "/v1/catalog/services", "/v1/kv/missing", "/v1/kv/?recurse", "/v1/kv/?keys"):
        r = http.get(path)
        assert int(r.headers["X-Consul-Index"]) >= 1, path
        assert r.headers["X-Consul-KnownLeader"] == "true" and r.headers["X-Consul-LastContact"] == "0", path
    assert fake.index >= 10


def test_reset_index_goes_backwards_and_wakes_parked_queries(
    fake: FakeConsul, http: httpx.Client, pool: ThreadPoolExecutor
) -> None:
    for i in range(5):
        fake.register("svc", id="a", port=1 + i)
    high = idx(http.get("/v1/health/service/svc"))
    fut: Future = pool.submit(http.get, "/v1/health/service/svc", params={"index": high, "wait": "30s"})
    assert fake.wait_blocking(1)
    fake.reset_index(2)
    r = fut.result(timeout=5)
    assert idx(r) < high and idx(r) <= 2 and ids(r) == ["a"]
    assert fake.index == 2
    fake.register("svc", id="b", port=9)
    assert idx(http.get("/v1/health/service/svc")) == 3, "later writes continue from the lower base"
    # a client that keeps the old (higher) index parks until its wait expires: it must reset to 0
    r = http.get("/v1/health/service/svc", params={"index": high, "wait": "200ms"})
    assert idx(r) == 3


# ---- agent registration, checks, TTL -------------------------------------------------------


def test_ttl_expiry_then_deregistration(fake: FakeConsul, http: httpx.Client) -> None:
    body = {
        "name": "ttl",
        "id": "ttl-1",
        "port": 1,
        "check": {"ttl": "300ms", "status": "passing", "deregister_critical_service_after": "10ms"},
    }
    assert http.put("/v1/agent/service/register", json=body).status_code == 200
    assert http.put("/v1/agent/check/pass/service:ttl-1", params={"note": "alive"}).status_code == 200
    r = wait_until(
        fake,
        http,
        "/v1/health/service/ttl",
        lambda r: bool(r.json()) and r.json()[0]["Checks"][1]["Status"] == "critical",
    )
    became_critical = time.monotonic()
    assert r.json()[0]["Checks"][1]["Output"] == "TTL expired (last output before timeout follows): alive"
    wait_until(fake, http, "/v1/health/service/ttl", lambda r: r.json() == [])
    assert time.monotonic() - became_critical >= 0.25, (
        "DeregisterCriticalServiceAfter (10ms) is floored at min_deregister_after (0.5s)"
    )
    assert "ttl-1" not in http.get("/v1/agent/services").json()
    r = http.put("/v1/agent/check/pass/service:ttl-1")
    assert (
        r.status_code == 404
        and r.text == 'Unknown check ID "service:ttl-1". Ensure that the check ID is passed, not the check name.'
    )


def test_ttl_updates_only_bump_the_index_when_the_status_changes(
    fake: FakeConsul, http: httpx.Client, pc: consul.Consul
) -> None:
    pc.agent.service.register("hb", service_id="hb-1", port=1, check=consul.Check.ttl("30s"))
    pc.agent.check.ttl_pass("service:hb-1", "beat 1")
    i1 = idx(http.get("/v1/health/service/hb"))
    pc.agent.check.ttl_pass("service:hb-1", "beat 1")
    assert idx(http.get("/v1/health/service/hb")) == i1, "idempotent update"
    pc.agent.check.ttl_pass("service:hb-1", "beat 2")
    r = http.get("/v1/health/service/hb")
    assert idx(r) == i1 and r.json()[0]["Checks"][1]["Output"] == "beat 1", (
        "output-only changes are deferred (check_update_interval)"
    )
    pc.agent.check.ttl_warn("service:hb-1", "slow")
    r = http.get("/v1/health/service/hb")
    assert (
        idx(r) > i1 and r.json()[0]["Checks"][1]["Status"] == "warning" and r.json()[0]["Checks"][1]["Output"] == "slow"
    )
    pc.agent.check.ttl_fail("service:hb-1")
    assert http.get("/v1/health/service/hb").json()[0]["Checks"][1]["Status"] == "critical"


def test_check_update_endpoint_and_errors(fake: FakeConsul, http: httpx.Client) -> None:
    http.put("/v1/agent/service/register", json={"Name": "u", "Check": {"TTL": "30s"}})
    r = http.put("/v1/agent/check/update/service:u", json={"Status": "warning", "Output": "disk 91%"})
    assert r.status_code == 200 and r.content == b""
    chk = http.get("/v1/health/service/u").json()[0]["Checks"][1]
    assert (chk["Status"], chk["Output"]) == ("warning", "disk 91%")
    r = http.put("/v1/agent/check/update/service:u", json={"Status": "ok"})
    assert r.status_code == 400 and r.text == "Invalid check status: 'ok'"
    assert http.put("/v1/agent/check/update/service:u").text == "Request decode failed: EOF"
    fake.register("plain", port=1)  # a check without TTL
    r = http.put("/v1/agent/check/pass/service:plain")
    assert r.status_code == 500 and r.text == 'CheckID "service:plain" does not have associated TTL'
    assert http.get("/v1/agent/check/pass/service:u").status_code == 405


def test_registration_validation(http: httpx.Client) -> None:
    def reg(body: Any) -> httpx.Response:
        return http.put("/v1/agent/service/register", content=json.dumps(body))

    assert reg({"Port": 1}).text == "Missing service name"
    assert reg({"Name": "x", "Address": "0.0.0.0"}).text == "Invalid service address"
    assert (
        reg({"Name": "x", "Weights": {"Passing": 0, "Warning": 1}}).text
        == "Invalid Weights: Passing must be greater than 0"
    )
    assert (
        reg({"Name": "x", "Weights": {"Passing": 1, "Warning": -1}}).text
        == "Invalid Weights: Warning must be greater or equal than 0"
    )
    assert reg({"Name": "x", "Weights": {"Passing": 70000, "Warning": 1}}).status_code == 400
    assert (
        reg({"Name": "x", "Meta": {"gray.lane": "a"}}).text
        == "Invalid Service Meta: Couldn't load metadata pair ('gray.lane', 'a'): Key contains invalid characters"
    )
    assert reg({"Name": "x", "Meta": {"consul-x": "a"}}).status_code == 400
    assert reg({"Name": "x", "Port": "80"}).text.startswith("Request decode failed: json: cannot unmarshal string")
    assert reg({"Name": "x", "Check": {"Name": "no type"}}).text == "Invalid check: TTL must be > 0 for TTL checks"
    assert reg({"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/"}}).text.startswith(
        "Invalid check: Interval must be > 0"
    )
    assert (
        reg({"Name": "x", "Check": {"TTL": "1s", "Interval": "1s"}}).text
        == "Invalid check: Interval and TTL cannot both be specified"
    )
    assert (
        reg({"Name": "x", "Check": {"TTL": "1z"}}).text
        == 'Request decode failed: time: unknown unit "z" in duration "1z"'
    )
    assert (
        reg({"Name": "x", "Check": {"TTL": "1s", "Status": "ok"}}).text
        == "Status for checks must 'passing', 'warning', 'critical'"
    )
    assert reg({"Name": "x", "Check": {"Args": ["/bin/true"], "Interval": "1s"}}).status_code == 500
    assert reg([1]).status_code == 400 and http.put("/v1/agent/service/register", content=b"{").status_code == 400
    assert http.get("/v1/agent/services").json() == {}, "nothing got registered"


def test_registration_keys_ids_and_replace(fake: FakeConsul, http: httpx.Client, pc: consul.Consul) -> None:
    body = {
        "name": "multi",
        "ID": "m1",
        "enable_tag_override": True,
        "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 81}},
        "Checks": [
            {"TTL": "30s"},
            {"ttl": "30s", "Status": "passing"},
            {"CheckID": "custom", "Name": "mine", "TTL": "30s", "Notes": "n"},
        ],
    }
    assert http.put("/v1/agent/service/register", json=body).status_code == 200
    (entry,) = http.get("/v1/health/service/multi").json()
    assert entry["Service"]["EnableTagOverride"] is True and entry["Service"]["TaggedAddresses"] == {
        "lan": {"Address": "10.0.0.1", "Port": 81}
    }
    checks = {c["CheckID"]: c for c in entry["Checks"]}
    assert set(checks) == {"serfHealth", "service:m1:1", "service:m1:2", "custom"}
    assert checks["service:m1:1"]["Status"] == "critical" and checks["service:m1:2"]["Status"] == "passing"
    assert checks["custom"]["Name"] == "mine" and checks["custom"]["Notes"] == "n"
    # re-registering keeps existing checks' state; ?replace-existing-checks drops the ones not sent
    assert pc.agent.service.register(
        "multi",
        service_id="m1",
        check={"CheckID": "custom", "TTL": "30s", "Status": "warning"},
        replace_existing_checks=True,
    )
    checks = {c["CheckID"]: c for c in http.get("/v1/health/service/multi").json()[0]["Checks"]}
    assert set(checks) == {"serfHealth", "custom"} and checks["custom"]["Status"] == "critical", (
        "status restored, not reset to 'warning'"
    )
    # py-consul's extra_checks: several checks get numbered ids
    pc.agent.service.register(
        "pair", service_id="p1", check=consul.Check.ttl("5s"), extra_checks=[consul.Check.ttl("5s")]
    )
    assert {c["CheckID"] for c in http.get("/v1/health/service/pair").json()[0]["Checks"]} == {
        "serfHealth",
        "service:p1:1",
        "service:p1:2",
    }


def test_idempotent_reregistration_keeps_the_index(fake: FakeConsul, pc: consul.Consul) -> None:
    kwargs = {"service_id": "r1", "port": 1, "tags": ["a"], "check": consul.Check.ttl("30s")}
    pc.agent.service.register("r", **kwargs)
    i1, _ = pc.health.service("r")
    pc.agent.service.register("r", **kwargs)
    assert pc.health.service("r")[0] == i1
    pc.agent.service.register("r", **{**kwargs, "tags": ["b"]})
    i2, nodes = pc.health.service("r")
    assert (
        int(i2) > int(i1)
        and nodes[0]["Service"]["Tags"] == ["b"]
        and nodes[0]["Service"]["CreateIndex"] < nodes[0]["Service"]["ModifyIndex"]
    )


def test_deregister(fake: FakeConsul, http: httpx.Client, pc: consul.Consul) -> None:
    pc.agent.service.register("d", service_id="d1", port=1)
    assert pc.agent.service.deregister("d1") is True
    assert pc.health.service("d")[1] == []
    r = http.put("/v1/agent/service/deregister/d")
    assert (
        r.status_code == 404
        and r.text == 'Unknown service ID "d". Ensure that the service ID is passed, not the service name.'
    )
    with pytest.raises(KeyError):
        fake.deregister("d1")


def test_http_check_is_probed(fake: FakeConsul, http: httpx.Client) -> None:
    state = {"status": "200 OK"}

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        start_response(state["status"], [("Content-Type", "text/plain")])
        return [b"fine"]

    with serve_wsgi(app) as backend:
        body = {
            "Name": "web",
            "Port": backend.port,
            "Check": {"HTTP": backend.url + "/health", "Interval": "100ms", "Timeout": "1s"},
        }
        assert http.put("/v1/agent/service/register", json=body).status_code == 200
        r = wait_until(fake, http, "/v1/health/service/web", lambda r: r.json()[0]["Checks"][1]["Status"] == "passing")
        chk = r.json()[0]["Checks"][1]
        assert chk["Type"] == "http" and chk["Interval"] == "100ms" and chk["Timeout"] == "1s"
        assert chk["Output"] == f"HTTP GET {backend.url}/health: 200 OK Output: fine"
        state["status"] = "429 Too Many Requests"
        wait_until(fake, http, "/v1/health/service/web", lambda r: r.json()[0]["Checks"][1]["Status"] == "warning")
        state["status"] = "503 Service Unavailable"
        wait_until(fake, http, "/v1/health/service/web", lambda r: r.json()[0]["Checks"][1]["Status"] == "critical")


def test_agent_and_catalog_services(fake: FakeConsul, http: httpx.Client, pool: ThreadPoolExecutor) -> None:
    fake.register("web", id="w1", port=80, tags=["v1"], meta={"version": "1"})
    fake.register("web", id="w2", port=81, tags=["v2", "v1"])
    fake.register("db", id="db1", port=5432)
    fake.register("remote", port=1, node_address="10.1.1.1")
    r = http.get("/v1/catalog/services")
    assert r.json() == {"consul": [], "db": [], "remote": [], "web": ["v1", "v2"]}
    assert r.headers["X-Consul-Effective-Consistency"] == "leader"
    fut: Future = pool.submit(http.get, "/v1/catalog/services", params={"index": idx(r), "wait": "30s"})
    assert fake.wait_blocking(1)
    fake.register("new", port=1)
    assert "new" in fut.result(timeout=5).json()
    services = http.get("/v1/agent/services").json()
    assert set(services) == {"w1", "w2", "db1", "new"}, "only this agent's services, not the catalog's"
    assert services["w1"] == {
        "ID": "w1",
        "Service": "web",
        "Tags": ["v1"],
        "Meta": {"version": "1"},
        "Port": 80,
        "Address": "",
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Datacenter": "dc1",
    }
    assert services["db1"]["Meta"] == {} and services["db1"]["Tags"] == []
    assert "X-Consul-Index" not in http.get("/v1/agent/services").headers


# ---- KV ------------------------------------------------------------------------------------------


def test_kv_with_py_consul(fake: FakeConsul, pc: consul.Consul) -> None:
    assert pc.kv.put("rules/orders", "version: 1\n", flags=42) is True
    index, item = pc.kv.get("rules/orders")
    assert (
        item["Value"] == b"version: 1\n"
        and item["Flags"] == 42
        and item["LockIndex"] == 0
        and item["Key"] == "rules/orders"
    )
    assert int(index) == item["ModifyIndex"] == item["CreateIndex"]
    index, item = pc.kv.get("rules/absent")
    assert item is None and int(index) >= 1, "404 still carries X-Consul-Index"
    assert pc.kv.put("rules/empty", None) is True
    assert pc.kv.get("rules/empty")[1]["Value"] is None and fake.kv_get("rules/empty") == b""
    assert fake.kv_get("rules/orders") == b"version: 1\n" and fake.kv_get("nope") is None
    index, items = pc.kv.get("rules/", recurse=True)
    assert [i["Key"] for i in items] == ["rules/empty", "rules/orders"] and int(index) == max(
        i["ModifyIndex"] for i in items
    )
    assert pc.kv.delete("rules/orders") is True and pc.kv.get("rules/orders")[1] is None


def test_kv_http_details(fake: FakeConsul, http: httpx.Client) -> None:
    for key in ("a/1", "a/b/2", "a/b/3", "c"):
        assert http.put(f"/v1/kv/{key}", content=key.encode()).json() is True
    r = http.get("/v1/kv/a/1")
    assert r.json()[0]["Value"] == base64.b64encode(b"a/1").decode() and r.headers["Content-Type"] == "application/json"
    r = http.get("/v1/kv/a/b/2", params={"raw": ""})
    assert r.content == b"a/b/2" and r.headers["Content-Type"] == "text/plain"
    assert http.get("/v1/kv/a/", params={"keys": ""}).json() == ["a/1", "a/b/2", "a/b/3"]
    assert http.get("/v1/kv/a/", params={"keys": "", "separator": "/"}).json() == ["a/1", "a/b/"]
    assert http.get("/v1/kv/", params={"keys": ""}).json() == ["a/1", "a/b/2", "a/b/3", "c"]
    r = http.get("/v1/kv/zzz/", params={"keys": ""})
    assert r.status_code == 404 and r.content == b""
    r = http.get("/v1/kv/missing")
    assert r.status_code == 404 and r.content == b"" and idx(r) >= 1 and r.headers["X-Consul-KnownLeader"] == "true"
    assert http.get("/v1/kv/").text == "Missing key name" and http.put("/v1/kv/", content=b"x").status_code == 400
    r = http.put("/v1/kv/big", content=b"x" * (512 * 1024 + 1))
    assert r.status_code == 413 and r.text.startswith(
        f"Request body({512 * 1024 + 1} bytes) too large, max size: 524288 bytes"
    )
    assert http.put("/v1/kv/ok-big", content=b"x" * (512 * 1024)).json() is True
    # recurse index = highest ModifyIndex under the prefix; a delete leaves a tombstone so it never goes backwards
    before = idx(http.get("/v1/kv/a/", params={"recurse": ""}))
    assert http.delete("/v1/kv/a/b", params={"recurse": ""}).json() is True
    r = http.get("/v1/kv/a/", params={"recurse": ""})
    assert [e["Key"] for e in r.json()] == ["a/1"] and idx(r) > before
    assert http.delete("/v1/kv/a/", params={"recurse": "", "cas": "1"}).status_code == 400


def test_kv_cas(http: httpx.Client) -> None:
    assert http.put("/v1/kv/lock", params={"cas": 0}, content=b"one").json() is True
    assert http.put("/v1/kv/lock", params={"cas": 0}, content=b"two").json() is False, "cas=0 only creates"
    mi = http.get("/v1/kv/lock").json()[0]["ModifyIndex"]
    assert http.put("/v1/kv/lock", params={"cas": mi + 100}, content=b"three").json() is False
    assert http.put("/v1/kv/lock", params={"cas": mi}, content=b"three").json() is True
    assert http.get("/v1/kv/lock", params={"raw": "1"}).content == b"three"
    mi = http.get("/v1/kv/lock").json()[0]["ModifyIndex"]
    assert http.delete("/v1/kv/lock", params={"cas": 0}).json() is False
    assert http.delete("/v1/kv/lock", params={"cas": mi - 1}).json() is False
    assert http.delete("/v1/kv/lock", params={"cas": mi}).json() is True
    assert http.delete("/v1/kv/lock", params={"cas": 5}).json() is True, "a CAS delete of a missing key succeeds"
    assert http.put("/v1/kv/lock", params={"cas": "x"}).status_code == 500
    assert http.put("/v1/kv/lock", params={"cas": 0, "acquire": "s"}).text.startswith("Conflicting flags: ")


def test_kv_blocking_on_a_missing_key(fake: FakeConsul, http: httpx.Client, pool: ThreadPoolExecutor) -> None:
    r = http.get("/v1/kv/config/new")
    assert r.status_code == 404
    fut: Future = pool.submit(http.get, "/v1/kv/config/new", params={"index": idx(r), "wait": "30s"})
    assert fake.wait_blocking(1)
    http.put("/v1/kv/config/other", content=b"x")  # another key: the waiter re-checks and parks again
    with pytest.raises(FutureTimeout):
        fut.result(timeout=0.3)
    fake.kv_put("config/new", "hello")
    r = fut.result(timeout=5)
    assert r.status_code == 200 and base64.b64decode(r.json()[0]["Value"]) == b"hello"


def test_kv_blocking_wakes_on_delete_and_times_out(
    fake: FakeConsul, http: httpx.Client, pool: ThreadPoolExecutor
) -> None:
    fake.kv_put("k", "v")
    r = http.get("/v1/kv/k")
    same = http.get("/v1/kv/k", params={"index": idx(r), "wait": "200ms"})
    assert same.status_code == 200 and idx(same) == idx(r) and same.content == r.content
    fut: Future = pool.submit(http.get, "/v1/kv/k", params={"index": idx(r), "wait": "30s"})
    assert fake.wait_blocking(1)
    fake.kv_delete("k")
    gone = fut.result(timeout=5)
    assert gone.status_code == 404 and idx(gone) > idx(r)


# ---- ACLs ----------------------------------------------------------------------------------------


def test_acl_errors_with_py_consul(acl_fake: FakeConsul) -> None:
    port = acl_fake.port
    writer, reader = consul.Consul(port=port, token=WRITE), consul.Consul(port=port, token=READ)
    anonymous, unknown = consul.Consul(port=port), consul.Consul(port=port, token="who-am-i")
    assert writer.kv.put("rules/x", "1") is True
    assert reader.kv.get("rules/x")[1]["Value"] == b"1"
    with pytest.raises(consul.ACLPermissionDenied) as e:
        reader.kv.put("rules/x", "2")
    assert (
        str(e.value) == f"Permission denied: token with AccessorID '{acl_fake.accessor_id(READ)}' "
        "lacks permission 'key:write' on \"rules/x\""
    )
    with pytest.raises(consul.ACLPermissionDenied) as e:
        anonymous.kv.get("rules/x")
    assert str(e.value).startswith(
        "Permission denied: anonymous token lacks permission 'key:read' on \"rules/x\". The anonymous token"
    )
    with pytest.raises(consul.ACLPermissionDenied, match=r"^ACL not found$"):
        unknown.kv.get("rules/x")
    with pytest.raises(consul.ACLPermissionDenied, match=r"^ACL not found$"):
        unknown.health.service("web")
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'service:write' on \"web\""):
        reader.agent.service.register("web", port=1)
    assert writer.agent.service.register("web", service_id="web-1", port=1, check=consul.Check.ttl("30s")) is True
    with pytest.raises(consul.ACLPermissionDenied, match="'service:write' on \"web\""):
        reader.agent.check.ttl_pass("service:web-1")
    assert writer.agent.check.ttl_pass("service:web-1") is True
    assert len(reader.health.service("web", passing=True)[1]) == 1


def test_acl_token_sources_and_filtering(acl_fake: FakeConsul) -> None:
    acl_fake.register("web", port=1)
    acl_fake.kv_put("a/1", "x")
    with httpx.Client(base_url=acl_fake.url, trust_env=False) as http:
        assert len(http.get("/v1/health/service/web", headers={"X-Consul-Token": READ}).json()) == 1
        assert len(http.get("/v1/health/service/web", headers={"Authorization": f"Bearer {READ}"}).json()) == 1
        assert len(http.get("/v1/health/service/web", params={"token": READ}).json()) == 1
        anon = http.get("/v1/health/service/web")
        assert anon.json() == [] and "X-Consul-Results-Filtered-By-ACLs" not in anon.headers, (
            "no header for anonymous requests"
        )
        weak = http.get("/v1/health/service/web", headers={"X-Consul-Token": NONE})
        assert weak.json() == [] and weak.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        assert http.get("/v1/catalog/services", headers={"X-Consul-Token": NONE}).json() == {}
        assert http.get("/v1/catalog/services", headers={"X-Consul-Token": READ}).json() == {"consul": [], "web": []}
        assert (
            http.get("/v1/agent/services", headers={"X-Consul-Token": NONE}).headers[
                "X-Consul-Results-Filtered-By-ACLs"
            ]
            == "true"
        )
        r = http.get("/v1/kv/a/", params={"recurse": ""}, headers={"X-Consul-Token": NONE})
        assert r.status_code == 404 and r.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        assert http.get("/v1/kv/a/1", headers={"X-Consul-Token": "bogus"}).text == "ACL not found"
        assert r.headers["X-Consul-Default-ACL-Policy"] == "deny"
    # the token went where it was put: never into a URL unless the client chose ?token=
    sent = [req for req in acl_fake.requests if req.headers.get("x-consul-token") == READ]
    assert sent and all(READ not in req.target for req in sent)
    assert any(req.query.get("token") == [READ] for req in acl_fake.requests)


# ---- failure injection, lifecycle, protocol edges --------------------------------------------------


def test_fail_next_fail_all_heal(fake: FakeConsul, http: httpx.Client, pc: consul.Consul) -> None:
    fake.fail_next(500)
    with pytest.raises(consul.ConsulException, match="500 rpc error"):
        pc.health.service("web")
    assert pc.health.service("web")[1] == []
    fake.fail_next(429, count=2)
    assert [(r.status_code, r.text) for r in (http.get("/v1/kv/x"), http.get("/v1/kv/x"))] == [
        (429, "rate limit exceeded")
    ] * 2
    assert http.get("/v1/kv/x").status_code == 404
    fake.fail_all(503)
    assert {http.get("/v1/health/service/x").status_code for _ in range(3)} == {503}
    assert (
        http.get("/v1/health/service/x").text == "No cluster leader"
        and "X-Consul-Index" not in http.get("/v1/kv/x").headers
    )
    fake.heal()
    assert http.get("/v1/health/service/x").status_code == 200
    fake.fail_next(500, body="custom")
    assert http.get("/v1/kv/x").text == "custom"


def test_stall(fake: FakeConsul, http: httpx.Client) -> None:
    fake.stall(0.3)
    started = time.monotonic()
    assert http.get("/v1/kv/x").status_code == 404
    elapsed = time.monotonic() - started
    fake.stall(0)
    assert 0.25 <= elapsed < 5


def test_stop_kills_in_flight_queries_and_start_restores(fake: FakeConsul, pool: ThreadPoolExecutor) -> None:
    fake.register("svc", id="a", port=1)
    fake.kv_put("k", "v")
    port = fake.port
    with httpx.Client(base_url=fake.url, timeout=10, trust_env=False) as http:
        index = idx(http.get("/v1/health/service/svc"))
        fut: Future = pool.submit(http.get, "/v1/health/service/svc", params={"index": index, "wait": "30s"})
        assert fake.wait_blocking(1)
        fake.stop()
        with pytest.raises(httpx.TransportError):
            fut.result(timeout=5)
        assert fake.blocking_queries == 0 and not fake.running
        with pytest.raises(httpx.ConnectError):
            http.get("/v1/kv/k")
        fake.start()
        assert fake.port == port
        assert ids(http.get("/v1/health/service/svc")) == ["a"]
        assert http.get("/v1/kv/k", params={"raw": ""}).content == b"v"


def test_routing_and_methods(http: httpx.Client) -> None:
    r = http.get("/v1/nope")
    assert r.status_code == 404 and r.text == "Invalid URL path: not a recognized HTTP API endpoint\n"
    assert http.get("/nope").status_code == 404
    r = http.delete("/v1/health/service/x")
    assert r.status_code == 405 and r.text == "method DELETE not allowed" and r.headers["Allow"] == "OPTIONS,GET"
    assert http.post("/v1/agent/service/register", json={"Name": "x"}).status_code == 405
    r = http.options("/v1/kv/x")
    assert r.status_code == 200 and r.headers["Allow"] == "OPTIONS,GET,PUT,DELETE"
    assert http.get("/v1/health/service/").text == "Missing service name"
    assert http.get("/v1/health/service/x", params={"dc": "elsewhere"}).text == "No path to datacenter"
    assert http.get("/v1/health/service/x", params={"stale": "", "consistent": ""}).status_code == 400
    assert http.get("/v1/health/service/x", params={"stale": ""}).headers["X-Consul-Effective-Consistency"] == "stale"
    assert http.get("/v1/catalog/services", params={"pretty": ""}).text.endswith("}\n")


def test_large_responses_are_gzipped_and_chunked_like_consul(fake: FakeConsul, pc: consul.Consul) -> None:
    for i in range(30):
        fake.register("big", id=f"big-{i}", port=1000 + i, meta={"version": "1.0.0"})
    with httpx.Client(base_url=fake.url, trust_env=False) as http:
        r = http.get("/v1/health/service/big")
        assert len(r.json()) == 30
        assert r.headers["Content-Encoding"] == "gzip" and r.headers["Vary"] == "Accept-Encoding"
        small = http.get("/v1/kv/x")
        assert "Content-Encoding" not in small.headers and small.headers["Content-Length"] == "0"
        plain = http.get("/v1/health/service/big", headers={"Accept-Encoding": "identity"})
        assert (
            "Content-Encoding" not in plain.headers
            and plain.headers["Transfer-Encoding"] == "chunked"
            and plain.json() == r.json()
        )
    assert len(pc.health.service("big")[1]) == 30


def test_keep_alive_and_recorded_requests(fake: FakeConsul, http: httpx.Client) -> None:
    fake.clear_requests()
    for _ in range(5):
        r = http.get("/v1/kv/a%20b")
    assert r.status_code == 404 and r.http_version == "HTTP/1.1"
    reqs = fake.requests
    assert len(reqs) == 5 and reqs[0].method == "GET" and reqs[0].path == "/v1/kv/a%20b" and "host" in reqs[0].headers
    assert fake.kv_get("a b") is None
    http.put("/v1/kv/a%20b", content=b"1")
    assert fake.kv_get("a b") == b"1", "the key is the decoded path"
