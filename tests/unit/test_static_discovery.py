"""StaticDiscovery: snapshots at once, a new revision per real change, old snapshots untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from graylb.discovery.base import Snapshot
from graylb.discovery.static import StaticDiscovery
from graylb.errors import RuleError
from graylb.instance import Health, Instance


def ids(snap: Snapshot | None) -> list[str]:
    assert snap is not None
    return [i.id for i in snap.instances]


@pytest.fixture
def registry() -> StaticDiscovery:
    return StaticDiscovery(
        {
            "orders": [
                {"host": "10.0.0.1", "port": 8080, "version": "1.4.0"},
                {"host": "10.0.0.2", "port": 8080, "version": "2.0.0-rc.1", "id": "canary-1"},
            ],
            "users": [Instance("users", "10.0.1.1", 9000)],
        }
    )


def test_watch_returns_a_ready_snapshot_at_once(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    snap = watch.snapshot
    assert snap is not None
    assert watch.wait_ready(0)  # no waiting for a static registry
    assert snap.service == "orders"
    assert snap.revision == 1
    assert snap.source == "static"
    assert sorted(ids(snap)) == ["canary-1", "orders@10.0.0.1:8080"]
    assert {i.version for i in snap.instances} == {"1.4.0", "2.0.0-rc.1"}


def test_watch_is_idempotent_and_snapshot_does_not_start_watches(registry: StaticDiscovery) -> None:
    assert registry.snapshot("orders") is None  # not watched yet
    w = registry.watch("orders")
    assert registry.watch("orders") is w
    assert registry.snapshot("orders") is w.snapshot
    assert registry.services() == ["orders"]


def test_unknown_service_gets_an_empty_snapshot_not_a_hang() -> None:
    snap = StaticDiscovery().watch("nobody").snapshot
    assert snap is not None and snap.instances == ()


def test_add_publishes_a_new_revision_and_calls_listeners(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    seen: list[Snapshot] = []
    watch.add_listener(seen.append)
    assert [s.revision for s in seen] == [1]  # a new listener hears the current snapshot
    added = registry.add({"host": "10.0.0.3", "port": 8080, "version": "1.4.1"}, service="orders")
    assert added.id == "orders@10.0.0.3:8080"
    assert watch.snapshot.revision == 2
    assert [s.revision for s in seen] == [1, 2]
    assert seen[-1] is watch.snapshot
    assert added in seen[-1].instances


def test_add_an_instance_object_without_naming_the_service(registry: StaticDiscovery) -> None:
    watch = registry.watch("users")
    registry.add(Instance("users", "10.0.1.2", 9000))
    assert len(watch.snapshot.instances) == 2


def test_add_rejects_an_instance_of_another_service(registry: StaticDiscovery) -> None:
    with pytest.raises(ValueError, match=r"users.*'orders'"):
        registry.add(Instance("users", "h", 1), service="orders")
    with pytest.raises(ValueError, match="service"):
        registry.add({"host": "h", "port": 1})


def test_readers_keep_the_snapshot_they_hold(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    old = watch.snapshot
    old_instances = old.instances
    registry.add({"host": "10.0.0.3", "port": 8080}, service="orders")
    registry.remove(next(i for i in old.instances if i.id == "canary-1"))
    registry.set_health("orders@10.0.0.1:8080", "critical")
    assert watch.snapshot is not old
    assert old.revision == 1
    assert old.instances is old_instances
    assert sorted(ids(old)) == ["canary-1", "orders@10.0.0.1:8080"]
    assert all(i.health is Health.PASSING for i in old.instances)


def test_remove_by_instance_host_port_and_id(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    seen: list[int] = []
    watch.add_listener(lambda s: seen.append(s.revision))
    registry.remove(next(i for i in watch.snapshot.instances if i.id == "canary-1"))  # by Instance
    assert ids(watch.snapshot) == ["orders@10.0.0.1:8080"]
    registry.add({"host": "10.0.0.3", "port": 8080}, service="orders")
    registry.remove("10.0.0.3:8080", service="orders")
    assert ids(watch.snapshot) == ["orders@10.0.0.1:8080"]
    registry.remove("orders@10.0.0.1:8080")
    assert watch.snapshot.instances == ()
    assert seen == [1, 2, 3, 4, 5]


def test_remove_unknown_raises_naming_service_and_instance(registry: StaticDiscovery) -> None:
    registry.watch("orders")
    with pytest.raises(KeyError, match=r"'orders'.*orders@10\.9\.9\.9:1"):
        registry.remove("10.9.9.9:1", service="orders")
    assert registry.watch("orders").snapshot.revision == 1


@pytest.mark.parametrize("op", ["remove", "set_health"])
def test_custom_id_instances_can_be_removed_and_marked(registry: StaticDiscovery, op: str) -> None:
    watch = registry.watch("orders")
    if op == "remove":
        registry.remove("canary-1", service="orders")
        assert ids(watch.snapshot) == ["orders@10.0.0.1:8080"]
    else:
        registry.set_health("canary-1", "critical")
        assert [i.id for i in watch.snapshot.healthy] == ["orders@10.0.0.1:8080"]


def test_set_health_by_default_id(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    seen: list[Snapshot] = []
    watch.add_listener(seen.append)
    registry.set_health("orders@10.0.0.1:8080", "critical")
    snap = watch.snapshot
    assert snap.revision == 2 and seen[-1] is snap
    assert [i.id for i in snap.healthy] == ["canary-1"]
    assert len(snap.instances) == 2  # unhealthy ones stay listed, marked
    registry.set_health("orders@10.0.0.1:8080", "passing")
    assert watch.snapshot.revision == 3
    assert len(watch.snapshot.healthy) == 2


def test_set_health_unknown_raises(registry: StaticDiscovery) -> None:
    with pytest.raises(KeyError, match=r"orders@10.9.9.9:1"):
        registry.set_health("orders@10.9.9.9:1", "critical")


def test_set_instances_replaces_the_whole_set(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    registry.set_instances("orders", [{"address": "10.0.0.7:81", "version": "3.0.0"}])
    assert ids(watch.snapshot) == ["orders@10.0.0.7:81"]
    assert watch.snapshot.revision == 2
    registry.set_instances("orders", [])
    assert watch.snapshot.instances == () and watch.snapshot.revision == 3


def test_unchanged_content_does_not_bump_the_revision(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    calls: list[int] = []
    watch.add_listener(lambda s: calls.append(s.revision))
    registry.add({"host": "10.0.0.1", "port": 8080, "version": "1.4.0"}, service="orders")  # same again
    registry.set_instances(
        "orders",
        [  # same content, other order
            {"host": "10.0.0.2", "port": 8080, "version": "2.0.0-rc.1", "id": "canary-1"},
            {"host": "10.0.0.1", "port": 8080, "version": "1.4.0"},
        ],
    )
    registry.set_health("orders@10.0.0.1:8080", "passing")
    assert watch.snapshot.revision == 1
    assert calls == [1]


def test_changed_metadata_of_the_same_id_is_a_change(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    registry.add({"host": "10.0.0.1", "port": 8080, "version": "1.4.0", "weight": 0}, service="orders")
    assert watch.snapshot.revision == 2
    assert {i.id: i.weight for i in watch.snapshot.instances}["orders@10.0.0.1:8080"] == 0


def test_changes_before_watching_show_in_the_first_snapshot() -> None:
    reg = StaticDiscovery()
    reg.add({"host": "h", "port": 1}, service="orders")
    snap = reg.watch("orders").snapshot
    assert ids(snap) == ["orders@h:1"] and snap.revision == 1


def test_a_failing_listener_does_not_stop_others_or_the_change(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    got: list[int] = []

    def broken(snap: Snapshot) -> None:
        if snap.revision > 1:
            raise RuntimeError("listener bug")

    watch.add_listener(broken)
    watch.add_listener(lambda s: got.append(s.revision))
    registry.add({"host": "10.0.0.3", "port": 1}, service="orders")
    assert watch.snapshot.revision == 2
    assert got == [1, 2]


def test_removed_listener_is_not_called(registry: StaticDiscovery) -> None:
    watch = registry.watch("orders")
    got: list[int] = []
    listener = got.append
    watch.add_listener(listener)
    watch.remove_listener(listener)
    registry.add({"host": "10.0.0.3", "port": 1}, service="orders")
    assert len(got) == 1  # only the immediate call on add_listener


# --------------------------------------------------------------------------- from_file


def test_from_file_yaml(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text(
        """
