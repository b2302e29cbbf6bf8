"""The registries the contract tests run against, behind one small adaptor per kind.

A :class:`ConsulBackend` or :class:`NacosBackend` speaks only HTTP (and graylb's own clients), so
the same adaptor drives the fake and the real server: what differs between ``fake-consul`` and
``real-consul`` is only how the server was started. Servers are started once per session by
``conftest.py``; tests isolate themselves with :meth:`Backend.unique` names.

How a real server is found (the cache ``scripts/real_registries.py`` fills) and what happens when
it is missing (skip locally, fail in CI) is in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

import graylb
from graylb.consul import ConsulConfig, ConsulKVStore, ConsulRegistration
from graylb.nacos import NacosAuth, NacosConfig, NacosConfigStore, NacosRegistration
from graylb.registration import Registration
from tests.conftest import wait_until

BACKENDS = ("fake-consul", "real-consul", "fake-nacos", "real-nacos")
REPO = Path(__file__).resolve().parents[2]


def recipe() -> Any:
    """scripts/real_registries.py as a module (one place knows the cache layout)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("graylb_real_registries", REPO / "scripts" / "real_registries.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError naming ``what``."""
    return wait_until(predicate, timeout=timeout, interval=interval, message=what)


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (Serf uses both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def only(backend: Backend, kind: str, why: str) -> None:
    """Skip a test whose wire fact belongs to one registry kind."""
    import pytest

    if backend.kind != kind:
        pytest.skip(f"{kind} only: {why}")


def lacking(backend: Backend, feature: str) -> None:
    """Skip, for this backend only, a test of a Nacos / Consul behaviour the server in use does
    not implement (``NacosBackend.lacks`` says which and why)."""
    import pytest

    why = getattr(backend, "lacks", {}).get(feature)
    if why:
        pytest.skip(f"{backend.name} differs from Nacos: {why}")


#: What rnacos 0.8.8 does differently from Nacos 2.x, each shown by a contract test that fails on
#: rnacos and passes on FakeNacos, whose behaviour there was taken from the Nacos 2.x source (a
#: stale ``casMd5`` refused with 500 "Cas publish fail"; ``reachProtectionThreshold`` with every
#: instance returned: protocol-facts.md "Nacos naming").
RNACOS_LACKS = {
    "cas": "rnacos 0.8.8 ignores casMd5 on config publish (Nacos refuses a stale one with 500 'Cas publish fail'), "
    "so compare-and-set writes are not atomic there",
    "protect-threshold": "rnacos 0.8.8 does not apply a service's protectThreshold nor report "
    "reachProtectionThreshold in the v1 instance list",
}

VALID_RULES = "version: 1\nservices:\n  {name}: {{}}\n"


class Backend:
    """Uniform verbs over one registry. ``name`` is the pytest id, ``kind`` ``consul`` / ``nacos``."""

    name: str
    kind: str
    url: str
    # Seconds within which an instance registered with :meth:`register_expiring` (and never
    # kept alive) must have left discovery's healthy set.
    expiry_budget: float
    # How long the server holds a watch (blocking query / long poll) that sees no change, at
    # the shortest: Consul honours ?wait=1s; Nacos holds max(10 s, timeout - 0.5 s), which a
    # FakeNacos started with a lower long_poll_min_hold shortens.
    min_hold: float

    def unique(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    # registry-specific ---------------------------------------------------------------------
    def config(self) -> Any:
        raise NotImplementedError

    def bad_config(self) -> Any:
        raise NotImplementedError

    def registration(
        self, service: str, *, ip: str, port: int, version: str, lane: str | None, weight: int
    ) -> Registration:
        raise NotImplementedError

    def register_expiring(self, service: str, *, ip: str, port: int, version: str) -> None:
        raise NotImplementedError

    def discovery(self) -> graylb.Discovery:
        raise NotImplementedError

    def store(self) -> Any:
        raise NotImplementedError

    def delete_key(self, key: str) -> None:
        raise NotImplementedError

    def rule_source(self, key: str) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------- Consul


class ConsulBackend(Backend):
    kind = "consul"
    expiry_budget = 12.0  # TTL 2 s, then the passing filter drops it; blocking query wakes at once
    min_hold = 1.0

    def __init__(
        self,
        name: str,
        url: str,
        management_token: str,
        read_token: str,
        no_token: str,
        stop: Callable[[], None] = lambda: None,
    ) -> None:
        self.name, self.url = name, url
        # management (everything), read-only (every *:read), and a valid token without any
        # service, node or key permission (only key_prefix "zzz-none" read)
        self.token, self.read_token, self.no_token = management_token, read_token, no_token
        self._stop = stop
        self.http = httpx.Client(
            base_url=url, headers={"X-Consul-Token": management_token}, timeout=30, trust_env=False
        )

    def client(self, token: str | None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"X-Consul-Token": token} if token else {}, timeout=30, trust_env=False
        )

    def config(self, token: str | None = None) -> ConsulConfig:
        return ConsulConfig(self.url, token=token or self.token, timeout=10)

    def bad_config(self) -> ConsulConfig:
        return ConsulConfig(self.url, token=str(uuid.uuid4()), timeout=10)

    def registration(
        self, service: str, *, ip: str, port: int, version: str, lane: str | None, weight: int
    ) -> ConsulRegistration:
        return ConsulRegistration(
            self.config(),
            service,
            address=ip,
            port=port,
            version=version,
            lane=lane,
            weight=weight,
            ttl=10,
            deregister_after=60,
        )

    def register_expiring(self, service: str, *, ip: str, port: int, version: str) -> None:
        body = {
            "Name": service,
            "ID": f"{service}-{ip}-{port}",
            "Address": ip,
            "Port": port,
            "Meta": {"version": version},
            "Check": {"CheckID": f"{service}-{ip}-{port}-ttl", "TTL": "2s", "Status": "passing"},
        }
        r = self.http.put("/v1/agent/service/register", json=body)
        assert r.status_code == 200, r.text

    def discovery(self) -> graylb.ConsulDiscovery:
        return graylb.ConsulDiscovery(self.config(), wait=60)  # only a change can answer within a test's 10 s

    def store(self) -> ConsulKVStore:
        return ConsulKVStore(self.config())

    def delete_key(self, key: str) -> None:
        assert self.http.delete(f"/v1/kv/{key}").status_code == 200

    def rule_source(self, key: str) -> graylb.ConsulRuleSource:
        return graylb.ConsulRuleSource(self.config(), key, wait=60, initial_timeout=5)

    def unique(self, prefix: str) -> str:
        return f"contract/{super().unique(prefix)}" if prefix.startswith("key") else super().unique(prefix)

    def close(self) -> None:
        self.http.close()
        self._stop()


# ---------------------------------------------------------------------------------------- Nacos


class NacosBackend(Backend):
    kind = "nacos"

    def __init__(
        self,
        name: str,
        url: str,
        username: str,
        password: str,
        *,
        expiry_budget: float,
        min_hold: float,
        stop: Callable[[], None] = lambda: None,
        lacks: dict[str, str] | None = None,
    ) -> None:
        self.lacks = lacks or {}
        self.name, self.url = name, url
        self.username, self.password = username, password
        self.expiry_budget, self.min_hold = expiry_budget, min_hold
        self._stop = stop
        self.auth = NacosAuth(self.config())
        self.http = self.config().client()

    def config(self) -> NacosConfig:
        return NacosConfig(self.url, username=self.username, password=self.password, timeout=10)

    def bad_config(self) -> NacosConfig:
        return NacosConfig(self.url, username=self.username, password=self.password + "-wrong", timeout=10)

    def raw(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """A request under the context path, logged in (one re-login on a 403)."""
        return self.auth.request(self.http, method, path, **kw)

    def registration(
        self, service: str, *, ip: str, port: int, version: str, lane: str | None, weight: int
    ) -> NacosRegistration:
        return NacosRegistration(
            self.config(), service, ip=ip, port=port, version=version, lane=lane, weight=weight / 100
        )

    def register_expiring(self, service: str, *, ip: str, port: int, version: str) -> None:
        # Ephemeral, never beating: unhealthy 1.5 s after registration (a real server checks
        # every 5 s), removed after 3 s. The metadata keys are Nacos's own per-instance knobs.
        metadata = {
            "version": version,
            "preserved.heart.beat.interval": "500",
            "preserved.heart.beat.timeout": "1500",
            "preserved.ip.delete.timeout": "3000",
        }
        r = self.raw(
            "POST",
            "/v1/ns/instance",
            data={
                "serviceName": service,
                "groupName": "DEFAULT_GROUP",
                "namespaceId": "public",
                "ip": ip,
                "port": str(port),
                "ephemeral": "true",
                "metadata": json.dumps(metadata),
            },
        )
        assert r.status_code == 200 and r.text.strip() == "ok", r.text

    def discovery(self) -> graylb.NacosDiscovery:
        return graylb.NacosDiscovery(self.config(), refresh_interval=0.2)

    def store(self) -> NacosConfigStore:
        return NacosConfigStore(self.config())

    def delete_key(self, key: str) -> None:
        r = self.raw("DELETE", "/v1/cs/configs", params={"dataId": key, "group": "DEFAULT_GROUP"})
        assert r.status_code == 200, r.text

    def rule_source(self, key: str) -> graylb.NacosRuleSource:
        return graylb.NacosRuleSource(
            self.config(), key, poll_timeout=30, initial_timeout=5
        )  # only a change answers within a test's 10 s

    def close(self) -> None:
        self.http.close()
        self._stop()


# ------------------------------------------------------------------------------ starting servers


def start_fake_consul() -> ConsulBackend:
    from graylb.testing.fake_consul import FakeConsul

    management, read, none = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    fake = FakeConsul(acl_tokens={management: "write", read: "read", none: "none"}).start()
    return ConsulBackend("fake-consul", fake.url, management, read, none, stop=fake.stop)


def start_fake_nacos() -> NacosBackend:
    from graylb.testing.fake_nacos import FakeNacos

    password = uuid.uuid4().hex
    fake = FakeNacos(auth={"nacos": password}, long_poll_min_hold=0.5).start()
    return NacosBackend("fake-nacos", fake.url, "nacos", password, expiry_budget=8.0, min_hold=0.5, stop=fake.stop)


class StartFailed(Exception):
    """A real server binary is there but did not come up (the message has its log's tail)."""


def _stopper(proc: subprocess.Popen[Any], log: Any, data: Path, sig: int) -> Callable[[], None]:
    """How a started server is stopped: ``sig``, a kill after 10 s, its log closed, its data gone."""

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        shutil.rmtree(data, ignore_errors=True)

    return stop


def start_real_consul(binary: Path, workdir: Path) -> ConsulBackend:
    """A one-node Consul server (not -dev: compact JSON, a data dir, like production) on free
    127.0.0.1 ports with ACLs on, default policy deny; the management token is also the agent
    token (the agent must be allowed to register its own node). A read-only token (every
    ``*:read``) is made through the ACL API."""
    management = str(uuid.uuid4())
    http_port, serf_lan, serf_wan, server = (free_port() for _ in range(4))
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "agent.hcl"
    cfg.write_text(f"""
node_name = "graylb-contract"
data_dir = "{data}"
server = true
bootstrap_expect = 1
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
log_level = "warn"
performance {{ raft_multiplier = 1 }}
ports {{
  http = {http_port}
  dns = -1
  grpc = -1
  grpc_tls = -1
  serf_lan = {serf_lan}
  serf_wan = {serf_wan}
  server = {server}
}}
acl {{
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {{
    initial_management = "{management}"
    agent = "{management}"
  }}
}}
""")
    log_path = workdir / "consul.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    proc = subprocess.Popen(
        [str(binary), "agent", "-config-file", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )

    stop = _stopper(proc, log, data, signal.SIGINT)  # SIGINT: a graceful leave

    url = f"http://127.0.0.1:{http_port}"
    headers = {"X-Consul-Token": management}

    def ready() -> bool:
        if proc.poll() is not None:
            raise StartFailed(f"consul exited with {proc.returncode}")
        try:
            r = httpx.get(f"{url}/v1/health/service/consul", headers=headers, timeout=2, trust_env=False)
        except httpx.TransportError:
            return False
        # a leader, and the agent's node (with serfHealth) in the catalog: registrations sync
        return r.status_code == 200 and any(
            c.get("CheckID") == "serfHealth" for e in r.json() for c in e.get("Checks") or ()
        )

    try:
        try:
            wait_for(ready, 60, "consul leader and node registration", interval=0.1)
        except AssertionError as exc:
            raise StartFailed(str(exc)) from None
        secrets = []
        for policy_name, rules in (
            (
                "contract-read-only",
                'key_prefix "" { policy = "read" }\n'
                'service_prefix "" { policy = "read" }\n'
                'node_prefix "" { policy = "read" }',
            ),
            ("contract-nothing", 'key_prefix "zzz-none" { policy = "read" }'),
        ):
            policy = httpx.put(
                f"{url}/v1/acl/policy", headers=headers, timeout=10, json={"Name": policy_name, "Rules": rules}
            )
            if policy.status_code != 200:
                raise StartFailed(f"creating ACL policy {policy_name}: {policy.status_code} {policy.text[:200]}")
            token = httpx.put(
                f"{url}/v1/acl/token",
                headers=headers,
                timeout=10,
                json={"Description": policy_name, "Policies": [{"ID": policy.json()["ID"]}]},
            )
            if token.status_code != 200:
                raise StartFailed(f"creating an ACL token for {policy_name}: {token.status_code} {token.text[:200]}")
            secrets.append(token.json()["SecretID"])
    except StartFailed as exc:
        stop()
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise StartFailed(f"{exc}; log ({log_path}): {tail}") from None
    except BaseException:  # a bug here, an HTTP error, Ctrl-C: never leave the agent running
        stop()
        raise
    return ConsulBackend("real-consul", url, management, secrets[0], secrets[1], stop=stop)


def start_rnacos(binary: Path, workdir: Path, tries: int = 3) -> NacosBackend:
    """rnacos (the Nacos-compatible server written in Rust) on free 127.0.0.1 ports -- its SDK
    (HTTP + gRPC) and console servers bound to loopback through RNACOS_SDK_HOST /
    RNACOS_CONSOLE_HOST -- with Open API auth on, a fresh data directory, configured by an env
    file (``rnacos -e FILE``) like a deployment. rnacos 0.8.8 sometimes panics in its raft state
    machine while it starts (an unset manager, raftapply.rs:421) and never creates the admin
    user; a fresh start does not: up to ``tries`` starts, each in its own directory."""
    for attempt in range(1, tries + 1):
        try:
            return _start_rnacos_once(binary, workdir / f"start-{attempt}")
        except StartFailed as exc:
            if attempt == tries:
                raise StartFailed(f"rnacos did not start ({tries} tries): {exc}") from None
    raise AssertionError("unreachable")


def _start_rnacos_once(binary: Path, workdir: Path) -> NacosBackend:
    http_port, grpc_port, console_port = (free_port() for _ in range(3))
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    password = uuid.uuid4().hex
    env_file = workdir / "rnacos.env"
    env_file.write_text(
        "\n".join(
            f"{k}={v}"
            for k, v in {
                "RNACOS_HTTP_PORT": http_port,
                "RNACOS_GRPC_PORT": grpc_port,
                "RNACOS_HTTP_CONSOLE_PORT": console_port,
                "RNACOS_SDK_HOST": "127.0.0.1",
                "RNACOS_CONSOLE_HOST": "127.0.0.1",
                "RNACOS_RAFT_NODE_ADDR": f"127.0.0.1:{grpc_port}",
                "RNACOS_DATA_DIR": data,
                "RNACOS_ENABLE_OPEN_API_AUTH": "true",
                "RNACOS_INIT_ADMIN_USERNAME": "graylb",
                "RNACOS_INIT_ADMIN_PASSWORD": password,
                "RUST_LOG": "warn",
            }.items()
        )
        + "\n"
    )
    log_path = workdir / "rnacos.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RNACOS_", "NACOS_"))}
    proc = subprocess.Popen(
        [str(binary), "-e", str(env_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        start_new_session=True,
    )

    stop = _stopper(proc, log, data, signal.SIGTERM)

    url = f"http://127.0.0.1:{http_port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise StartFailed(f"rnacos exited with {proc.returncode}")
        try:
            r = httpx.post(
                f"{url}/nacos/v1/auth/login",
                data={"username": "graylb", "password": password},
                timeout=2,
                trust_env=False,
            )
        except httpx.TransportError:
            return False
        return r.status_code == 200 and "accessToken" in r.text

    try:
        try:
            wait_for(ready, 20, "rnacos to answer a login", interval=0.1)
        except AssertionError as exc:
            raise StartFailed(str(exc)) from None
        backend = NacosBackend(
            "real-nacos", url, "graylb", password, expiry_budget=20.0, min_hold=10.0, stop=stop, lacks=RNACOS_LACKS
        )
        _wait_until_rnacos_settles(backend)
        return backend
    except StartFailed as exc:
        stop()
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-5:])
        raise StartFailed(f"{exc}; log ({log_path}): {tail}") from None
    except BaseException:  # a bug here, Ctrl-C: never leave the server running
        stop()
        raise


