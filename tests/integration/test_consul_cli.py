"""``graylb rules push / undo``, ``graylb rollback``, ``graylb status`` as a user runs them: a real
subprocess talking to FakeConsul over HTTP, the address from CONSUL_HTTP_ADDR and the token only
ever from CONSUL_HTTP_TOKEN or --token-file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graylb.consul import ConsulConfig
from graylb.admin import RuleConflict, push, rollback, status, undo
from graylb.consul import ConsulKVStore
from graylb.errors import RuleError
from graylb.rules.load import validate_rules
from graylb.testing.fake_consul import FakeConsul
from tests.integration.cli_rules import RULES_A, RULES_B

ROOT = Path(__file__).resolve().parents[2]
KEY = "graylb/rules"



def run(fake: FakeConsul | None, *args: str, token: str | None = None, address: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    if fake is not None or address:
        env["CONSUL_HTTP_ADDR"] = address or fake.url  # type: ignore[union-attr]
    if token is not None:
        env["CONSUL_HTTP_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "graylb.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.fixture
def fake() -> Iterator[FakeConsul]:
    with FakeConsul() as f:
        yield f


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("a.yaml", RULES_A), ("b.yaml", RULES_B)):
        out[name] = tmp_path / name
        out[name].write_text(text)
    return out


def kv(fake: FakeConsul, key: str = KEY) -> str | None:
    value = fake.kv_get(key)
    return None if value is None else value.decode()


def writes(fake: FakeConsul) -> list:
    return [r for r in fake.requests if r.method in ("PUT", "DELETE") and r.path.startswith("/v1/kv/")]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


def failed(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


# ------------------------------------------------------------------------------ push / undo


def test_push_writes_the_document_and_keeps_the_previous_revision(fake: FakeConsul, files: dict[str, Path]) -> None:
    out = ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    assert f"pushed {files['a.yaml']} to {KEY} (index " in out and "did not exist before" in out
    assert kv(fake) == RULES_A and kv(fake, KEY + ".previous") is None

    out = ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY))
    index = int(out.split("(index ")[1].split(")")[0])
    assert out.strip() == f"pushed {files['b.yaml']} to {KEY} (index {index}); previous revision kept at {KEY}.previous"
    assert kv(fake) == RULES_B and kv(fake, KEY + ".previous") == RULES_A
    # The write was a compare-and-set on the index read just before.
    cas = [r for r in writes(fake) if r.path == f"/v1/kv/{KEY}"]
    assert cas[0].query["cas"] == ["0"] and cas[1].query["cas"] != ["0"]


def test_push_invalid_document_names_the_location_and_writes_nothing(fake: FakeConsul, files: dict[str, Path], tmp_path: Path) -> None:
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    fake.clear_requests()
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES_A.replace("{subset: canary, weight: 10}", "{subset: canery, weight: 10}"))
    err = failed(run(fake, "rules", "push", str(bad), "--key", KEY))
    assert f"invalid rules in {bad}" in err
    assert "services.orders.routes[1].to[0].subset: unknown subset 'canery' (known: canary, stable)" in err
    assert kv(fake) == RULES_A and writes(fake) == []


def test_undo_restores_and_undo_again_redoes(fake: FakeConsul, files: dict[str, Path]) -> None:
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY))
    out = ok(run(fake, "rules", "undo", "--key", KEY))
    assert f"restored {KEY} from {KEY}.previous" in out and "undo again to redo" in out
    assert kv(fake) == RULES_A and kv(fake, KEY + ".previous") == RULES_B
    ok(run(fake, "rules", "undo", "--key", KEY))
    assert kv(fake) == RULES_B and kv(fake, KEY + ".previous") == RULES_A


def test_undo_without_previous_revision(fake: FakeConsul, files: dict[str, Path]) -> None:
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    err = failed(run(fake, "rules", "undo", "--key", KEY))
    assert f"no previous revision at Consul KV key '{KEY}.previous'" in err
    assert kv(fake) == RULES_A


def test_concurrent_change_is_not_overwritten(fake: FakeConsul) -> None:
    fake.kv_put(KEY, RULES_A)

    class Racing(ConsulKVStore):
        def get(self, key: str):
            value = super().get(key)
            if key == KEY:
                fake.kv_put(KEY, RULES_A + "# someone else\n")  # lands between our read and our write
            return value

    with Racing(ConsulConfig(fake.url)) as store:
        with pytest.raises(RuleConflict, match="changed by someone else.*retry"):
            push(store, KEY, RULES_B)
    assert kv(fake) == RULES_A + "# someone else\n"


def test_push_validates_before_any_request(fake: FakeConsul) -> None:
    with pytest.raises(RuleError):
        push(ConsulConfig(fake.url), KEY, "services: {orders: {default: nope}}")
    assert fake.requests == []


# ------------------------------------------------------------------------------ rollback / status


def register_fleet(fake: FakeConsul) -> None:
    fake.register("orders", id="orders-1", address="10.0.0.1", port=8080, meta={"version": "1.4.2"}, weights={"Passing": 100, "Warning": 1})
    fake.register("orders", id="orders-2", address="10.0.0.2", port=8080, meta={"version": "1.4.3", "weight": "250"})
    fake.register("orders", id="orders-3", address="10.0.0.3", port=8080, meta={"version": "2.0.0", "image": "registry.example.com/orders:2.0.0", "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8"},
                  weights={"Passing": 50, "Warning": 1})
    fake.register("orders", id="orders-lane", address="", port=8081, tags=["version=2.1.0", "lane=feature-x"])
    fake.register("orders", id="orders-4", address="10.0.0.4", port=8080, meta={"version": "1.4.2"}, check_status="critical")
    fake.register("orders", id="orders-bad", address="10.0.0.9")  # no port: discovery skips it


def test_status_table(fake: FakeConsul) -> None:
    register_fleet(fake)
    out = ok(run(fake, "status", "orders"))
    lines = out.splitlines()
    assert lines[0] == "service 'orders': 5 instance(s): 4 passing, 0 warning, 1 critical"
    assert lines[1].split() == ["VERSION", "IMAGE", "COMMIT", "LANE", "WEIGHT", "HEALTH", "ADDRESS", "ID"]
    rows = [line.split() for line in lines[2:] if not line.startswith("  !")]
    assert "  ! orders-bad on node fake-node: port None is not 1..65535; skipped" in lines
    assert ["1.4.2", "-", "-", "-", "10000", "passing", "10.0.0.1:8080", "fake-node/orders-1"] in rows
    assert ["1.4.2", "-", "-", "-", "100", "critical", "10.0.0.4:8080", "fake-node/orders-4"] in rows
    # Weights.Passing x 100; Meta image and commit (a full hash shown to 12 characters)
    assert ["2.0.0", "registry.example.com/orders:2.0.0", "9fceb02d0ae5", "-", "5000", "passing", "10.0.0.3:8080", "fake-node/orders-3"] in rows
    assert ["1.4.3", "-", "-", "-", "250", "passing", "10.0.0.2:8080", "fake-node/orders-2"] in rows  # Meta weight wins
    # Tags k=v as the fallback, empty Service.Address -> the node's address.
    assert ["2.1.0", "-", "-", "feature-x", "100", "passing", "127.0.0.1:8081", "fake-node/orders-lane"] in rows
    assert len(rows) == 5


def test_status_with_rules_shows_the_live_split(fake: FakeConsul) -> None:
    register_fleet(fake)
    fake.kv_put(KEY, RULES_A)
    out = ok(run(fake, "status", "orders", "--key", KEY))
    assert "    stable: 2 routable" in out and "    canary: 1 routable" in out
    assert "default subset 'stable': 2 routable; fallback default" in out
    assert "lanes (lane traffic only): feature-x 1 routable" in out
    assert "route 'beta-users' when header user-group == 'beta': canary 100%" in out
    assert "route 'ten-percent' when always, sticky on header x-user-id: canary 10%, stable 90%" in out
    assert "no route matches -> default subset 'stable' 100%" in out

    # The canary dies: it drops out of the split and the rest re-normalises, as in the router.
    fake.set_check_status("orders-3", "critical")
    out = ok(run(fake, "status", "orders", "--key", KEY))
    assert "route 'ten-percent' when always, sticky on header x-user-id: stable 100%  [dropped, no routable instance: canary]" in out
    assert "route 'beta-users' when header user-group == 'beta': no routable target -> fallback default: stable 100%" in out


def test_rollback_removes_only_that_services_routes(fake: FakeConsul, files: dict[str, Path]) -> None:
    register_fleet(fake)
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    out = ok(run(fake, "rollback", "orders", "--key", KEY))
    assert f"rolled back service 'orders' in {KEY} (index " in out
    assert "removed route(s): beta-users, ten-percent" in out
    assert "all its traffic now goes to its default subset 'stable'" in out
    assert kv(fake, KEY + ".previous") == RULES_A
    doc = validate_rules(kv(fake) or "")
    assert doc.services["orders"].routes == [] and doc.services["orders"].default == "stable"
    assert [r.name for r in doc.services["payments"].routes] == ["half"]
    assert doc.services["orders"].subsets == validate_rules(RULES_A).services["orders"].subsets

    out = ok(run(fake, "status", "orders", "--key", KEY))
    assert "no routes: all traffic -> default subset 'stable' 100%" in out
    assert "route '" not in out

    # undo brings the routes back
    ok(run(fake, "rules", "undo", "--key", KEY))
    assert kv(fake) == RULES_A


def test_rollback_without_default_says_where_traffic_goes(fake: FakeConsul) -> None:
    fake.kv_put(KEY, '{"services": {"orders": {"subsets": {"c": {"version": "^2"}}, "routes": [{"name": "all-c", "to": [{"subset": "c"}]}]}}}')
    out = ok(run(fake, "rollback", "orders", "--key", KEY))
    assert "every instance outside a lane (the service has no default subset)" in out
    assert (kv(fake) or "").lstrip().startswith("{")  # JSON stays JSON


def test_rollback_unknown_service_or_missing_key(fake: FakeConsul, files: dict[str, Path]) -> None:
    err = failed(run(fake, "rollback", "orders", "--key", KEY))
    assert f"Consul KV key '{KEY}' does not exist" in err
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    fake.clear_requests()
    err = failed(run(fake, "rollback", "inventory", "--key", KEY))
    assert f"service 'inventory' has no rules in Consul KV key '{KEY}' (services there: orders, payments)" in err
    assert writes(fake) == []


def test_admin_functions_in_process(fake: FakeConsul) -> None:
    register_fleet(fake)
    cfg = ConsulConfig(fake.url)
    assert push(cfg, KEY, RULES_A) > 0
    change = rollback(cfg, KEY, "orders")
    assert "removed route(s): beta-users, ten-percent" in str(change)
    assert not rollback(cfg, KEY, "orders").changed  # nothing left to remove: no write
    assert "no routes: all traffic -> default subset 'stable' 100%" in status(cfg, "orders", KEY)
    undo(cfg, KEY)
    assert kv(fake) == RULES_A


# ------------------------------------------------------------------------------ ACL, TLS, errors


@pytest.fixture
def acl_fake() -> Iterator[FakeConsul]:
    with FakeConsul(acl_tokens={"w-3f2a-secret": "write", "r-77c1-secret": "read"}) as f:
        yield f


def test_read_token_cannot_push(acl_fake: FakeConsul, files: dict[str, Path]) -> None:
    r = run(acl_fake, "rules", "push", str(files["a.yaml"]), "--key", KEY, token="r-77c1-secret")
    err = failed(r)
    assert "lacks a permission" in err and "403" in err and "key:write" in err
    assert "r-77c1-secret" not in r.stdout + r.stderr
    assert acl_fake.kv_get(KEY) is None and acl_fake.kv_get(KEY + ".previous") is None
    # ... but may read the status
    ok(run(acl_fake, "status", "orders", "--key", KEY, token="r-77c1-secret"))


def test_unknown_token(acl_fake: FakeConsul, files: dict[str, Path]) -> None:
    r = run(acl_fake, "rules", "push", str(files["a.yaml"]), "--key", KEY, token="no-such-secret")
    err = failed(r)
    assert "unknown to Consul" in err and "403" in err and "no-such-secret" not in r.stdout + r.stderr


def test_write_token_from_env_and_from_file(acl_fake: FakeConsul, files: dict[str, Path], tmp_path: Path) -> None:
    ok(run(acl_fake, "rules", "push", str(files["a.yaml"]), "--key", KEY, token="w-3f2a-secret"))
    token_file = tmp_path / "token"
    token_file.write_text("w-3f2a-secret\n")
    out = ok(run(acl_fake, "rules", "push", str(files["b.yaml"]), "--key", KEY, "--token-file", str(token_file)))
    assert "w-3f2a-secret" not in out
    assert kv(acl_fake) == RULES_B
    for r in acl_fake.requests:  # only ever in the header
        assert "secret" not in r.target and "token" not in r.query
    assert {r.headers.get("x-consul-token") for r in acl_fake.requests} <= {"w-3f2a-secret", "r-77c1-secret", "no-such-secret"}


def test_connection_refused_names_the_address(files: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    err = failed(run(None, "rules", "push", str(files["a.yaml"]), "--key", KEY, "--consul", address))
    assert f"cannot reach Consul at {address}" in err and "connection refused" in err
    err = failed(run(None, "status", "orders", address=address))
    assert f"cannot reach Consul at {address}" in err


def test_insecure_warns_and_bad_token_file_fails(fake: FakeConsul, tmp_path: Path) -> None:
    r = run(fake, "status", "orders", "--insecure")
    ok(r)
    assert "TLS certificate is NOT verified" in r.stderr
    err = failed(run(fake, "status", "orders", "--token-file", str(tmp_path / "missing")))
    assert "cannot read token file" in err
    # no --token flag: refused without echoing the value (and never taken for --token-file)
    r = run(fake, "status", "orders", "--token", "abc-secret")
    assert r.returncode == 1 and "CONSUL_HTTP_TOKEN" in r.stderr and "abc-secret" not in r.stderr


def test_consul_errors_reported_without_traceback(fake: FakeConsul, files: dict[str, Path]) -> None:
    fake.fail_all(503)
    err = failed(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    assert "Consul unavailable" in err and "503" in err
