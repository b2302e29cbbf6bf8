"""Instance: immutability, identity, address, bounds, and building from registry mappings."""

from __future__ import annotations

import dataclasses

import pytest
import semantic_version

from graylb.instance import MAX_WEIGHT, Health, Instance

# --------------------------------------------------------------------------- construction


def test_defaults_and_derived_fields() -> None:
    inst = Instance("orders", "10.0.0.1", 8080, version="v1.4.2")
    assert inst.id == "orders@10.0.0.1:8080"
    assert inst.address == "10.0.0.1:8080"
    assert inst.weight == 100
    assert inst.health is Health.PASSING
    assert inst.lane is None
    assert dict(inst.labels) == {}
    assert inst.semver == semantic_version.Version("1.4.2")


def test_non_semver_version_is_kept_raw_without_semver() -> None:
    inst = Instance("orders", "h", 1, version="commit-abc123")
    assert inst.version == "commit-abc123"
    assert inst.semver is None


def test_explicit_id_is_kept() -> None:
    assert Instance("orders", "h", 1, id="pod-7").id == "pod-7"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("10.0.0.1", "10.0.0.1:80"),
        ("orders.internal", "orders.internal:80"),
        ("::1", "[::1]:80"),
        ("fe80::1:2", "[fe80::1:2]:80"),
    ],
)
def test_address_brackets_ipv6(host: str, address: str) -> None:
    assert Instance("orders", host, 80).address == address


def test_label_answers_version_lane_and_metadata() -> None:
    inst = Instance("orders", "h", 1, version="1.0.0", lane="beta", labels={"zone": "a"})
    assert inst.label("version") == "1.0.0"
    assert inst.label("lane") == "beta"
    assert inst.label("zone") == "a"
    assert inst.label("missing") is None


# --------------------------------------------------------------------------- immutability


def test_fields_cannot_be_assigned() -> None:
    inst = Instance("orders", "h", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        inst.weight = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        inst.health = Health.CRITICAL  # type: ignore[misc]


def test_labels_are_read_only_and_detached_from_the_callers_dict() -> None:
    given = {"zone": "a"}
    inst = Instance("orders", "h", 1, labels=given)
    given["zone"] = "b"
    given["extra"] = "x"
    assert dict(inst.labels) == {"zone": "a"}
    with pytest.raises(TypeError):
        inst.labels["zone"] = "c"  # type: ignore[index]


def test_replace_builds_a_new_instance_and_leaves_the_old_one() -> None:
    old = Instance("orders", "h", 1, weight=100)
    new = dataclasses.replace(old, weight=0, health=Health.CRITICAL)
    assert (old.weight, old.health) == (100, Health.PASSING)
    assert (new.weight, new.health, new.id) == (0, Health.CRITICAL, old.id)


def test_equality_by_id_and_content_hash_by_id() -> None:
    a = Instance("orders", "h", 1, version="1.0.0")
    same = Instance("orders", "h", 1, version="1.0.0")
    heavier = Instance("orders", "h", 1, version="1.0.0", weight=5)
    other = Instance("orders", "h", 2, version="1.0.0")
    assert a == same and hash(a) == hash(same)
    assert a != heavier  # same id, changed content: a snapshot must see the change
    assert hash(a) == hash(heavier)
    assert a != other
    assert len({a, same, other}) == 2


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("weight", [0, 1, MAX_WEIGHT])
def test_weight_bounds_accepted(weight: int) -> None:
    assert Instance("orders", "h", 1, weight=weight).weight == weight


@pytest.mark.parametrize("weight", [-1, MAX_WEIGHT + 1])
def test_weight_out_of_bounds_names_instance(weight: int) -> None:
    with pytest.raises(ValueError) as err:
        Instance("orders", "10.0.0.9", 8080, weight=weight)
    msg = str(err.value)
    assert "orders@10.0.0.9:8080" in msg
    assert str(weight) in msg and "weight" in msg


@pytest.mark.parametrize("port", [1, 65535])
def test_port_bounds_accepted(port: int) -> None:
    assert Instance("orders", "h", port).port == port


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_out_of_bounds_names_instance(port: int) -> None:
    with pytest.raises(ValueError) as err:
        Instance("orders", "h", port, id="pod-3")
    msg = str(err.value)
    assert "pod-3" in msg and "port" in msg and str(port) in msg


# --------------------------------------------------------------------------- from_mapping


def test_from_mapping_host_port() -> None:
    inst = Instance.from_mapping("orders", {"host": "10.0.0.1", "port": 8080, "version": "1.4.0", "weight": 50})
    assert (inst.service, inst.host, inst.port, inst.version, inst.weight) == ("orders", "10.0.0.1", 8080, "1.4.0", 50)
    assert inst.semver == semantic_version.Version("1.4.0")


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("10.0.0.1:8080", "10.0.0.1", 8080),
        ("orders.internal:81", "orders.internal", 81),
        ("[::1]:9000", "::1", 9000),
    ],
)
def test_from_mapping_address(address: str, host: str, port: int) -> None:
    inst = Instance.from_mapping("orders", {"address": address})
    assert (inst.host, inst.port) == (host, port)
    assert inst.address == (f"[{host}]:{port}" if ":" in host else address)


