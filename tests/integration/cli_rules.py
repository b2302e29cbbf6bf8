"""What the CLI tests of both registries push, undo and roll back, and one small adaptor per
registry that runs ``graylb`` against its fake as a user does.

``test_registry_cli.py`` runs each test that is the same for both registries once per adaptor;
``test_consul_cli.py`` / ``test_nacos_cli.py`` keep what only one registry has (ACL tokens, Nacos
login, casMd5, namespaces ...) and use the same adaptors for running the CLI and reading back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from graylb.consul import ConsulConfig, ConsulKVStore
from graylb.nacos import NacosConfig, NacosConfigStore, content_md5

ROOT = Path(__file__).resolve().parents[2]

RULES_A = """\
version: 1
services:
  orders:
    subsets:
      stable: {version: "^1.4"}
      canary: {version: "^2.0"}
    default: stable
    routes:
      - name: beta-users
        match: [{headers: {user-group: {exact: beta}}}]
        to: [{subset: canary}]
      - name: ten-percent
        to: [{subset: canary, weight: 10}, {subset: stable, weight: 90}]
        sticky: {header: x-user-id}
  payments:
    subsets: {v1: {version: "^1"}, v2: {version: "^2"}}
    default: v1
    routes:
      - name: half
        to: [{subset: v2, weight: 50}, {subset: v1, weight: 50}]
"""
RULES_B = RULES_A.replace("weight: 10}, {subset: stable, weight: 90}", "weight: 50}, {subset: stable, weight: 50}")


def rules_files(tmp_path: Path) -> dict[str, Path]:
    """``a.yaml`` (RULES_A) and ``b.yaml`` (RULES_B) in ``tmp_path``."""
    out = {}
    for name, text in (("a.yaml", RULES_A), ("b.yaml", RULES_B)):
        out[name] = tmp_path / name
        out[name].write_text(text)
    return out


def graylb_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m graylb.cli ARGS`` from the repository root, with no CONSUL_* / NACOS_* variable
    of the runner's own (only those in ``env``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "NACOS_"))}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "graylb.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean,
        check=False,
    )


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    return r.stdout


def failed(r: subprocess.CompletedProcess, code: int = 1) -> str:
    assert r.returncode == code, f"rc={r.returncode}\nstdout={r.stdout}\nstderr={r.stderr}"
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


class ConsulCli:
    """The CLI against a FakeConsul (or ``None``: no registry address at all). The address goes
    in CONSUL_HTTP_ADDR, as Consul's own tools take it, unless ``as_option`` (``--consul URL``)."""

    kind, name = "consul", "Consul"
    key = "graylb/rules"
    store_class = ConsulKVStore

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def run(
        self, *args: str, address: str | None = None, as_option: bool = False, token: str | None = None
    ) -> subprocess.CompletedProcess:
        env: dict[str, str] = {}
        target = address or (self.fake.url if self.fake is not None else None)
        if target is not None and as_option:
            args = (*args, "--consul", target)
        elif target is not None:
            env["CONSUL_HTTP_ADDR"] = target
        if token is not None:
            env["CONSUL_HTTP_TOKEN"] = token
        return graylb_cli(*args, env=env)

    def get(self, key: str = key) -> str | None:
        value = self.fake.kv_get(key)
        return None if value is None else value.decode()

    def put(self, key: str, text: str) -> None:
        self.fake.kv_put(key, text)

    def writes(self) -> list:
        return [r for r in self.fake.requests if r.method in ("PUT", "DELETE") and r.path.startswith("/v1/kv/")]

    def where(self, key: str = key) -> str:
        """How the CLI names the place a rules document lives."""
        return f"Consul KV key '{key}'"

    def revision_re(self, text: str | None) -> str:
        """A regex for how the CLI names the revision holding ``text``: the KV ModifyIndex."""
        return r"index \d+"

    def is_revision_of(self, revision: object, text: str) -> bool:
        """What the in-process ``push`` returns: the ModifyIndex of the write."""
        return isinstance(revision, int) and revision > 0

    def config(self) -> ConsulConfig:
        return ConsulConfig(self.fake.url)

    def register_fleet(self) -> None:
        """orders: stable 1.4.2 / 1.4.3 (+ a critical 1.4.2), canary 2.0.0, a feature-x lane, and
        an entry without a port (discovery skips it)."""
        fake = self.fake
        fake.register(
            "orders",
            id="orders-1",
            address="10.0.0.1",
            port=8080,
            meta={"version": "1.4.2"},
            weights={"Passing": 100, "Warning": 1},
        )
        fake.register(
            "orders", id="orders-2", address="10.0.0.2", port=8080, meta={"version": "1.4.3", "weight": "250"}
        )
        fake.register(
            "orders",
            id="orders-3",
            address="10.0.0.3",
            port=8080,
            meta={
                "version": "2.0.0",
                "image": "registry.example.com/orders:2.0.0",
                "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
            },
            weights={"Passing": 50, "Warning": 1},
        )
        fake.register("orders", id="orders-lane", address="", port=8081, tags=["version=2.1.0", "lane=feature-x"])
        fake.register(
            "orders", id="orders-4", address="10.0.0.4", port=8080, meta={"version": "1.4.2"}, check_status="critical"
        )
        fake.register("orders", id="orders-bad", address="10.0.0.9")  # no port: discovery skips it

    def kill_canary(self) -> None:
        self.fake.set_check_status("orders-3", "critical")