def _wait_until_rnacos_settles(backend: NacosBackend, timeout: float = 30.0) -> None:
    """rnacos 0.8.8 answers logins at once, but about 5 s after it starts it settles something
    internal, and the next registration of a persistent instance then drops the persistent
    instances its service got before that moment (seen every time; never later). So: register
    a persistent sentinel, re-register a second one until the sentinel is dropped -- rnacos has
    settled -- and clean up. A version without the quirk never drops it: ready after ``timeout``."""
    service, ip = "graylb-startup-sentinel", "127.0.0.1"

    def put(port: int, method: str = "POST") -> None:
        form = {"serviceName": service, "ip": ip, "port": str(port), "ephemeral": "false"}
        r = backend.raw(method, "/v1/ns/instance", params=form)
        if r.status_code != 200:
            raise StartFailed(f"sentinel {method} /v1/ns/instance: {r.status_code} {r.text[:200]}")

    def sentinel_dropped() -> bool:
        put(2)
        hosts = backend.raw("GET", "/v1/ns/instance/list", params={"serviceName": service}).json()["hosts"]
        return all(h["port"] != 1 for h in hosts)

    put(1)
    with contextlib.suppress(AssertionError):
        wait_for(sentinel_dropped, timeout, "rnacos to settle", interval=0.25)
    for port in (1, 2):
        with contextlib.suppress(StartFailed):
            put(port, "DELETE")


def real_nacos_from_env() -> NacosBackend | None:
    """An already running Nacos 2.x with auth on, if ``GRAYLB_NACOS_URL`` (plus
    ``GRAYLB_NACOS_USERNAME`` / ``GRAYLB_NACOS_PASSWORD``, default nacos / nacos) names one."""
    url = os.environ.get("GRAYLB_NACOS_URL")
    if not url:
        return None
    return NacosBackend(
        "real-nacos",
        url,
        os.environ.get("GRAYLB_NACOS_USERNAME", "nacos"),
        os.environ.get("GRAYLB_NACOS_PASSWORD", "nacos"),
        expiry_budget=20.0,
        min_hold=10.0,
    )


@contextlib.contextmanager
def closing(obj: Any) -> Iterator[Any]:
    try:
        yield obj
    finally:
        obj.close()