def test_from_mapping_string_numbers_are_converted() -> None:
    inst = Instance.from_mapping("orders", {"host": "h", "port": "8080", "weight": "7"})
    assert (inst.port, inst.weight) == (8080, 7)


def test_from_mapping_metadata_version_and_lane_are_lifted_out() -> None:
    inst = Instance.from_mapping(
        "orders", {"host": "h", "port": 1, "metadata": {"version": "v2.0.0", "lane": "beta", "zone": "a", "rev": 3}}
    )
    assert inst.version == "v2.0.0"
    assert inst.semver == semantic_version.Version("2.0.0")
    assert inst.lane == "beta"
    assert dict(inst.labels) == {"zone": "a", "rev": "3"}  # values become strings


def test_from_mapping_labels_key_works_like_metadata() -> None:
    inst = Instance.from_mapping("orders", {"host": "h", "port": 1, "labels": {"version": "1.0.0", "lane": "gray"}})
    assert (inst.version, inst.lane) == ("1.0.0", "gray")


def test_from_mapping_top_level_version_wins_over_label() -> None:
    inst = Instance.from_mapping("orders", {"host": "h", "port": 1, "version": "2.0.0", "labels": {"version": "1.0.0"}})
    assert inst.version == "2.0.0"
    assert inst.label("version") == "2.0.0"


def test_from_mapping_keeps_both_labels_and_metadata() -> None:
    inst = Instance.from_mapping(
        "orders",
        {"host": "h", "port": 1, "metadata": {"zone": "a", "team": "x"}, "labels": {"team": "y", "tier": "gold"}},
    )
    assert dict(inst.labels) == {"zone": "a", "team": "y", "tier": "gold"}


def test_from_mapping_extra_scalar_keys_become_labels() -> None:
    inst = Instance.from_mapping("orders", {"host": "h", "port": 1, "zone": "b", "canary": True, "nested": {"a": 1}})
    assert dict(inst.labels) == {"zone": "b", "canary": "True"}


def test_from_mapping_health_id_and_empty_lane() -> None:
    inst = Instance.from_mapping("orders", {"host": "h", "port": 1, "health": "CRITICAL", "id": "pod-1", "lane": ""})
    assert inst.health is Health.CRITICAL
    assert inst.id == "pod-1"
    assert inst.lane is None


@pytest.mark.parametrize("port", ["abc", None, "80x"])
def test_from_mapping_bad_port_names_service_and_value(port: object) -> None:
    data = {"host": "10.0.0.5"} if port is None else {"host": "10.0.0.5", "port": port}
    with pytest.raises(ValueError) as err:
        Instance.from_mapping("orders", data)
    msg = str(err.value)
    assert "'orders'" in msg and "10.0.0.5" in msg and "port" in msg and repr(port) in msg


def test_from_mapping_port_out_of_range_names_the_instance() -> None:
    with pytest.raises(ValueError, match=r"orders@h:70000.*port"):
        Instance.from_mapping("orders", {"host": "h", "port": 70000})


@pytest.mark.parametrize("weight", ["heavy", None, [1]])
def test_from_mapping_bad_weight_names_service_and_value(weight: object) -> None:
    with pytest.raises(ValueError) as err:
        Instance.from_mapping("orders", {"host": "h", "port": 1, "weight": weight})
    msg = str(err.value)
    assert "'orders'" in msg and "h:1" in msg and "weight" in msg and repr(weight) in msg


def test_from_mapping_weight_out_of_range_names_the_instance() -> None:
    with pytest.raises(ValueError, match=r"orders@h:1: weight 20000"):
        Instance.from_mapping("orders", {"host": "h", "port": 1, "weight": 20000})


def test_from_mapping_bad_health_names_service_and_value() -> None:
    with pytest.raises(ValueError) as err:
        Instance.from_mapping("orders", {"host": "h", "port": 1, "health": "sick"})
    msg = str(err.value)
    assert "'orders'" in msg and "'sick'" in msg and "passing" in msg


@pytest.mark.parametrize("data", [{"port": 1}, {"address": "no-port-here"}, {"host": "", "port": 1}])
def test_from_mapping_without_host_names_service_and_shows_the_entry(data: dict) -> None:
    with pytest.raises(ValueError) as err:
        Instance.from_mapping("orders", data)
    msg = str(err.value)
    assert "'orders'" in msg and "without host" in msg
    assert repr(next(iter(data.values()))) in msg  # what the user wrote, to find the entry


def test_from_mapping_does_not_mutate_its_input() -> None:
    data = {"host": "h", "port": 1, "metadata": {"version": "1.0.0", "zone": "a"}}
    snapshot = {"host": "h", "port": 1, "metadata": {"version": "1.0.0", "zone": "a"}}
    Instance.from_mapping("orders", data)
    assert data == snapshot
