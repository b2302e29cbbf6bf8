"""``graylb rules push / undo``, ``graylb rollback``, ``graylb status`` with ``--nacos`` as a user
runs them: a real subprocess talking to FakeNacos over HTTP; credentials only ever from
NACOS_USERNAME / NACOS_PASSWORD or --password-file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graylb.admin import RuleConflict, push, rollback, status, undo
from graylb.errors import RuleError
from graylb.nacos import NacosConfig
from graylb.nacos import NacosConfigStore, content_md5
from graylb.rules.load import validate_rules
from graylb.testing.fake_nacos import FakeNacos, RecordedRequest
from tests.integration.cli_rules import RULES_A, RULES_B

ROOT = Path(__file__).resolve().parents[2]
KEY = "graylb-rules"
GROUP = "DEFAULT_GROUP"
USER, PASSWORD = "nacos", "pw-cli-5e1d-secret"



def run(fake: FakeNacos | None, *args: str, address: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NACOS_", "CONSUL_"))}
    clean.update(env or {})
    target = address or (fake.url if fake is not None else None)
    argv = [sys.executable, "-m", "graylb.cli", *args]
    if target is not None:
        argv += ["--nacos", target]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=clean)


@pytest.fixture
def fake() -> Iterator[FakeNacos]:
    with FakeNacos() as f:
        yield f


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, text in (("a.yaml", RULES_A), ("b.yaml", RULES_B)):
        out[name] = tmp_path / name
        out[name].write_text(text)
    return out


def config(fake: FakeNacos, key: str = KEY, group: str = GROUP, tenant: str = "") -> str | None:
    return fake.get_config(key, group, tenant)


def writes(fake: FakeNacos) -> list[RecordedRequest]:
    return [r for r in fake.requests if r.method in ("POST", "DELETE") and r.path == "/nacos/v1/cs/configs"]


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


def failed(r: subprocess.CompletedProcess, code: int = 1) -> str:
    assert r.returncode == code, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


# ------------------------------------------------------------------------------ push / undo


def test_push_writes_the_document_and_keeps_the_previous_revision(fake: FakeNacos, files: dict[str, Path]) -> None:
    out = ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    assert f"pushed {files['a.yaml']} to {KEY} (md5 {content_md5(RULES_A)})" in out and "did not exist before" in out
    assert config(fake) == RULES_A and config(fake, KEY + ".previous") is None

    out = ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY))
    assert out.strip() == f"pushed {files['b.yaml']} to {KEY} (md5 {content_md5(RULES_B)}); previous revision kept at {KEY}.previous"
    assert config(fake) == RULES_B and config(fake, KEY + ".previous") == RULES_A
    # The write of the key is a compare-and-set on the MD5 read just before (casMd5, header
    # and form); the first one had nothing to compare with.
    main = [r for r in writes(fake) if r.form["dataId"] == [KEY]]
    assert "casmd5" not in main[0].headers and "casMd5" not in main[0].form
    assert main[1].headers["casmd5"] == content_md5(RULES_A) and main[1].form["casMd5"] == [content_md5(RULES_A)]
    assert main[1].form["type"] == ["yaml"] and main[1].form["group"] == [GROUP] and "tenant" not in main[1].form


def test_push_invalid_document_names_the_location_and_writes_nothing(fake: FakeNacos, files: dict[str, Path], tmp_path: Path) -> None:
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    fake.clear_requests()
    bad = tmp_path / "bad.yaml"
    bad.write_text(RULES_A.replace("{subset: canary, weight: 10}", "{subset: canery, weight: 10}"))
    err = failed(run(fake, "rules", "push", str(bad), "--key", KEY))
    assert f"invalid rules in {bad}" in err
    assert "services.orders.routes[1].to[0].subset: unknown subset 'canery' (known: canary, stable)" in err
    assert config(fake) == RULES_A and writes(fake) == [] and fake.requests == []


def test_undo_restores_and_undo_again_redoes(fake: FakeNacos, files: dict[str, Path]) -> None:
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY))
    out = ok(run(fake, "rules", "undo", "--key", KEY))
    assert f"restored {KEY} from {KEY}.previous (md5 {content_md5(RULES_A)})" in out and "undo again to redo" in out
    assert config(fake) == RULES_A and config(fake, KEY + ".previous") == RULES_B
    ok(run(fake, "rules", "undo", "--key", KEY))
    assert config(fake) == RULES_B and config(fake, KEY + ".previous") == RULES_A


def test_undo_without_previous_revision(fake: FakeNacos, files: dict[str, Path]) -> None:
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    err = failed(run(fake, "rules", "undo", "--key", KEY))
    assert f"no previous revision at Nacos config '{KEY}.previous' (group '{GROUP}')" in err
    assert config(fake) == RULES_A


def test_concurrent_change_is_not_overwritten(fake: FakeNacos) -> None:
    fake.publish_config(KEY, GROUP, RULES_A)

    class Racing(NacosConfigStore):
        def get(self, key: str):
            value = super().get(key)
            if key == KEY:
                fake.publish_config(KEY, GROUP, RULES_A + "# someone else\n")  # lands between our read and our write
            return value

    with Racing(NacosConfig(fake.url)) as store:
        with pytest.raises(RuleConflict, match="changed by someone else.*retry"):
            push(store, KEY, RULES_B)
    assert config(fake) == RULES_A + "# someone else\n"


def test_create_only_when_absent(fake: FakeNacos) -> None:
    with NacosConfigStore(NacosConfig(fake.url)) as store:
        assert store.get(KEY) == (None, None)
        assert store.cas_put(KEY, RULES_A, None)
        assert not store.cas_put(KEY, RULES_B, None)  # exists now: a create-only write refuses
        assert not store.cas_put(KEY, RULES_B, content_md5("something else"))
        assert store.cas_put(KEY, RULES_B, content_md5(RULES_A))
    assert config(fake) == RULES_B


def test_push_validates_before_any_request(fake: FakeNacos) -> None:
    with pytest.raises(RuleError):
        push(NacosConfig(fake.url), KEY, "services: {orders: {default: nope}}")
    assert fake.requests == []


# ------------------------------------------------------------------------------ rollback / status


def register_fleet(fake: FakeNacos, **where: str) -> None:
    fake.register("orders", "10.0.0.1", 8080, metadata={"version": "1.4.2"}, weight=100, **where)
    fake.register("orders", "10.0.0.2", 8080, metadata={"version": "1.4.3", "weight": "250"}, **where)  # metadata weight wins
    fake.register("orders", "10.0.0.3", 8080, metadata={"version": "2.0.0", "image": "registry.example.com/orders:2.0.0", "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8"},
                  weight=0.5, **where)
    fake.register("orders", "10.0.0.5", 8081, metadata={"version": "2.1.0", "lane": "feature-x"}, **where)
    fake.register("orders", "10.0.0.4", 8080, metadata={"version": "1.4.2"}, healthy=False, **where)
    fake.register("orders", "10.0.0.6", 8080, metadata={"version": "1.4.2"}, weight=0, **where)
    fake.register("orders", "10.0.0.9", 8080, metadata={"version": "1.4.2"}, enabled=False, **where)  # Nacos leaves it out


def test_status_table(fake: FakeNacos) -> None:
    register_fleet(fake)
    out = ok(run(fake, "status", "orders"))
    lines = out.splitlines()
    assert lines[0] == "service 'orders': 6 instance(s): 5 passing, 0 warning, 1 critical"
    assert lines[1].split() == ["VERSION", "IMAGE", "COMMIT", "LANE", "WEIGHT", "HEALTH", "ADDRESS", "ID"]
    rows = [line.split() for line in lines[2:]]
    g = "DEFAULT_GROUP@@orders"
    assert ["1.4.2", "-", "-", "-", "10000", "passing", "10.0.0.1:8080", f"10.0.0.1#8080#DEFAULT#{g}"] in rows  # 100 x 100, capped
    assert ["1.4.3", "-", "-", "-", "250", "passing", "10.0.0.2:8080", f"10.0.0.2#8080#DEFAULT#{g}"] in rows
    # 0.5 x 100; metadata image and commit (a full hash shown to 12 characters)
    assert ["2.0.0", "registry.example.com/orders:2.0.0", "9fceb02d0ae5", "-", "50", "passing", "10.0.0.3:8080", f"10.0.0.3#8080#DEFAULT#{g}"] in rows
    assert ["2.1.0", "-", "-", "feature-x", "100", "passing", "10.0.0.5:8081", f"10.0.0.5#8081#DEFAULT#{g}"] in rows
    assert ["1.4.2", "-", "-", "-", "100", "critical", "10.0.0.4:8080", f"10.0.0.4#8080#DEFAULT#{g}"] in rows
    assert ["1.4.2", "-", "-", "-", "0", "(no", "traffic)", "passing", "10.0.0.6:8080", f"10.0.0.6#8080#DEFAULT#{g}"] in rows
    assert len(rows) == 6 and "10.0.0.9" not in out


def test_status_with_rules_shows_the_live_split(fake: FakeNacos) -> None:
    register_fleet(fake)
    fake.publish_config(KEY, GROUP, RULES_A)
    out = ok(run(fake, "status", "orders", "--key", KEY))
    assert f"rules: {KEY} (md5 {content_md5(RULES_A)}, revision " in out
    assert "    stable: 2 routable" in out and "    canary: 1 routable" in out
    assert "default subset 'stable': 2 routable; fallback default" in out
    assert "lanes (lane traffic only): feature-x 1 routable" in out
    assert "route 'beta-users' when header user-group == 'beta': canary 100%" in out
    assert "route 'ten-percent' when always, sticky on header x-user-id: canary 10%, stable 90%" in out
    assert "no route matches -> default subset 'stable' 100%" in out

    # The canary dies: it drops out of the split and the rest re-normalises, as in the router.
    fake.set_healthy("orders", "10.0.0.3", 8080, False)
    out = ok(run(fake, "status", "orders", "--key", KEY))
    assert "route 'ten-percent' when always, sticky on header x-user-id: stable 100%  [dropped, no routable instance: canary]" in out
    assert "route 'beta-users' when header user-group == 'beta': no routable target -> fallback default: stable 100%" in out


def test_status_flags_the_protection_threshold(fake: FakeNacos) -> None:
    fake.register("orders", "10.0.0.1", 8080, metadata={"version": "1.4.2"}, healthy=False)
    out = ok(run(fake, "status", "orders"))
    assert "  ! Nacos reached the protection threshold for this service" in out
    assert "graylb's discovery keeps its last good list instead" in out


def test_rollback_removes_only_that_services_routes(fake: FakeNacos, files: dict[str, Path]) -> None:
    register_fleet(fake)
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    out = ok(run(fake, "rollback", "orders", "--key", KEY))
    assert f"rolled back service 'orders' in {KEY} (md5 " in out
    assert "removed route(s): beta-users, ten-percent" in out
    assert "all its traffic now goes to its default subset 'stable'" in out
    assert config(fake, KEY + ".previous") == RULES_A
    doc = validate_rules(config(fake) or "")
    assert doc.services["orders"].routes == [] and doc.services["orders"].default == "stable"
    assert [r.name for r in doc.services["payments"].routes] == ["half"]

    out = ok(run(fake, "status", "orders", "--key", KEY))
    assert "no routes: all traffic -> default subset 'stable' 100%" in out and "route '" not in out

    ok(run(fake, "rules", "undo", "--key", KEY))  # undo brings the routes back
    assert config(fake) == RULES_A


def test_rollback_unknown_service_or_missing_key(fake: FakeNacos, files: dict[str, Path]) -> None:
    err = failed(run(fake, "rollback", "orders", "--key", KEY))
    assert f"Nacos config '{KEY}' (group '{GROUP}') does not exist" in err
    ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    fake.clear_requests()
    err = failed(run(fake, "rollback", "inventory", "--key", KEY))
    assert f"service 'inventory' has no rules in Nacos config '{KEY}' (group '{GROUP}') (services there: orders, payments)" in err
    assert writes(fake) == []


def test_namespace_and_group(fake: FakeNacos, files: dict[str, Path]) -> None:
    register_fleet(fake, namespace="dev", group="PAY")
    opts = ["--key", KEY, "--namespace", "dev", "--group", "PAY"]
    out = ok(run(fake, "rules", "push", str(files["a.yaml"]), *opts))
    assert fake.get_config(KEY, "PAY", "dev") == RULES_A and config(fake) is None
    push_req = [r for r in writes(fake)][-1]
    assert push_req.form["tenant"] == ["dev"] and push_req.form["group"] == ["PAY"]
    out = ok(run(fake, "status", "orders", *opts))
    assert out.startswith("service 'orders': 6 instance(s)") and "#PAY@@orders" in out and "canary 10%, stable 90%" in out
    # the default namespace has no such service
    assert ok(run(fake, "status", "orders")).startswith("service 'orders': 0 instance(s)")
    # "public" is Nacos's default namespace: config tenant "" (not the distinct "public" key)
    ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY, "--namespace", "public"))
    assert config(fake) == RULES_B and fake.get_config(KEY, GROUP, "public") is None


def test_admin_functions_in_process(fake: FakeNacos) -> None:
    register_fleet(fake)
    cfg = NacosConfig(fake.url)
    assert push(cfg, KEY, RULES_A) == content_md5(RULES_A)
    change = rollback(cfg, KEY, "orders")
    assert "removed route(s): beta-users, ten-percent" in str(change)
    assert not rollback(cfg, KEY, "orders").changed  # nothing left to remove: no write
    assert "no routes: all traffic -> default subset 'stable' 100%" in status(cfg, "orders", KEY)
    undo(cfg, KEY)
    assert config(fake) == RULES_A


# ------------------------------------------------------------------------------ auth, options, errors


@pytest.fixture
def auth_fake() -> Iterator[FakeNacos]:
    with FakeNacos(auth={USER: PASSWORD}) as f:
        yield f


def test_credentials_from_env_and_from_password_file(auth_fake: FakeNacos, files: dict[str, Path], tmp_path: Path) -> None:
    r = run(auth_fake, "rules", "push", str(files["a.yaml"]), "--key", KEY, env={"NACOS_USERNAME": USER, "NACOS_PASSWORD": PASSWORD})
    ok(r)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    r = run(auth_fake, "rules", "push", str(files["b.yaml"]), "--key", KEY, "--password-file", str(pw), env={"NACOS_USERNAME": USER})
    ok(r)
    r2 = run(auth_fake, "status", "orders", "--key", KEY, "--username", USER, "--password-file", str(pw))
    ok(r2)
    assert config(auth_fake) == RULES_B
    for out in (r.stdout + r.stderr, r2.stdout + r2.stderr):
        assert PASSWORD not in out
    for req in auth_fake.requests:  # the password only ever in the login's form body
        assert PASSWORD not in req.target
        if req.path != "/nacos/v1/auth/login":
            assert PASSWORD.encode() not in req.body and req.query.get("accessToken")


def test_wrong_password_exits_1_with_a_clear_message(auth_fake: FakeNacos, files: dict[str, Path]) -> None:
    r = run(auth_fake, "rules", "push", str(files["a.yaml"]), "--key", KEY, env={"NACOS_USERNAME": USER, "NACOS_PASSWORD": "not-the-pw-77"})
    err = failed(r)
    assert err.strip() == "graylb: Nacos login failed for user 'nacos': wrong username or password (403 'unknown user!')"
    assert "not-the-pw-77" not in r.stdout + r.stderr
    assert config(auth_fake) is None


def test_no_credentials_against_a_server_with_auth(auth_fake: FakeNacos) -> None:
    err = failed(run(auth_fake, "status", "orders"))
    assert "Nacos refused" in err and "403" in err and "NACOS_USERNAME" in err


def test_secret_options_are_refused_or_checked(fake: FakeNacos, tmp_path: Path) -> None:
    # no --password flag: refused without echoing the value (and never taken for --password-file)
    r = run(fake, "status", "orders", "--password", "abc-secret-9")
    assert r.returncode == 1 and "NACOS_PASSWORD" in r.stderr and "abc-secret-9" not in r.stderr
    err = failed(run(fake, "status", "orders", "--password-file", str(tmp_path / "missing"), env={"NACOS_USERNAME": USER}))
    assert "cannot read password file" in err
    err = failed(run(fake, "status", "orders", env={"NACOS_USERNAME": USER}))
    assert "Nacos user 'nacos' has no password: set NACOS_PASSWORD or use --password-file" in err
    err = failed(run(fake, "status", "orders", env={"NACOS_PASSWORD": "lonely-pw-1"}))
    assert "no user" in err and "lonely-pw-1" not in err
    err = failed(run(fake, "status", "orders", "--token-file", str(tmp_path / "t")))
    assert "--token-file is a Consul option" in err


def test_nacos_and_consul_are_mutually_exclusive(fake: FakeNacos) -> None:
    err = failed(run(fake, "status", "orders", "--consul", "http://127.0.0.1:8500"), code=2)
    assert "not allowed with argument" in err
    # Nacos options without --nacos: the registry is Consul, so they are refused
    err = failed(run(None, "status", "orders", "--namespace", "dev"))
    assert "--namespace is a Nacos option: add --nacos URL" in err


def test_connection_refused_names_the_address(files: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"http://127.0.0.1:{port}"
    err = failed(run(None, "rules", "push", str(files["a.yaml"]), "--key", KEY, address=address))
    assert f"cannot reach Nacos at {address}" in err and "connection refused" in err
    err = failed(run(None, "status", "orders", address=address))
    assert f"cannot reach Nacos at {address}" in err


def test_nacos_errors_reported_without_traceback(fake: FakeNacos, files: dict[str, Path]) -> None:
    fake.fail_all(503)
    err = failed(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    assert "Nacos unavailable" in err and "503" in err
    fake.heal()
    err = failed(run(fake, "rules", "push", str(files["a.yaml"]), "--key", "bad/key"))
    assert "Nacos rejected" in err and "400" in err and "invalid dataId" in err
    err = failed(run(fake, "status", "orders", address=fake.url + "/wrong"))
    assert "context_path" in err
