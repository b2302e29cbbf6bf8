"""One contract, four backends: FakeConsul and a real Consul agent, FakeNacos and a real Nacos.

Every test runs on each backend (``[fake-consul]``, ``[real-consul]``, ``[fake-nacos]``,
``[real-nacos]``). The first group asserts what graylb users rely on through graylb's own
clients (registration, discovery, rules watching, the rule store's compare-and-set, errors);
the second pins wire facts of one registry kind (the other kind skips with the reason). Each
difference found between a fake and its real server is fixed in the fake and pinned here (the
docstring says which).

No sleeps as assertions: waits are conditions polled with a timeout, and "nothing happened"
is only ever asserted through a server-side wait that has to run out (a blocking query or long
poll answering after its wait).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_plus

import httpx
import pytest
from contract_backends import (
    VALID_RULES,
    Backend,
    ConsulBackend,
    NacosBackend,
    StartFailed,
    closing,
    lacking,
    only,
    start_rnacos,
    wait_for,
)

import graylb
from graylb.consul import ConsulACLError, ConsulConfig
from graylb.instance import Health
from graylb.nacos import NacosAuthError

IP = "10.20.30.40"  # registered, never contacted
IP2 = "10.20.30.41"


def _watch_until(discovery: Any, service: str, pred: Any, timeout: float, what: str) -> Any:
    w = discovery.watch(service)
    return wait_for(lambda: w.snapshot is not None and pred(w.snapshot) and w.snapshot, timeout, what)


def _hosts(snapshot: Any, healthy: bool = False) -> set[tuple[str, int]]:
    return {(i.host, i.port) for i in (snapshot.healthy if healthy else snapshot.instances)}


# ============================================================================================
# What graylb users rely on (every backend)
# ============================================================================================


def test_registration_metadata_reaches_discovery(backend: Backend) -> None:
    service = backend.unique("orders")
    with (
        backend.registration(service, ip=IP, port=8080, version="2.1.0", lane="gray", weight=30),
        closing(backend.discovery()) as discovery,
    ):
        snap = _watch_until(discovery, service, lambda s: s.instances, 10, "the registered instance in discovery")
        (inst,) = snap.instances
        assert (inst.host, inst.port, inst.version, inst.lane, inst.weight, inst.health) == (
            IP,
            8080,
            "2.1.0",
            "gray",
            30,
            Health.PASSING,
        )
        assert inst.labels == {} or all(not k.startswith("preserved.") for k in inst.labels)


def test_discovery_follows_registration_and_deregistration(backend: Backend) -> None:
    """A watched service picks up a new instance and a deregistration promptly: Consul through
    a blocking query that the change wakes (well inside its 5 s wait), Nacos by polling."""
    service = backend.unique("pay")
    with closing(backend.discovery()) as discovery:
        w = discovery.watch(service)
        assert w.wait_ready(10) and w.snapshot is not None and w.snapshot.instances == () and not w.stale, (
            "an unknown service is an empty list, not an error"
        )
        with backend.registration(service, ip=IP, port=9001, version="1.0.0", lane=None, weight=100):
            # Consul's blocking query waits 60 s here: seen within 10 s means the change woke it
            _watch_until(discovery, service, lambda s: _hosts(s) == {(IP, 9001)}, 10, "first instance")
            with backend.registration(service, ip=IP2, port=9002, version="2.0.0", lane=None, weight=100):
                _watch_until(
                    discovery, service, lambda s: _hosts(s) == {(IP, 9001), (IP2, 9002)}, 10, "second instance"
                )
            _watch_until(discovery, service, lambda s: _hosts(s) == {(IP, 9001)}, 10, "deregistered instance gone")
        _watch_until(discovery, service, lambda s: s.instances == (), 10, "last instance gone")
        assert not w.stale


def test_concurrent_first_calls_all_wait_for_the_first_snapshot(backend: Backend) -> None:
    """Many threads make the first call to a service at the same moment, on a fresh Balancer:
    every one routes to the registered instance (none sees a half-built entry or routes on an
    empty state while another thread waits for the registry's first answer)."""
    service = backend.unique("first")
    threads = 16
    with backend.registration(service, ip=IP, port=8181, version="1.0.0", lane=None, weight=100):
        with closing(backend.discovery()) as discovery:  # wait until the registry lists it
            _watch_until(discovery, service, lambda s: s.instances, 10, "the registered instance")
        with graylb.Balancer(backend.discovery(), services=[service]) as balancer:
            barrier = threading.Barrier(threads)

            def first_call(_: int) -> Any:
                barrier.wait()
                try:
                    return balancer.start(service, graylb.RequestInfo("GET", "/")).next_instance().address
                except Exception as exc:  # noqa: BLE001 - asserted below
                    return exc

            with ThreadPoolExecutor(threads) as pool:
                results = list(pool.map(first_call, range(threads)))
    assert results == [f"{IP}:8181"] * threads, [r for r in results if r != f"{IP}:8181"]


def test_instance_without_heartbeats_expires(backend: Backend) -> None:
    """Consul: a TTL check (2 s) nobody passes turns critical and ``?passing`` drops the
    instance. Nacos: an ephemeral instance without beats turns unhealthy after its
    ``preserved.heart.beat.timeout`` (1.5 s here). A kept-alive instance next to it stays."""
    service = backend.unique("ttl")
    seen: list[set[tuple[str, int]]] = []
    with (
        backend.registration(service, ip=IP, port=7001, version="1.0.0", lane=None, weight=100),
        closing(backend.discovery()) as discovery,
    ):
        w = discovery.watch(service)
        w.add_listener(lambda snap: seen.append(_hosts(snap, healthy=True)))
        _watch_until(discovery, service, lambda s: (IP, 7001) in _hosts(s), 10, "kept-alive instance")
        backend.register_expiring(service, ip=IP2, port=7002, version="1.0.0")
        _watch_until(
            discovery,
            service,
            lambda s: (IP2, 7002) in _hosts(s, healthy=True) or any((IP2, 7002) in h for h in seen),
            10,
            "expiring instance first healthy",
        )
        _watch_until(
            discovery,
            service,
            lambda s: _hosts(s, healthy=True) == {(IP, 7001)},
            backend.expiry_budget,
            "expiring instance gone from the healthy set",
        )
        assert not w.stale


def test_config_write_read_delete_and_missing_key(backend: Backend) -> None:
    key = backend.unique("key")
    with closing(backend.store()) as store:
        text, version = store.get(key)
        assert text is None and not version, "a missing key reads as absent, not as an error"
        store.put(key, "a: 1\n")
        text, version = store.get(key)
        assert text == "a: 1\n" and version
        store.put(key, "a: ü\n")
        text2, version2 = store.get(key)
        assert text2 == "a: ü\n" and version2 != version
        backend.delete_key(key)
        assert store.get(key)[0] is None


def test_compare_and_set(backend: Backend) -> None:
    """graylb's RuleStore.cas_put: create-only when absent, then only from the version read."""
    key = backend.unique("key")
    with closing(backend.store()) as store:
        _, absent = store.get(key)
        assert store.cas_put(key, "v: 1\n", absent) is True
        assert store.cas_put(key, "v: other\n", absent) is False, "create-only must not overwrite"
        text, version = store.get(key)
        assert text == "v: 1\n"
        assert store.cas_put(key, "v: 2\n", version) is True
        assert store.cas_put(key, "v: 3\n", version) is False, "a stale version must be refused"
        assert store.get(key)[0] == "v: 2\n"


_GUARDED = """\
version: 1
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes:
      - name: split
        to: [{subset: canary, weight: 10}, {subset: stable, weight: 90}]
    guard: {canary: canary, action: rollback}
"""


def test_a_fleet_of_tripped_guards_writes_one_rollback(backend: Backend) -> None:
    """Five processes' guards trip on the same rules at once: each tries the rollback by
    compare-and-set against the rules it judged; exactly one writes, with its annotation; the
    others find the service changed and write nothing; undo brings the routes back."""
    lacking(backend, "cas")
    from graylb import admin
    from graylb.rules.load import parse_rules

    key = backend.unique("key")
    with closing(backend.store()) as store:
        store.put(key, _GUARDED)
        digest = parse_rules(_GUARDED).services["orders"].digest
    barrier = threading.Barrier(5)

    def trip(i: int) -> admin.Change:
        with closing(backend.store()) as own:  # one store (client) per "process"
            barrier.wait()
            for _ in range(5):
                try:
                    note = {"graylb.guard/rolled-back": f"by process {i}"}
                    return admin.rollback(own, key, "orders", expect_digest=digest, annotations=note)
                except admin.RuleConflict:
                    continue
            raise AssertionError("conflicts did not settle")

    with ThreadPoolExecutor(5) as pool:
        changes = list(pool.map(trip, range(5)))
    assert sum(c.changed for c in changes) == 1, [str(c) for c in changes]
    with closing(backend.store()) as store:
        text, _ = store.get(key)
        rolled = parse_rules(text).services["orders"]
        assert rolled.routes == () and rolled.guard is not None
        winner = next(i for i, c in enumerate(changes) if c.changed)
        assert f"by process {winner}" in text
        admin.undo(store, key)
        assert [r.name for r in parse_rules(store.get(key)[0]).services["orders"].routes] == ["split"]


def test_a_rollout_by_two_runners_completes_once_and_rolls_back_to_its_baseline(backend: Backend) -> None:
    """graylb.rollout on the store: 5 -> 25 -> 50 -> 100 with short pauses, driven by two
    runners at once (one history, each step once), the canary the default at the end and the
    baseline named, so a rollback goes back to it; a restarted runner does not double-step."""
    from graylb import admin, rollout
    from graylb.rules.load import parse_rules

    key = backend.unique("key")
    with closing(backend.store()) as store:
        store.put(key, _GUARDED.replace("    guard: {canary: canary, action: rollback}\n", ""))
        rollout.start(store, key, "orders", "canary", [5, 25, 50, 100], pause=0.2, by="ci")
    results: list[str] = []

    def runner(name: str) -> None:
        with closing(backend.store()) as own:
            results.append(rollout.run(own, key, "orders", by=name, poll=0.02))

    threads = [threading.Thread(target=runner, args=(f"runner-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["completed", "completed"]
    with closing(backend.store()) as store:
        svc = parse_rules(store.get(key)[0]).services["orders"]
        assert svc.default == "canary" and svc.routes == ()  # the rollout replaced the old split
        moves = [e.split(": ", 1)[1].split(" (")[0] for e in rollout.history(store, key, "orders").splitlines()]
        assert moves == ["start", "promote", "promote", "promote", "complete"], moves  # each step once
        admin.rollback(store, key, "orders")
        assert parse_rules(store.get(key)[0]).services["orders"].default == "stable"
        # A runner killed mid-pause and restarted: the pause counts from the store's step time.
        t0 = 5_000_000.0
        rollout.retry(store, key, "orders", now=t0)
        assert rollout.tick(store, key, "orders", now=t0 + 0.1) == "waiting"
        assert rollout.tick(store, key, "orders", now=t0 + 0.3) == "promoted"
        assert rollout.tick(store, key, "orders", now=t0 + 0.31) == "waiting"
        # An abort mid-way: the managed route goes and the default is the baseline, in one write.
        rollout.abort(store, key, "orders", why="test")
        svc = parse_rules(store.get(key)[0]).services["orders"]
        assert svc.default == "stable" and svc.routes == ()


def test_rules_watch_follows_changes_and_survives_deletion(backend: Backend) -> None:
    key = backend.unique("key")
    with closing(backend.store()) as store:
        store.put(key, VALID_RULES.format(name="svc-a"))
        with closing(backend.rule_source(key)) as source:
            wait_for(lambda: "svc-a" in source.current.services, 10, "first rules")
            store.put(key, VALID_RULES.format(name="svc-b"))
            # the watch waits 60 s (Consul) / 30 s (Nacos): seen within 10 s means the change woke it
            wait_for(lambda: "svc-b" in source.current.services, 10, "changed rules")
            backend.delete_key(key)
            if isinstance(backend, ConsulBackend):
                wait_for(lambda: source.modify_index is None, 10, "the watch saw the deletion")
            else:
                wait_for(lambda: source.md5 == "", 10, "the watch saw the deletion")
            assert set(source.current.services) == {"svc-b"}, "a deleted key keeps the rules in force"
            store.put(key, VALID_RULES.format(name="svc-c"))
            wait_for(lambda: "svc-c" in source.current.services, 10, "re-created rules")
            assert source.last_fetch_error is None


def _graylb_cli(backend: Backend, *args: str) -> str:
    """``python -m graylb.cli ARGS`` as an operator types it against ``backend``, credentials in
    the registry's own environment variables; its stdout (exit 0 required)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "NACOS_"))}
    if isinstance(backend, ConsulBackend):
        env.update(CONSUL_HTTP_ADDR=backend.url, CONSUL_HTTP_TOKEN=backend.token)
    else:
        assert isinstance(backend, NacosBackend)
        env.update(NACOS_USERNAME=backend.username, NACOS_PASSWORD=backend.password)
        args = (*args, "--nacos", backend.url)
    r = subprocess.run(
        [sys.executable, "-m", "graylb.cli", *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert r.returncode == 0, f"graylb {' '.join(args)}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_the_release_loop_from_the_cli(backend: Backend, tmp_path: Any) -> None:
    """``graylb rules push / status / undo / rollback`` as typed, against the registry: 10 % to
    the canary, step up to 50 %, undo back to 10 %, roll the service back to its stable default."""
    service, key = backend.unique("orders"), backend.unique("key")
    rules = (
        f"version: 1\nservices:\n  {service}:\n"
        '    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}\n'
        "    default: stable\n"
        "    routes: [{name: split, to: [{subset: canary, weight: %d}, {subset: stable, weight: %d}]}]\n"
    )
    ten, fifty = tmp_path / "ten.yaml", tmp_path / "fifty.yaml"
    ten.write_text(rules % (10, 90))
    fifty.write_text(rules % (50, 50))
    with (
        backend.registration(service, ip=IP, port=7401, version="1.4.2", lane=None, weight=100),
        backend.registration(service, ip=IP2, port=7402, version="2.0.0", lane=None, weight=100),
        closing(backend.store()) as store,
    ):
        _graylb_cli(backend, "rules", "push", str(ten), "--key", key)
        wait_for(
            lambda: (
                "canary: 1 routable" in (out := _graylb_cli(backend, "status", service, "--key", key))
                and "stable: 1 routable" in out
            ),
            10,
            "both instances routable in `graylb status`",
        )
        assert "route 'split' when always: canary 10%, stable 90%" in _graylb_cli(
            backend, "status", service, "--key", key
        )

        _graylb_cli(backend, "rules", "push", str(fifty), "--key", key)
        assert "canary 50%, stable 50%" in _graylb_cli(backend, "status", service, "--key", key)
        assert "restored" in _graylb_cli(backend, "rules", "undo", "--key", key)
        assert store.get(key)[0] == rules % (10, 90)

        out = _graylb_cli(backend, "rollback", service, "--key", key)
        assert "all its traffic now goes to its default subset 'stable'" in out
        status = _graylb_cli(backend, "status", service, "--key", key)
        assert "no routes: all traffic -> default subset 'stable' 100%" in status
        assert store.get(key + ".previous")[0] == rules % (10, 90)
    backend.delete_key(key)
    backend.delete_key(key + ".previous")


def test_bad_credentials_are_a_clear_auth_error(backend: Backend) -> None:
    key = backend.unique("key")
    with closing(backend.store()) as good:
        good.put(key, "a: 1\n")
    with pytest.raises((ConsulACLError, NacosAuthError)) as err:
        with closing(type(backend.store())(backend.bad_config())) as bad:
            bad.get(key)
    assert "403" in str(err.value) or "password" in str(err.value).lower() or "refused" in str(err.value).lower()
    service = backend.unique("auth")
    with closing(type(backend.discovery())(backend.bad_config())) as discovery:
        w = discovery.watch(service)
        assert w.wait_ready(10)
        assert w.snapshot is None and w.stale and w.last_error, (
            "bad credentials are an error, never an empty instance list"
        )


# ============================================================================================
# Consul wire facts
# ============================================================================================


def _idx(r: httpx.Response) -> int:
    return int(r.headers["X-Consul-Index"])


def test_consul_kv_index_404_and_cas_on_the_wire(backend: Backend) -> None:
    only(backend, "consul", "X-Consul-Index, KV 404-with-index and ?cas are Consul's")
    assert isinstance(backend, ConsulBackend)
    http, key = backend.http, backend.unique("key")
    missing = http.get(f"/v1/kv/{key}")
    assert missing.status_code == 404 and missing.content == b"" and _idx(missing) >= 1, (
        "a missing key: 404, empty body, a real index"
    )
    assert http.put(f"/v1/kv/{key}", params={"cas": 0}, content=b"one").json() is True
    assert http.put(f"/v1/kv/{key}", params={"cas": 0}, content=b"two").json() is False, "cas=0 is create-only"
    r = http.get(f"/v1/kv/{key}")
    (entry,) = r.json()
    assert base64.b64decode(entry["Value"]) == b"one" and entry["ModifyIndex"] == _idx(r) >= _idx(missing)
    assert http.put(f"/v1/kv/{key}", params={"cas": entry["ModifyIndex"] + 1000}, content=b"x").json() is False
    assert http.put(f"/v1/kv/{key}", params={"cas": entry["ModifyIndex"]}, content=b"three").json() is True
    assert http.get(f"/v1/kv/{key}", params={"raw": ""}).content == b"three"
    assert http.put(f"/v1/kv/{key}", content=b"").json() is True
    assert http.get(f"/v1/kv/{key}").json()[0]["Value"] is None, 'an empty value is null, not ""'


def test_consul_kv_blocking_query(backend: Backend) -> None:
    only(backend, "consul", "blocking queries are Consul's")
    assert isinstance(backend, ConsulBackend)
    http, key = backend.http, backend.unique("key")
    seen = [_idx(http.get(f"/v1/kv/{key}"))]
    with ThreadPoolExecutor(2) as pool:
        # a blocking read on a key that does not exist yet wakes when it is created
        fut = pool.submit(http.get, f"/v1/kv/{key}", params={"index": seen[-1], "wait": "10s"})
        http.put(f"/v1/kv/{key}", content=b"v1")
        r = fut.result(15)
        assert r.status_code == 200 and _idx(r) > seen[-1]  # a run-out wait would keep the index
        seen.append(_idx(r))
        # nothing changes: it answers after ?wait (+ at most wait/16) with the same index and body
        started = time.monotonic()
        same = http.get(f"/v1/kv/{key}", params={"index": seen[-1], "wait": "1s"})
        took = time.monotonic() - started
        assert same.status_code == 200 and _idx(same) == seen[-1] and same.json() == r.json()
        assert took >= 0.9, f"answered after {took:.2f}s for wait=1s"
        # a write of the same value is not a change
        http.put(f"/v1/kv/{key}", content=b"v1")
        assert _idx(http.get(f"/v1/kv/{key}")) == seen[-1]
        # a change and a delete wake it with a higher index; the delete answers 404 with the index
        fut = pool.submit(http.get, f"/v1/kv/{key}", params={"index": seen[-1], "wait": "10s"})
        http.put(f"/v1/kv/{key}", content=b"v2")
        seen.append(_idx(fut.result(15)))
        fut = pool.submit(http.get, f"/v1/kv/{key}", params={"index": seen[-1], "wait": "10s"})
        http.delete(f"/v1/kv/{key}")
        gone = fut.result(15)
        assert gone.status_code == 404 and gone.content == b""
        seen.append(_idx(gone))
    assert seen == sorted(seen) and len(set(seen)) == len(seen), f"indexes must only grow: {seen}"
    bad = http.get(f"/v1/kv/{key}", params={"index": 1, "wait": "soon"})
    assert bad.status_code == 400 and bad.text.strip() == "Invalid wait time"


def test_consul_blocking_health_query_ignores_other_services(backend: Backend) -> None:
    """Pins a difference FakeConsul had: a blocking health query is served from the agent's
    streaming view of that one service, so changes to *other* services - even one losing its
    last instance, which moves the catalog's extinction index - do not wake it (the fake used
    to answer at once with the moved index)."""
    only(backend, "consul", "blocking queries are Consul's")
    assert isinstance(backend, ConsulBackend)
    http, service, other = backend.http, backend.unique("quiet"), backend.unique("other")
    first = http.get(f"/v1/health/service/{service}")
    assert first.status_code == 200 and first.json() == [] and _idx(first) >= 1, (
        "an unknown service: 200 [] with an index"
    )
    # make the agent's view of `service` exist: a blocking query that runs out
    view = http.get(f"/v1/health/service/{service}", params={"index": _idx(first), "wait": "1s"})
    index = _idx(view)
    assert view.json() == [] and view.headers.get("X-Consul-Query-Backend") == "streaming"
    assert http.put("/v1/agent/service/register", json={"Name": other, "Port": 1}).status_code == 200
    assert http.put(f"/v1/agent/service/deregister/{other}").status_code == 200
    started = time.monotonic()
    quiet = http.get(f"/v1/health/service/{service}", params={"index": index, "wait": "1s"})
    assert _idx(quiet) == index and quiet.json() == [] and time.monotonic() - started >= 0.9, (
        "other services must not wake it"
    )
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(http.get, f"/v1/health/service/{service}", params={"index": index, "wait": "10s"})
        assert http.put("/v1/agent/service/register", json={"Name": service, "Port": 2}).status_code == 200
        woke = fut.result(15)
        assert _idx(woke) > index and len(woke.json()) == 1, "its own change wakes it (a run-out wait keeps the index)"
    assert http.put(f"/v1/agent/service/deregister/{service}").status_code == 200


def test_consul_health_entry_shape(backend: Backend) -> None:
    """Pins differences FakeConsul had: the agent adds ``lan_ipv4`` / ``wan_ipv4`` tagged
    addresses to a service registered with an IP address (not to one without), lists node
    checks before the service's, and reports its version in the node's Meta."""
    only(backend, "consul", "health entries are Consul's")
    assert isinstance(backend, ConsulBackend)
    http, service = backend.http, backend.unique("shape")
    body = {
        "Name": service,
        "ID": f"{service}-1",
        "Address": IP,
        "Port": 8443,
        "Tags": ["v2"],
        "Meta": {"version": "2.0.0"},
        "Weights": {"Passing": 3, "Warning": 1},
        "Check": {"TTL": "30s", "Status": "passing"},
    }
    assert http.put("/v1/agent/service/register", json=body).status_code == 200
    assert (
        http.put("/v1/agent/service/register", json={"Name": service, "ID": f"{service}-2", "Port": 8444}).status_code
        == 200
    )
    try:
        r = wait_for(
            lambda: (x := http.get(f"/v1/health/service/{service}")).status_code == 200 and len(x.json()) == 2 and x,
            10,
            "both instances",
        )
        one, two = sorted(r.json(), key=lambda e: e["Service"]["ID"])
        svc = one["Service"]
        assert (
            svc["Address"] == IP
            and svc["Port"] == 8443
            and svc["Meta"] == {"version": "2.0.0"}
            and svc["Weights"] == {"Passing": 3, "Warning": 1}
        )
        assert svc["TaggedAddresses"] == {
            "lan_ipv4": {"Address": IP, "Port": 8443},
            "wan_ipv4": {"Address": IP, "Port": 8443},
        }
        assert (
            "TaggedAddresses" not in two["Service"]
            and two["Service"]["Address"] == ""
            and two["Service"]["Meta"] is None
            and two["Service"]["Tags"] == []
        )
        assert two["Node"]["Address"], "an empty Service.Address means the node's address"
        assert [c["CheckID"] for c in one["Checks"]] == ["serfHealth", f"service:{service}-1"], (
            "node checks first, then the service's"
        )
        assert [c["CheckID"] for c in two["Checks"]] == ["serfHealth"]
        assert one["Node"]["Meta"].get("consul-version") == "1.16.1"
        agent = http.get("/v1/agent/services").json()[f"{service}-1"]
        assert agent["TaggedAddresses"] == svc["TaggedAddresses"]
    finally:
        for sid in (f"{service}-1", f"{service}-2"):
            assert http.put(f"/v1/agent/service/deregister/{sid}").status_code == 200
    unknown = http.put(f"/v1/agent/service/deregister/{service}-1")
    assert (
        unknown.status_code == 404
        and unknown.text.strip()
        == f'Unknown service ID "{service}-1". Ensure that the service ID is passed, not the service name.'
    )


def test_consul_filters_and_validation_errors(backend: Backend) -> None:
    """Pins differences FakeConsul had: a bad ``?filter`` is a 500 in Consul 1.16 (the fake said
    400) and a value of the wrong type is a "Failed to coerce value" error; an HTTP check
    without an interval names "OSService" checks (not "GRPC")."""
    only(backend, "consul", "Consul's filter and registration errors")
    assert isinstance(backend, ConsulBackend)
    http, service = backend.http, backend.unique("flt")
    for sid, lane in ((f"{service}-g", "gray"), (f"{service}-b", "blue")):
        assert (
            http.put(
                "/v1/agent/service/register", json={"Name": service, "ID": sid, "Port": 1, "Meta": {"lane": lane}}
            ).status_code
            == 200
        )
    try:
        r = http.get(f"/v1/health/service/{service}", params={"filter": 'Service.Meta.lane == "gray"'})
        assert [e["Service"]["ID"] for e in r.json()] == [f"{service}-g"]
        prefix = "Failed to create boolean expression evaluator: "
        cases = {
            'Service.Nope == "x"': 'Selector "Service.Nope" is not valid',
            'Service.Port == "abc"': 'Failed to coerce value "abc" for selector "Service.Port": '
            'strconv.ParseInt: parsing "abc": invalid syntax',
            'Service.Tags == "x"': 'Invalid match operator "Equal" for selector "Service.Tags"',
        }
        for expression, message in cases.items():
            bad = http.get(f"/v1/health/service/{service}", params={"filter": expression})
            assert (bad.status_code, bad.text) == (500, prefix + message), expression
        r = http.put(
            "/v1/agent/service/register", json={"Name": "x", "Port": 1, "Check": {"HTTP": "http://127.0.0.1:1/"}}
        )
        assert (r.status_code, r.text) == (
            400,
            "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
        )
        r = http.put(
            "/v1/agent/service/register", json={"Name": "x", "Port": 1, "Weights": {"Passing": 0, "Warning": 1}}
        )
        assert r.status_code == 400 and r.text.startswith("Invalid Weights")
    finally:
        for sid in (f"{service}-g", f"{service}-b"):
            http.put(f"/v1/agent/service/deregister/{sid}")


def test_consul_ttl_expiry_on_the_wire(backend: Backend) -> None:
    only(backend, "consul", "TTL checks are Consul's")
    assert isinstance(backend, ConsulBackend)
    http, service = backend.http, backend.unique("ttlwire")
    backend.register_expiring(service, ip=IP, port=7100, version="1")
    passing = http.get(f"/v1/health/service/{service}", params={"passing": "1"})
    assert len(passing.json()) == 1
    index = _idx(passing)
    deadline = time.monotonic() + backend.expiry_budget
    while True:  # follow the blocking query until the TTL has expired
        r = http.get(f"/v1/health/service/{service}", params={"index": index, "wait": "5s"})
        status = {c["CheckID"]: (c["Status"], c["Output"]) for c in r.json()[0]["Checks"]}
        if status[f"{service}-{IP}-7100-ttl"][0] == "critical":
            break
        assert time.monotonic() < deadline, status
        index = _idx(r)
    assert status[f"{service}-{IP}-7100-ttl"] == ("critical", "TTL expired")
    assert http.get(f"/v1/health/service/{service}", params={"passing": "1"}).json() == []
    assert http.put(f"/v1/agent/service/deregister/{service}-{IP}-7100").status_code == 200


def test_consul_acl_errors_on_the_wire(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    only(backend, "consul", "Consul's ACL answers")
    assert isinstance(backend, ConsulBackend)
    key, service = backend.unique("key"), backend.unique("acl")
    assert backend.http.put(f"/v1/kv/{key}", content=b"x").json() is True
    assert backend.http.put("/v1/agent/service/register", json={"Name": service, "Port": 1}).status_code == 200
    try:
        unknown = "00000000-1111-2222-3333-444444444444"
        for headers, params in (
            ({"X-Consul-Token": unknown}, {}),
            ({"Authorization": f"Bearer {unknown}"}, {}),
            ({}, {"token": unknown}),
        ):
            with backend.client(None) as c:
                r = c.get(f"/v1/kv/{key}", headers=headers, params=params)
            assert r.status_code == 403 and r.text.strip() == "ACL not found"
        with backend.client(backend.read_token) as c:
            assert c.get(f"/v1/kv/{key}").status_code == 200
            r = c.put(f"/v1/kv/{key}", content=b"y")
            assert r.status_code == 403 and r.text.startswith("Permission denied") and "'key:write'" in r.text
        with backend.client(None) as c:
            r = c.get(f"/v1/kv/{key}")
            assert r.status_code == 403 and "anonymous token lacks permission 'key:read'" in r.text
            anon = c.get(f"/v1/health/service/{service}")
            assert (
                anon.status_code == 200
                and anon.json() == []
                and "X-Consul-Results-Filtered-By-ACLs" not in anon.headers
            )
        with backend.client(backend.no_token) as c:
            hidden = c.get(f"/v1/health/service/{service}")
            assert (
                hidden.status_code == 200
                and hidden.json() == []
                and hidden.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
            )
        # graylb reads that header: a token that cannot see the service is an error, not "no instances"
        with closing(type(backend.discovery())(backend.config(backend.no_token))) as discovery:
            w = discovery.watch(service)
            assert w.wait_ready(10) and w.snapshot is None and "service:read" in (w.last_error or "")
        # no token at all: Consul says nothing was filtered, so graylb warns that empty may mean hidden
        with (
            caplog.at_level("WARNING", logger="graylb.discovery"),
            closing(type(backend.discovery())(ConsulConfig(backend.url, timeout=10))) as discovery,
        ):
            w = discovery.watch(service)
            assert w.wait_ready(10) and w.snapshot is not None and w.snapshot.instances == ()
        assert any(
            f"service '{service}' has no instances visible to Consul's anonymous token" in r.getMessage()
            for r in caplog.records
        )
        with closing(type(backend.store())(backend.config(backend.read_token))) as store:
            with pytest.raises(ConsulACLError, match="lacks a permission"):
                store.put(key, "z")
    finally:
        backend.http.put(f"/v1/agent/service/deregister/{service}")


# ============================================================================================
# Nacos wire facts
# ============================================================================================


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _listen(
    backend: NacosBackend, data_id: str, md5: str, *, timeout_ms: int, no_hangup: bool = False
) -> httpx.Response:
    headers = {"Long-Pulling-Timeout": str(timeout_ms)}
    if no_hangup:
        headers["Long-Pulling-Timeout-No-Hangup"] = "true"
    return backend.raw(
        "POST",
        "/v1/cs/configs/listener",
        data={"Listening-Configs": f"{data_id}\x02DEFAULT_GROUP\x02{md5}\x02\x01"},
        headers=headers,
        timeout=httpx.Timeout(10, read=timeout_ms / 1000 + 15),
    )


def _changed(r: httpx.Response) -> list[list[str]]:
    return [item.strip().split("\x02") for item in unquote_plus(r.text).split("\x01") if item.strip()]


def test_nacos_config_md5_and_long_polling(backend: Backend) -> None:
    only(backend, "nacos", "Content-MD5 and the listener are Nacos's")
    assert isinstance(backend, NacosBackend)
    data_id = backend.unique("key")
    params = {"dataId": data_id, "group": "DEFAULT_GROUP"}
    missing = backend.raw("GET", "/v1/cs/configs", params=params)
    assert missing.status_code == 404 and missing.text.strip() == "config data not exist"
    assert _listen(backend, data_id, "", timeout_ms=30000, no_hangup=True).text.strip() == "", (
        "no copy of a missing item: nothing changed"
    )
    content = "route: grün\n"
    assert backend.raw("POST", "/v1/cs/configs", data={**params, "content": content}).text.strip() == "true"
    r = backend.raw("GET", "/v1/cs/configs", params=params)
    assert r.status_code == 200 and r.content.decode("utf-8") == content and r.headers["Content-MD5"] == _md5(content)
    assert _changed(_listen(backend, data_id, "", timeout_ms=30000)) == [[data_id, "DEFAULT_GROUP"]], (
        "a stale md5 answers at once with the key"
    )
    assert _listen(backend, data_id, _md5(content), timeout_ms=30000, no_hangup=True).text.strip() == ""
    hold_ms = int((backend.min_hold + 0.5) * 1000)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        fut = pool.submit(_listen, backend, data_id, _md5(content), timeout_ms=hold_ms)
        quiet = fut.result(backend.min_hold + 20)
        assert (
            quiet.status_code == 200
            and quiet.text.strip() == ""
            and time.monotonic() - started >= backend.min_hold - 0.1
        )
        fut = pool.submit(_listen, backend, data_id, _md5(content), timeout_ms=30000)
        assert backend.raw("POST", "/v1/cs/configs", data={**params, "content": "route: blau\n"}).text.strip() == "true"
        woke = fut.result(40)
        assert _changed(woke) == [[data_id, "DEFAULT_GROUP"]]  # a run-out poll answers empty
    assert backend.raw("DELETE", "/v1/cs/configs", params=params).text.strip() == "true"


def test_nacos_cas_md5(backend: Backend) -> None:
    """Pins a difference FakeNacos had (from the 2.x source; no real Nacos here): a publish with
    a ``casMd5`` header that no longer matches is refused (500 ``Cas publish fail``)."""
    only(backend, "nacos", "casMd5 is Nacos's compare-and-set")
    lacking(backend, "cas")
    assert isinstance(backend, NacosBackend)
    data_id = backend.unique("key")
    form = {"dataId": data_id, "group": "DEFAULT_GROUP"}
    assert backend.raw("POST", "/v1/cs/configs", data={**form, "content": "v: 1\n"}).text.strip() == "true"
    stale = backend.raw(
        "POST", "/v1/cs/configs", data={**form, "content": "v: x\n"}, headers={"casMd5": _md5("v: 0\n")}
    )
    assert stale.status_code >= 400 and "cas publish fail" in stale.text.lower()
    assert backend.raw("GET", "/v1/cs/configs", params=form).text == "v: 1\n"
    ok = backend.raw("POST", "/v1/cs/configs", data={**form, "content": "v: 2\n"}, headers={"casMd5": _md5("v: 1\n")})
    assert ok.status_code == 200 and ok.text.strip() == "true"
    assert backend.raw("GET", "/v1/cs/configs", params=form).text == "v: 2\n"
    backend.delete_key(data_id)


def test_nacos_auth_on_the_wire(backend: Backend) -> None:
    only(backend, "nacos", "Nacos's login and accessToken")
    assert isinstance(backend, NacosBackend)
    with httpx.Client(base_url=backend.config().base_url, timeout=10, trust_env=False) as c:
        login = c.post("/v1/auth/login", data={"username": backend.username, "password": backend.password})
        assert login.status_code == 200 and login.json()["accessToken"] and login.json()["tokenTtl"] > 0
        assert c.post("/v1/auth/login", data={"username": backend.username, "password": "wrong"}).status_code == 403
        params = {"dataId": "anything", "group": "DEFAULT_GROUP"}
        assert c.get("/v1/cs/configs", params=params).status_code == 403, "no token with auth on"
        assert c.get("/v1/cs/configs", params={**params, "accessToken": "not-a-token"}).status_code == 403
        r = c.get("/v1/cs/configs", params={**params, "accessToken": login.json()["accessToken"]})
        assert r.status_code == 404


def test_nacos_protection_threshold_keeps_last_good_snapshot(backend: Backend) -> None:
    """All instances unhealthy with the default threshold 0: Nacos returns them all
    (``reachProtectionThreshold``) and graylb keeps its last good snapshot, marked stale; once
    the dead instance is deleted the list is empty and that is what graylb shows."""
    lacking(backend, "protect-threshold")
    only(backend, "nacos", "the protection threshold is Nacos's")
    assert isinstance(backend, NacosBackend)
    service = backend.unique("protect")
    with closing(backend.discovery()) as discovery:
        backend.register_expiring(service, ip=IP, port=7200, version="1")
        w = discovery.watch(service)
        _watch_until(discovery, service, lambda s: _hosts(s, healthy=True) == {(IP, 7200)}, 10, "the instance, healthy")
        wait_for(
            lambda: w.stale and "protection threshold" in (w.last_error or ""),
            backend.expiry_budget,
            "protection threshold reported",
        )
        assert _hosts(w.snapshot, healthy=True) == {(IP, 7200)}, "the last good snapshot stays in force"
        _watch_until(
            discovery,
            service,
            lambda s: s.instances == () and not w.stale,
            backend.expiry_budget + 10,
            "deleted after ip.delete.timeout",
        )


def test_nacos_persistent_instances_of_a_service_are_independent(backend: Backend) -> None:
    """Persistent instances (``ephemeral=False``, no heartbeats) registered some time apart are
    all listed, and deregistering one leaves the other. Nacos 2.x keeps each persistent
    instance in its own ``ip:port#false`` client (``InstanceOperatorClientImpl``). (rnacos 0.8.8
    drops persistent instances registered in its first ~5 s at the service's next registration;
    ``start_rnacos`` waits that out.)"""
    only(backend, "nacos", "persistent instances are Nacos's")
    assert isinstance(backend, NacosBackend)
    from graylb.nacos.registration import NacosRegistration

    service = backend.unique("persistent")

    def persistent(port: int, version: str) -> NacosRegistration:
        return NacosRegistration(backend.config(), service, ip=IP, port=port, version=version, ephemeral=False)

    with closing(backend.discovery()) as discovery, persistent(7301, "1.0.0"):
        _watch_until(discovery, service, lambda s: _hosts(s) == {(IP, 7301)}, 10, "the first persistent instance")
        time.sleep(backend.min_hold)  # the first one is not new any more when the second comes
        with persistent(7302, "2.0.0"):
            snap = _watch_until(discovery, service, lambda s: (IP, 7302) in _hosts(s), 10, "the second one")
            assert {(i.port, i.version) for i in snap.instances} == {(7301, "1.0.0"), (7302, "2.0.0")}
        _watch_until(discovery, service, lambda s: _hosts(s) == {(IP, 7301)}, 10, "the first left alone")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the SDK calls Thread.setDaemon, ssl.SSLContext()
def test_the_official_nacos_python_sdk_is_a_peer(backend: Backend, tmp_path: Any) -> None:
    """nacos-sdk-python 2.x (v1 HTTP, with auth) against the same server graylb talks to:
    what it registers graylb discovers, what graylb's store writes it reads, and back."""
    only(backend, "nacos", "nacos-sdk-python is Nacos's client")
    import nacos

    assert isinstance(backend, NacosBackend)
    client = nacos.NacosClient(
        server_addresses=backend.url.split("://", 1)[1],
        namespace="",
        username=backend.username,
        password=backend.password,
        logDir=str(tmp_path / "logs"),
    )
    client.set_options(snapshot_base=str(tmp_path / "snapshot"), failover_base=str(tmp_path / "failover"))
    service = backend.unique("sdk")
    assert client.add_naming_instance(service, "10.0.0.7", 8080, metadata={"version": "1.4.2"}, ephemeral=False)
    with closing(backend.discovery()) as discovery:
        watch = discovery.watch(service)
        wait_for(lambda: watch.snapshot and watch.snapshot.instances, 15, "graylb to see the SDK's instance")
        (inst,) = watch.snapshot.instances
        assert (inst.host, inst.port, inst.version) == ("10.0.0.7", 8080, "1.4.2")
    key = backend.unique("key")
    with closing(backend.store()) as store:
        store.put(key, "version: 1\n")
        assert client.get_config(key, "DEFAULT_GROUP") == "version: 1\n"
        assert client.publish_config(key, "DEFAULT_GROUP", "version: 2\n")
        wait_for(lambda: store.get(key)[0] == "version: 2\n", 10, "graylb's store to read the SDK's write")
    assert client.remove_naming_instance(service, "10.0.0.7", 8080, ephemeral=False)


def test_a_failed_rnacos_start_is_retried_in_a_fresh_directory(tmp_path: Any) -> None:
    """rnacos 0.8.8 sometimes dies while starting: each of the three starts gets its own
    directory, and the error says how many were tried and why the last one failed."""
    binary = tmp_path / "rnacos"
    binary.write_text(
        '#!/bin/sh\necho started >> "$(dirname "$0")/starts"\necho \'panicked at raftapply.rs:421\'\nexit 101\n'
    )
    binary.chmod(0o755)
    with pytest.raises(StartFailed, match=r"did not start \(3 tries\).*exited with 101.*panicked"):
        start_rnacos(binary, tmp_path / "work")
    assert (tmp_path / "starts").read_text().count("started") == 3
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["start-1", "start-2", "start-3"]
