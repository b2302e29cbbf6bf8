"""ConsulRegistration and NacosRegistration where they behave alike, against FakeConsul /
FakeNacos over real sockets: deregistration on error, exit signals, the heartbeat outliving the
registry going away.

Each test runs once per registry (ids ``consul`` / ``nacos``) through a small adaptor; the
registration details (TTL checks, beats, code 10200, auth, v2 API ...) are in
``test_consul_registration.py`` / ``test_nacos_registration.py``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graylb.consul import ConsulConfig, ConsulRegistration
from graylb.nacos import NacosConfig, NacosRegistration
from graylb.registration import Registration
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.fake_nacos import FakeNacos
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]

# A serving process: registers, installs the signal handlers (twice: they must not chain to
# themselves) and waits; a SIGINT right after "ready" must land inside the try.
SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    {setup}
    reg.register()
    reg.install_signal_handlers()
    reg.install_signal_handlers()  # twice: must not chain to itself
    try:
        print("ready", flush=True)  # inside the try: a SIGINT right after it must be caught
        threading.Event().wait(60)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
    """
)


class ConsulRegistry:
    """An agent-side registration with a TTL check kept passing by the heartbeat."""

    kind, name, logger = "consul", "Consul", "graylb.consul"
    ttl = 0.6
    setup = (
        "from graylb.consul import ConsulConfig, ConsulRegistration\n"
        'reg = ConsulRegistration(ConsulConfig(sys.argv[1]), "orders", address="127.0.0.1", port=9001, '
        'version="2.0.0", ttl=0.6)'
    )

    def __init__(self) -> None:
        self.fake: Any = FakeConsul().start()

    def make(self, **kw: Any) -> Registration:
        args: dict[str, Any] = {
            "address": "127.0.0.1",
            "port": 9001,
            "version": "2.0.0",
            "ttl": self.ttl,
            "env": {},
        }  # env: the runner's own SERVICE_IMAGE etc. must not leak in
        args.update(kw)
        return ConsulRegistration(ConsulConfig(self.fake.url), "orders", **args)

    def listed(self) -> list[dict]:
        """orders' entries in /v1/health/service (passing or not)."""
        return httpx.get(f"{self.fake.url}/v1/health/service/orders", timeout=5).json()

    def passing(self, reg: Any) -> bool:
        return next(c["Status"] for c in self.listed()[0]["Checks"] if c["CheckID"] == reg.check_id) == "passing"

    def deregistrations(self) -> list:
        return [r for r in self.fake.requests if r.path == "/v1/agent/service/deregister/orders-127.0.0.1-9001"]


class NacosRegistry:
    """An ephemeral instance kept healthy by beats (every 0.1 s; the fake's beat timeout 0.5 s)."""

    kind, name, logger = "nacos", "Nacos", "graylb.nacos"
    beat = 0.1
    setup = (
        "from graylb.nacos import NacosConfig, NacosRegistration\n"
        'reg = NacosRegistration(NacosConfig(sys.argv[1]), "orders", ip="127.0.0.1", port=9001, '
        'version="2.0.0", beat_interval=0.1)'
    )

    def __init__(self) -> None:
        self.fake: Any = FakeNacos(beat_timeout=0.5, delete_timeout=1.0).start()

    def make(self, **kw: Any) -> Registration:
        args: dict[str, Any] = {
            "ip": "127.0.0.1",
            "port": 9001,
            "version": "2.0.0",
            "beat_interval": self.beat,
            "env": {},
        }  # env: the runner's own SERVICE_IMAGE etc. must not leak in
        args.update(kw)
        return NacosRegistration(NacosConfig(self.fake.url), "orders", **args)

    def listed(self) -> list[dict]:
        """orders' instances as the fake stores them (healthy or not)."""
        return self.fake.instances("orders")

    def passing(self, reg: Any) -> bool:
        listed = self.listed()
        return bool(listed) and listed[0]["healthy"]

    def deregistrations(self) -> list:
        return [r for r in self.fake.requests if r.method == "DELETE" and r.path == "/nacos/v1/ns/instance"]


@pytest.fixture(params=["consul", "nacos"])
def registry(request: pytest.FixtureRequest) -> Iterator[ConsulRegistry | NacosRegistry]:
    reg = ConsulRegistry() if request.param == "consul" else NacosRegistry()
    yield reg
    reg.fake.stop()


def test_context_manager_registers_and_deregisters_even_on_error(registry: ConsulRegistry | NacosRegistry) -> None:
    with pytest.raises(RuntimeError), registry.make() as reg:
        assert len(registry.listed()) == 1
        raise RuntimeError("app crashed")
    assert registry.listed() == [] and not reg.registered


def test_heartbeat_survives_the_registry_going_away(
    registry: ConsulRegistry | NacosRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=registry.logger)
    fake = registry.fake
    with registry.make() as reg:
        fake.stop()  # connection refused from now on
        wait_until(lambda: any("failing" in r.getMessage() for r in caplog.records), message="outage warning")
        fake.start()  # same port, state kept (a real agent / server restores it)
        wait_until(lambda: any("recovered" in r.getMessage() for r in caplog.records), message="recovery log line")
        wait_until(lambda: registry.passing(reg), message="passing again")
    [warning] = [r for r in caplog.records if "failing" in r.getMessage()]
    assert (
        f"cannot reach {registry.name} at {fake.url}" in warning.getMessage()
        and "connection refused" in warning.getMessage()
    )