class NacosCli:
    """The CLI with ``--nacos URL`` against a FakeNacos (or ``None``: no ``--nacos`` at all, so
    the CLI's registry is Consul). ``key`` is a dataId in group DEFAULT_GROUP."""

    kind, name = "nacos", "Nacos"
    key = "graylb-rules"
    group = "DEFAULT_GROUP"
    store_class = NacosConfigStore

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def run(
        self, *args: str, address: str | None = None, as_option: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        target = address or (self.fake.url if self.fake is not None else None)
        if target is not None:  # always an option: without --nacos the registry is Consul
            args = (*args, "--nacos", target)
        return graylb_cli(*args, env=env)

    def get(self, key: str = key, group: str = group, tenant: str = "") -> str | None:
        return self.fake.get_config(key, group, tenant)

    def put(self, key: str, text: str) -> None:
        self.fake.publish_config(key, self.group, text)

    def writes(self) -> list:
        return [r for r in self.fake.requests if r.method in ("POST", "DELETE") and r.path == "/nacos/v1/cs/configs"]

    def where(self, key: str = key) -> str:
        return f"Nacos config '{key}' (group '{self.group}')"

    def revision_re(self, text: str | None) -> str:
        """The config's MD5, which is what a Nacos config revision is."""
        return "md5 " + re.escape(content_md5(text or ""))

    def is_revision_of(self, revision: object, text: str) -> bool:
        return revision == content_md5(text)

    def config(self) -> NacosConfig:
        return NacosConfig(self.fake.url)

    def register_fleet(self, **where: str) -> None:
        """orders: stable 1.4.2 / 1.4.3 (+ a critical 1.4.2 and a 1.4.2 of weight 0), canary 2.0.0,
        a feature-x lane, and a disabled instance (Nacos leaves it out)."""
        fake = self.fake
        fake.register("orders", "10.0.0.1", 8080, metadata={"version": "1.4.2"}, weight=100, **where)
        fake.register(
            "orders", "10.0.0.2", 8080, metadata={"version": "1.4.3", "weight": "250"}, **where
        )  # metadata weight wins
        fake.register(
            "orders",
            "10.0.0.3",
            8080,
            metadata={
                "version": "2.0.0",
                "image": "registry.example.com/orders:2.0.0",
                "commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
            },
            weight=0.5,
            **where,
        )
        fake.register("orders", "10.0.0.5", 8081, metadata={"version": "2.1.0", "lane": "feature-x"}, **where)
        fake.register("orders", "10.0.0.4", 8080, metadata={"version": "1.4.2"}, healthy=False, **where)
        fake.register("orders", "10.0.0.6", 8080, metadata={"version": "1.4.2"}, weight=0, **where)
        fake.register(
            "orders", "10.0.0.9", 8080, metadata={"version": "1.4.2"}, enabled=False, **where
        )  # Nacos leaves it out

    def kill_canary(self) -> None:
        self.fake.set_healthy("orders", "10.0.0.3", 8080, False)