orders:
  - {address: "10.0.0.1:8080", version: 1.4.0}
  - host: 10.0.0.2
    port: 8080
    weight: 5
    metadata: {version: v2.0.0-rc.1, lane: beta, zone: a}
users:
  - {host: "::1", port: 9000, health: critical}
"""
    )
    reg = StaticDiscovery.from_file(path)
    orders = {i.host: i for i in reg.watch("orders").snapshot.instances}
    assert orders["10.0.0.1"].version == "1.4.0"
    canary = orders["10.0.0.2"]
    assert (canary.weight, canary.version, canary.lane, dict(canary.labels)) == (
        5,
        "v2.0.0-rc.1",
        "beta",
        {"zone": "a"},
    )
    (user,) = reg.watch("users").snapshot.instances
    assert user.address == "[::1]:9000" and user.health is Health.CRITICAL


def test_from_file_accepts_a_services_key_and_json(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    path.write_text('{"services": {"orders": [{"host": "h", "port": 1}]}}')
    assert ids(StaticDiscovery.from_file(str(path)).watch("orders").snapshot) == ["orders@h:1"]


def test_from_file_rejects_a_non_mapping(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        StaticDiscovery.from_file(path)


def test_from_file_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("orders: [\n")
    with pytest.raises(RuleError) as err:
        StaticDiscovery.from_file(path)
    assert str(path) in str(err.value)


def test_from_file_bad_entry_names_the_service(tmp_path: Path) -> None:
    path = tmp_path / "registry.yaml"
    path.write_text("orders:\n  - {host: h, port: eighty}\n")
    with pytest.raises(ValueError, match=r"'orders'.*bad port 'eighty'"):
        StaticDiscovery.from_file(path)
