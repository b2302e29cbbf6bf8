"""``graylb rules push``, ``graylb status`` with ``--nacos`` where Nacos differs from Consul: a real
subprocess talking to FakeNacos over HTTP; credentials only ever from NACOS_USERNAME /
NACOS_PASSWORD or --password-file. What both registries do alike is in ``test_registry_cli.py``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from graylb.nacos import NacosConfig, NacosConfigStore, content_md5
from graylb.testing.fake_nacos import FakeNacos, RecordedRequest
from tests.integration.cli_rules import (
    RULES_A,
    RULES_B,
    NacosCli,
    failed,
    ok,
    rules_files,
)

KEY, GROUP = NacosCli.key, NacosCli.group
USER, PASSWORD = "nacos", "pw-cli-5e1d-secret"


def run(
    fake: FakeNacos | None, *args: str, address: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return NacosCli(fake).run(*args, address=address, env=env)


@pytest.fixture
def fake() -> Iterator[FakeNacos]:
    with FakeNacos() as f:
        yield f


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return rules_files(tmp_path)


def config(fake: FakeNacos, key: str = KEY, group: str = GROUP, tenant: str = "") -> str | None:
    return NacosCli(fake).get(key, group, tenant)


def writes(fake: FakeNacos) -> list[RecordedRequest]:
    return NacosCli(fake).writes()


# ------------------------------------------------------------------------------ push: a CAS on the MD5


def test_push_writes_the_document_and_keeps_the_previous_revision(fake: FakeNacos, files: dict[str, Path]) -> None:
    out = ok(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    assert f"pushed {files['a.yaml']} to {KEY} (md5 {content_md5(RULES_A)})" in out and "did not exist before" in out
    assert config(fake) == RULES_A and config(fake, KEY + ".previous") is None

    out = ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY))
    assert (
        out.strip()
        == f"pushed {files['b.yaml']} to {KEY} (md5 {content_md5(RULES_B)}); previous revision kept at {KEY}.previous"
    )
    assert config(fake) == RULES_B and config(fake, KEY + ".previous") == RULES_A
    # The write of the key is a compare-and-set on the MD5 read just before (casMd5, header
    # and form); the first one had nothing to compare with.
    main = [r for r in writes(fake) if r.form["dataId"] == [KEY]]
    assert "casmd5" not in main[0].headers and "casMd5" not in main[0].form
    assert main[1].headers["casmd5"] == content_md5(RULES_A) and main[1].form["casMd5"] == [content_md5(RULES_A)]
    assert main[1].form["type"] == ["yaml"] and main[1].form["group"] == [GROUP] and "tenant" not in main[1].form


def test_create_only_when_absent(fake: FakeNacos) -> None:
    with NacosConfigStore(NacosConfig(fake.url)) as store:
        assert store.get(KEY) == (None, None)
        assert store.cas_put(KEY, RULES_A, None)
        assert not store.cas_put(KEY, RULES_B, None)  # exists now: a create-only write refuses
        assert not store.cas_put(KEY, RULES_B, content_md5("something else"))
        assert store.cas_put(KEY, RULES_B, content_md5(RULES_A))
    assert config(fake) == RULES_B


# ------------------------------------------------------------------------------ rollback / status


def register_fleet(fake: FakeNacos, **where: str) -> None:
    NacosCli(fake).register_fleet(**where)  # the fleet is listed in cli_rules.py


def test_status_table(fake: FakeNacos) -> None:
    register_fleet(fake)
    out = ok(run(fake, "status", "orders"))
    lines = out.splitlines()
    assert lines[0] == "service 'orders': 6 instance(s): 5 passing, 0 warning, 1 critical"
    assert lines[1].split() == ["VERSION", "IMAGE", "COMMIT", "LANE", "WEIGHT", "HEALTH", "ADDRESS", "ID"]
    rows = [line.split() for line in lines[2:]]
    g = "DEFAULT_GROUP@@orders"
    assert [
        "1.4.2",
        "-",
        "-",
        "-",
        "10000",
        "passing",
        "10.0.0.1:8080",
        f"10.0.0.1#8080#DEFAULT#{g}",
    ] in rows  # 100 x 100, capped
    assert ["1.4.3", "-", "-", "-", "250", "passing", "10.0.0.2:8080", f"10.0.0.2#8080#DEFAULT#{g}"] in rows
    # 0.5 x 100; metadata image and commit (a full hash shown to 12 characters)
    assert [
        "2.0.0",
        "registry.example.com/orders:2.0.0",
        "9fceb02d0ae5",
        "-",
        "50",
        "passing",
        "10.0.0.3:8080",
        f"10.0.0.3#8080#DEFAULT#{g}",
    ] in rows
    assert ["2.1.0", "-", "-", "feature-x", "100", "passing", "10.0.0.5:8081", f"10.0.0.5#8081#DEFAULT#{g}"] in rows
    assert ["1.4.2", "-", "-", "-", "100", "critical", "10.0.0.4:8080", f"10.0.0.4#8080#DEFAULT#{g}"] in rows
    assert [
        "1.4.2",
        "-",
        "-",
        "-",
        "0",
        "(no",
        "traffic)",
        "passing",
        "10.0.0.6:8080",
        f"10.0.0.6#8080#DEFAULT#{g}",
    ] in rows
    assert len(rows) == 6 and "10.0.0.9" not in out


def test_status_flags_the_protection_threshold(fake: FakeNacos) -> None:
    fake.register("orders", "10.0.0.1", 8080, metadata={"version": "1.4.2"}, healthy=False)
    out = ok(run(fake, "status", "orders"))
    assert "  ! Nacos reached the protection threshold for this service" in out
    assert "graylb's discovery keeps its last good list instead" in out


def test_namespace_and_group(fake: FakeNacos, files: dict[str, Path]) -> None:
    register_fleet(fake, namespace="dev", group="PAY")
    opts = ["--key", KEY, "--namespace", "dev", "--group", "PAY"]
    out = ok(run(fake, "rules", "push", str(files["a.yaml"]), *opts))
    assert fake.get_config(KEY, "PAY", "dev") == RULES_A and config(fake) is None
    push_req = [r for r in writes(fake)][-1]
    assert push_req.form["tenant"] == ["dev"] and push_req.form["group"] == ["PAY"]
    out = ok(run(fake, "status", "orders", *opts))
    assert (
        out.startswith("service 'orders': 6 instance(s)") and "#PAY@@orders" in out and "canary 10%, stable 90%" in out
    )
    # the default namespace has no such service
    assert ok(run(fake, "status", "orders")).startswith("service 'orders': 0 instance(s)")
    # "public" is Nacos's default namespace: config tenant "" (not the distinct "public" key)
    ok(run(fake, "rules", "push", str(files["b.yaml"]), "--key", KEY, "--namespace", "public"))
    assert config(fake) == RULES_B and fake.get_config(KEY, GROUP, "public") is None


# ------------------------------------------------------------------------------ auth, options, errors


@pytest.fixture
def auth_fake() -> Iterator[FakeNacos]:
    with FakeNacos(auth={USER: PASSWORD}) as f:
        yield f


def test_credentials_from_env_and_from_password_file(
    auth_fake: FakeNacos, files: dict[str, Path], tmp_path: Path
) -> None:
    r = run(
        auth_fake,
        "rules",
        "push",
        str(files["a.yaml"]),
        "--key",
        KEY,
        env={"NACOS_USERNAME": USER, "NACOS_PASSWORD": PASSWORD},
    )
    ok(r)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    r = run(
        auth_fake,
        "rules",
        "push",
        str(files["b.yaml"]),
        "--key",
        KEY,
        "--password-file",
        str(pw),
        env={"NACOS_USERNAME": USER},
    )
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
    r = run(
        auth_fake,
        "rules",
        "push",
        str(files["a.yaml"]),
        "--key",
        KEY,
        env={"NACOS_USERNAME": USER, "NACOS_PASSWORD": "not-the-pw-77"},
    )
    err = failed(r)
    assert (
        err.strip() == "graylb: Nacos login failed for user 'nacos': wrong username or password (403 'unknown user!')"
    )
    assert "not-the-pw-77" not in r.stdout + r.stderr
    assert config(auth_fake) is None


def test_no_credentials_against_a_server_with_auth(auth_fake: FakeNacos) -> None:
    err = failed(run(auth_fake, "status", "orders"))
    assert "Nacos refused" in err and "403" in err and "NACOS_USERNAME" in err


def test_secret_options_are_refused_or_checked(fake: FakeNacos, tmp_path: Path) -> None:
    # no --password flag: refused without echoing the value (and never taken for --password-file)
    r = run(fake, "status", "orders", "--password", "abc-secret-9")
    assert r.returncode == 1 and "NACOS_PASSWORD" in r.stderr and "abc-secret-9" not in r.stderr
    err = failed(
        run(fake, "status", "orders", "--password-file", str(tmp_path / "missing"), env={"NACOS_USERNAME": USER})
    )
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


def test_nacos_errors_reported_without_traceback(fake: FakeNacos, files: dict[str, Path]) -> None:
    fake.fail_all(503)
    err = failed(run(fake, "rules", "push", str(files["a.yaml"]), "--key", KEY))
    assert "Nacos unavailable" in err and "503" in err
    fake.heal()
    err = failed(run(fake, "rules", "push", str(files["a.yaml"]), "--key", "bad/key"))
    assert "Nacos rejected" in err and "400" in err and "invalid dataId" in err
    err = failed(run(fake, "status", "orders", address=fake.url + "/wrong"))
    assert "context_path" in err
