"""``graylb rules push``, ``graylb rollback``, ``graylb status`` where Consul differs from Nacos: a
real subprocess talking to FakeConsul over HTTP, the address from CONSUL_HTTP_ADDR and the token
only ever from CONSUL_HTTP_TOKEN or --token-file. What both registries do alike is in
``test_registry_cli.py``."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from graylb.testing.fake_consul import FakeConsul
from tests.integration.cli_rules import (
    RULES_A,
    RULES_B,
    ConsulCli,
    failed,
    ok,
    rules_files,
)

KEY = ConsulCli.key


def run(fake: FakeConsul | None, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    return ConsulCli(fake).run(*args, token=token)


@pytest.fixture
def fake() -> Iterator[FakeConsul]:
    with FakeConsul() as f:
        yield f


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return rules_files(tmp_path)


def kv(fake: FakeConsul, key: str = KEY) -> str | None:
    return ConsulCli(fake).get(key)


def writes(fake: FakeConsul) -> list:
    return ConsulCli(fake).writes()


# ------------------------------------------------------------------------------ push: a CAS on the ModifyIndex


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


# ------------------------------------------------------------------------------ rollback / status


def test_status_table(fake: FakeConsul) -> None:
    ConsulCli(fake).register_fleet()  # the fleet is listed in cli_rules.py
    out = ok(run(fake, "status", "orders"))
    lines = out.splitlines()
    assert lines[0] == "service 'orders': 5 instance(s): 4 passing, 0 warning, 1 critical"
    assert lines[1].split() == ["VERSION", "IMAGE", "COMMIT", "LANE", "WEIGHT", "HEALTH", "ADDRESS", "ID"]
    rows = [line.split() for line in lines[2:] if not line.startswith("  !")]
    assert "  ! orders-bad on node fake-node: port None is not 1..65535; skipped" in lines
    assert ["1.4.2", "-", "-", "-", "10000", "passing", "10.0.0.1:8080", "fake-node/orders-1"] in rows
    assert ["1.4.2", "-", "-", "-", "100", "critical", "10.0.0.4:8080", "fake-node/orders-4"] in rows
    # Weights.Passing x 100; Meta image and commit (a full hash shown to 12 characters)
    assert [
        "2.0.0",
        "registry.example.com/orders:2.0.0",
        "9fceb02d0ae5",
        "-",
        "5000",
        "passing",
        "10.0.0.3:8080",
        "fake-node/orders-3",
    ] in rows
    assert ["1.4.3", "-", "-", "-", "250", "passing", "10.0.0.2:8080", "fake-node/orders-2"] in rows  # Meta weight wins
    # Tags k=v as the fallback, empty Service.Address -> the node's address.
    assert ["2.1.0", "-", "-", "feature-x", "100", "passing", "127.0.0.1:8081", "fake-node/orders-lane"] in rows
    assert len(rows) == 5


def test_rollback_without_default_refuses_with_guidance(fake: FakeConsul) -> None:
    """Removing the routes of a service with no default subset would send traffic to every
    instance, the new version included: there is no "back", and the CLI says so, writing nothing."""
    doc = (
        '{"services": {"orders": {"subsets": {"c": {"version": "^2"}}, '
        '"routes": [{"name": "all-c", "to": [{"subset": "c"}]}]}}}'
    )
    fake.kv_put(KEY, doc)
    out = run(fake, "rollback", "orders", "--key", KEY)
    assert out.returncode == 1
    assert "no default subset, so there is no 'back'" in out.stderr and "graylb rollout" in out.stderr
    assert kv(fake) == doc  # nothing written


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
    assert {r.headers.get("x-consul-token") for r in acl_fake.requests} <= {
        "w-3f2a-secret",
        "r-77c1-secret",
        "no-such-secret",
    }


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


def test_a_rollout_from_the_command_line(fake: FakeConsul) -> None:
    """graylb rollout start / status / promote / pause / resume / abort / retry / run and graylb
    rules history, as an operator types them, against FakeConsul."""
    import yaml

    fake.kv_put(
        KEY,
        yaml.safe_dump(
            {
                "services": {
                    "orders": {
                        "subsets": {"stable": {"version": "^1"}, "canary": {"version": "^2"}},
                        "default": "stable",
                    }
                }
            }
        ),
    )
    out = ok(
        run(
            fake,
            "rollout",
            "start",
            "orders",
            "--key",
            KEY,
            "--canary",
            "canary",
            "--steps",
            "5,25,100",
            "--pause",
            "manual",
        )
    )
    assert "step 1 of 3, 5% to the canary" in out
    assert "rollout of 'canary' against 'stable': progressing, step 1 of 3 (5% to the canary)" in ok(
        run(fake, "status", "orders", "--key", KEY)
    )
    status = ok(run(fake, "rollout", "status", "orders", "--key", KEY))
    assert "progressing" in status and "[5%/manual]" in status and "until promoted" in status
    assert "step 2 of 3: 25%" in ok(run(fake, "rollout", "promote", "orders", "--key", KEY, "--why", "p99 flat"))
    assert "paused" in ok(run(fake, "rollout", "pause", "orders", "--key", KEY))
    assert "resumed at step 2" in ok(run(fake, "rollout", "resume", "orders", "--key", KEY))
    assert "100% of 'orders' back to the baseline 'stable'" in ok(
        run(fake, "rollout", "abort", "orders", "--key", KEY, "--why", "5xx")
    )
    assert "restarted at step 1: 5% to the canary" in ok(run(fake, "rollout", "retry", "orders", "--key", KEY))
    assert "completed" in ok(run(fake, "rollout", "promote", "orders", "--key", KEY, "--full"))
    assert "rollout of service 'orders': completed" in ok(
        run(fake, "rollout", "run", "orders", "--key", KEY, "--poll", "0.1")
    )
    history = ok(run(fake, "rules", "history", "orders", "--key", KEY)).splitlines()
    actions = [line.split(": ", 1)[1].split(" (")[0] for line in history]
    assert actions == ["start", "promote", "pause", "resume", "abort", "retry", "complete"], history
    assert "-- p99 flat" in history[1] and "-- 5xx" in history[4]
    assert yaml.safe_load(fake.kv_get(KEY))["services"]["orders"]["default"] == "canary"
    assert "the baseline 'stable' of its rollout" in ok(run(fake, "rollback", "orders", "--key", KEY))
