"""``graylb rules push / undo``, ``graylb rollback``, ``graylb status`` as a user runs them, the
same for Consul and Nacos: a real subprocess talking to FakeConsul / FakeNacos over HTTP.

Each test runs once per registry (ids ``consul`` / ``nacos``) through an adaptor from
``cli_rules.py`` that knows the registry's flags, where a rules document lives (a KV key or a
dataId) and what a revision is (a ModifyIndex or an MD5). What only one registry has is in
``test_consul_cli.py`` / ``test_nacos_cli.py``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from graylb.admin import RuleConflict, push, rollback, status, undo
from graylb.errors import RuleError
from graylb.rules.load import validate_rules
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.fake_nacos import FakeNacos
from tests.integration.cli_rules import (
    RULES_A,
    RULES_B,
    ConsulCli,
    NacosCli,
    failed,
    ok,
    rules_files,
)

Registry = ConsulCli | NacosCli


@pytest.fixture(params=["consul", "nacos"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    if request.param == "consul":
        with FakeConsul() as fake:
            yield ConsulCli(fake)
    else:
        with FakeNacos() as fake:
            yield NacosCli(fake)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return rules_files(tmp_path)


# ------------------------------------------------------------------------------ push / undo


def test_push_invalid_document_names_the_location_and_writes_nothing(
    registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    key = registry.key
    ok(registry.run("rules", "push", str(files["a.yaml"]), "--key", key))
    registry.fake.clear_requests()
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES_A.replace("{subset: canary, weight: 10}", "{subset: canery, weight: 10}"))
    err = failed(registry.run("rules", "push", str(bad), "--key", key))
    assert f"invalid rules in {bad}" in err
    assert "services.orders.routes[1].to[0].subset: unknown subset 'canery' (known: canary, stable)" in err
    assert registry.get() == RULES_A and registry.writes() == [] and registry.fake.requests == []


def test_undo_restores_and_undo_again_redoes(registry: Registry, files: dict[str, Path]) -> None:
    key = registry.key
    ok(registry.run("rules", "push", str(files["a.yaml"]), "--key", key))
    ok(registry.run("rules", "push", str(files["b.yaml"]), "--key", key))
    out = ok(registry.run("rules", "undo", "--key", key))
    assert re.search(re.escape(f"restored {key} from {key}.previous (") + registry.revision_re(RULES_A) + r"\)", out), (
        out
    )
    assert "undo again to redo" in out
    assert registry.get() == RULES_A and registry.get(key + ".previous") == RULES_B
    ok(registry.run("rules", "undo", "--key", key))
    assert registry.get() == RULES_B and registry.get(key + ".previous") == RULES_A


def test_undo_without_previous_revision(registry: Registry, files: dict[str, Path]) -> None:
    key = registry.key
    ok(registry.run("rules", "push", str(files["a.yaml"]), "--key", key))
    err = failed(registry.run("rules", "undo", "--key", key))
    assert f"no previous revision at {registry.where(key + '.previous')}" in err
    assert registry.get() == RULES_A


def test_concurrent_change_is_not_overwritten(registry: Registry) -> None:
    key = registry.key
    registry.put(key, RULES_A)

    class Racing(registry.store_class):  # type: ignore[name-defined,misc]
        def get(self, k: str):
            value = super().get(k)
            if k == key:
                registry.put(key, RULES_A + "# someone else\n")  # lands between our read and our write
            return value

    with Racing(registry.config()) as store, pytest.raises(RuleConflict, match=r"changed by someone else.*retry"):
        push(store, key, RULES_B)
    assert registry.get() == RULES_A + "# someone else\n"


def test_push_validates_before_any_request(registry: Registry) -> None:
    with pytest.raises(RuleError):
        push(registry.config(), registry.key, "services: {orders: {default: nope}}")
    assert registry.fake.requests == []


# ------------------------------------------------------------------------------ rollback / status


def test_status_with_rules_shows_the_live_split(registry: Registry) -> None:
    key = registry.key
    registry.register_fleet()
    registry.put(key, RULES_A)
    out = ok(registry.run("status", "orders", "--key", key))
    assert re.search(re.escape(f"rules: {key} (") + registry.revision_re(RULES_A) + ", revision ", out), out
    assert "    stable: 2 routable" in out and "    canary: 1 routable" in out
    assert "default subset 'stable': 2 routable; fallback default" in out
    assert "lanes (lane traffic only): feature-x 1 routable" in out
    assert "route 'beta-users' when header user-group == 'beta': canary 100%" in out
    assert "route 'ten-percent' when always, sticky on header x-user-id: canary 10%, stable 90%" in out
    assert "no route matches -> default subset 'stable' 100%" in out

    # The canary dies: it drops out of the split and the rest re-normalises, as in the router.
    registry.kill_canary()
    out = ok(registry.run("status", "orders", "--key", key))
    assert (
        "route 'ten-percent' when always, sticky on header x-user-id: "
        "stable 100%  [dropped, no routable instance: canary]" in out
    )
    assert (
        "route 'beta-users' when header user-group == 'beta': no routable target -> fallback default: stable 100%"
        in out
    )


def test_rollback_removes_only_that_services_routes(registry: Registry, files: dict[str, Path]) -> None:
    key = registry.key
    registry.register_fleet()
    ok(registry.run("rules", "push", str(files["a.yaml"]), "--key", key))
    out = ok(registry.run("rollback", "orders", "--key", key))
    assert re.search(
        re.escape(f"rolled back service 'orders' in {key} (") + registry.revision_re(registry.get()) + r"\)", out
    ), out
    assert "removed route(s): beta-users, ten-percent" in out
    assert "all its traffic now goes to its default subset 'stable'" in out
    assert registry.get(key + ".previous") == RULES_A
    doc = validate_rules(registry.get() or "")
    assert doc.services["orders"].routes == [] and doc.services["orders"].default == "stable"
    assert [r.name for r in doc.services["payments"].routes] == ["half"]
    assert doc.services["orders"].subsets == validate_rules(RULES_A).services["orders"].subsets

    out = ok(registry.run("status", "orders", "--key", key))
    assert "no routes: all traffic -> default subset 'stable' 100%" in out
    assert "route '" not in out

    ok(registry.run("rules", "undo", "--key", key))  # undo brings the routes back
    assert registry.get() == RULES_A


def test_rollback_unknown_service_or_missing_key(registry: Registry, files: dict[str, Path]) -> None:
    key = registry.key
    err = failed(registry.run("rollback", "orders", "--key", key))
    assert f"{registry.where(key)} does not exist" in err
    ok(registry.run("rules", "push", str(files["a.yaml"]), "--key", key))
    registry.fake.clear_requests()
    err = failed(registry.run("rollback", "inventory", "--key", key))
    assert f"service 'inventory' has no rules in {registry.where(key)} (services there: orders, payments)" in err
    assert registry.writes() == []


def test_admin_functions_in_process(registry: Registry) -> None:
    key = registry.key
    registry.register_fleet()
    cfg = registry.config()
    revision = push(cfg, key, RULES_A)
    assert registry.is_revision_of(revision, RULES_A), revision
    change = rollback(cfg, key, "orders")
    assert "removed route(s): beta-users, ten-percent" in str(change)
    assert not rollback(cfg, key, "orders").changed  # nothing left to remove: no write
    assert "no routes: all traffic -> default subset 'stable' 100%" in status(cfg, "orders", key)
    undo(cfg, key)
    assert registry.get() == RULES_A


# ------------------------------------------------------------------------------ errors


def test_connection_refused_names_the_address(registry: Registry, files: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    err = failed(
        registry.run("rules", "push", str(files["a.yaml"]), "--key", registry.key, address=address, as_option=True)
    )
    assert f"cannot reach {registry.name} at {address}" in err and "connection refused" in err
    err = failed(registry.run("status", "orders", address=address))  # Consul: from CONSUL_HTTP_ADDR this time
    assert f"cannot reach {registry.name} at {address}" in err