def test_install_signal_handlers_refuses_other_threads(registry: ConsulRegistry | NacosRegistry) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            registry.make().install_signal_handlers()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert errors and "main thread" in str(errors[0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_deregisters_then_keeps_default_behaviour(registry: ConsulRegistry | NacosRegistry, sig: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "NACOS_"))}
    script = SERVER_SCRIPT.format(setup=registry.setup)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, registry.fake.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
        # A process started the usual way: a runner in a background job of a non-interactive
        # shell ignores SIGINT, and children would inherit that (Python then raises no
        # KeyboardInterrupt, and graylb rightly keeps an ignored signal ignored).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        assert len(registry.listed()) == 1
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert registry.listed() == []
    assert len(registry.deregistrations()) == 1
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM, err  # died of SIGTERM, as without the handler
    else:
        assert proc.returncode == 3 and "interrupted" in out, err  # KeyboardInterrupt raised as before


DRAINING_SERVER_SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading
    from graylb.drain_middleware import DrainWSGIMiddleware
    logging.basicConfig(level=logging.INFO)
    from graylb.testing import serve_wsgi
    {setup}
    def app(environ, start_response):
        start_response("200 OK", [])
        return [b"still serving"]
    server = serve_wsgi(DrainWSGIMiddleware(app, reg.drainer))
    reg.drainer.grace = 3.0
    reg.register()
    reg.install_signal_handlers(drain=True)
    print(server.url, flush=True)
    threading.Event().wait(60)
    """
)


def test_sigterm_with_drain_deregisters_keeps_serving_through_the_grace_then_dies_of_it(
    registry: ConsulRegistry | NacosRegistry,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "NACOS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRAINING_SERVER_SCRIPT.format(setup=registry.setup), registry.fake.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert len(registry.listed()) == 1
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: registry.listed() == [])  # callers learn it is leaving ...
        assert httpx.get(url, timeout=5).text == "still serving"  # ... while it still serves them
        assert proc.poll() is None
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGTERM, err  # drained, then died of the signal as without graylb
    assert "drained in" in err and len(registry.deregistrations()) == 1, err


def test_register_waits_for_the_readiness_probe(registry: ConsulRegistry | NacosRegistry) -> None:
    ready = threading.Event()
    probes: list[bool] = []

    def probe() -> bool:
        probes.append(ready.is_set())
        return probes[-1]

    reg = registry.make(ready=probe)
    registering = threading.Thread(target=reg.register)
    registering.start()
    try:
        wait_until(lambda: len(probes) >= 2)
        assert registering.is_alive() and registry.listed() == []  # not ready: not registered
        ready.set()
        registering.join(10)
        assert len(registry.listed()) == 1 and reg.registered
    finally:
        ready.set()
        registering.join(10)
        reg.close()


def test_an_http_readiness_path_is_probed_on_the_instance(registry: ConsulRegistry | NacosRegistry) -> None:
    from graylb.testing import serve_wsgi

    answers = ["503 Service Unavailable", "503 Service Unavailable", "200 OK"]
    probed: list[str] = []

    def app(environ: dict, start_response: Any) -> list[bytes]:
        probed.append(environ["PATH_INFO"])
        start_response(answers.pop(0) if len(answers) > 1 else answers[0], [])
        return [b""]

    with serve_wsgi(app) as server:
        reg = registry.make(port=server.port, ready="/healthz/ready")
        with reg:
            assert len(registry.listed()) == 1
        assert probed[:3] == ["/healthz/ready"] * 3  # two 503s waited out, registered on the 200


def test_a_probe_that_never_passes_registers_nothing_and_says_why(registry: ConsulRegistry | NacosRegistry) -> None:
    from graylb.errors import NotReady

    def warming_up() -> bool:
        return False

    reg = registry.make(ready=warming_up, ready_timeout=0.2)
    with pytest.raises(NotReady, match=r"orders.*warming_up.*0\.2s.*returned false"):
        reg.register()
    assert registry.listed() == [] and not reg.registered


def test_the_registry_reflects_readiness_after_registering(registry: ConsulRegistry | NacosRegistry) -> None:
    ready = threading.Event()
    ready.set()
    reg = registry.make(ready=ready.is_set)
    with reg:
        assert registry.passing(reg)
        ready.clear()  # e.g. lost its database: callers must stop seeing it healthy
        wait_until(lambda: not registry.passing(reg))
        ready.set()
        wait_until(lambda: registry.passing(reg))


def test_a_grpc_service_registers_once_its_server_accepts(registry: ConsulRegistry | NacosRegistry) -> None:
    from graylb.errors import NotReady
    from graylb.registration import grpc_serving
    from graylb.testing.grpc_server import serve_echo

    with pytest.raises(NotReady, match="grpc_serving"):
        registry.make(ready=grpc_serving("127.0.0.1:1", timeout=0.05), ready_timeout=0.2).register()
    started: list[Any] = []
    probes: list[bool] = []

    def probe() -> bool:
        probes.append(bool(started) and grpc_serving(started[0].address, timeout=0.5)())
        return probes[-1]

    reg = registry.make(ready=probe)
    registering = threading.Thread(target=reg.register)
    registering.start()
    try:
        wait_until(lambda: len(probes) >= 2)
        assert registry.listed() == []
        started.append(serve_echo("orders", "2.0.0"))
        registering.join(10)
        assert len(registry.listed()) == 1 and probes[-1] is True
    finally:
        if not started:
            started.append(serve_echo("orders", "2.0.0"))
        registering.join(10)
        reg.close()
        started[0].stop()
