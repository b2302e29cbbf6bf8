"""The build a registration announces — version, image, commit — taken from the arguments or the
environment a container build sets, as discovery and ``graylb status`` then show it; run for
ConsulRegistration against FakeConsul and NacosRegistration against FakeNacos (real sockets).

The environment is handed in with ``env=`` (os.environ is never touched); the one subprocess
test checks that without ``env=`` the process's own environment is read."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from graylb.consul import ConsulConfig, ConsulRegistration
from graylb.consul.discovery import instances_from_health
from graylb.errors import MissingVersion
from graylb.instance import Instance
from graylb.nacos import NacosConfig, NacosRegistration
from graylb.nacos.discovery import instances_from_hosts
from graylb.registration import Registration
from graylb.testing.fake_consul import FakeConsul
from graylb.testing.fake_nacos import FakeNacos

ROOT = Path(__file__).resolve().parents[2]
SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
NO_VERSION = (
    "no version: pass version=..., or set SERVICE_VERSION, OTEL_SERVICE_VERSION or "
    "OTEL_RESOURCE_ATTRIBUTES=service.version=..."
)


@dataclasses.dataclass
class Registry:
    """One registry behind the same small interface, so every case runs on both."""

    name: str
    url: str
    meta_name: str  # what the registration calls the caller's metadata ("meta" / "metadata")
    logger: str
    new: Callable[..., Registration]
    read_back: Callable[[], list[Instance]]
    requests: Callable[[], list[Any]]
    instance_id: Callable[[int], str]  # the ID `graylb status` shows for the instance on a port
    cli: Callable[..., subprocess.CompletedProcess]
    script: str  # registers "orders" on port 9001 with no build arguments: all from the environment


def _no_problems(read: Callable[[Callable[..., None]], list[Instance]]) -> list[Instance]:
    problems: list[str] = []
    out = read(lambda *a: problems.append(a[-1]))
    assert problems == []
    return out


def _clean_env(**extra: str) -> dict[str, str]:
    """The runner's environment minus anything that would change what is registered or where."""
    drop = ("CONSUL_", "NACOS_", "SERVICE_", "OTEL_")
    return {**{k: v for k, v in os.environ.items() if not k.startswith(drop)}, **extra}


def _consul(fake: FakeConsul) -> Registry:
    def new(*, meta: dict | None = None, port: int = 9001, **kw: Any) -> ConsulRegistration:
        return ConsulRegistration(
            ConsulConfig(fake.url), "orders", address="127.0.0.1", port=port, ttl=None, meta=meta, **kw
        )

    def read_back() -> list[Instance]:
        entries = httpx.get(f"{fake.url}/v1/health/service/orders", timeout=5).json()
        return _no_problems(lambda warn: instances_from_health("orders", entries, warn))

    def cli(*args: str) -> subprocess.CompletedProcess:
        env = _clean_env(CONSUL_HTTP_ADDR=fake.url)
        return subprocess.run(
            [sys.executable, "-m", "graylb.cli", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
        )

    script = """
        import sys
        from graylb.consul import ConsulConfig, ConsulRegistration
        reg = ConsulRegistration(ConsulConfig(sys.argv[1]), "orders", address="127.0.0.1", port=9001, ttl=None)
    """
    return Registry(
        "consul",
        fake.url,
        "meta",
        "graylb.consul",
        new,
        read_back,
        lambda: list(fake.requests),
        lambda port: f"fake-node/orders-127.0.0.1-{port}",
        cli,
        script,
    )


def _nacos(fake: FakeNacos) -> Registry:
    def new(*, meta: dict | None = None, port: int = 9001, **kw: Any) -> NacosRegistration:
        return NacosRegistration(NacosConfig(fake.url), "orders", ip="127.0.0.1", port=port, metadata=meta, **kw)

    def read_back() -> list[Instance]:
        params = {"serviceName": "orders", "healthyOnly": "false"}
        hosts = httpx.get(f"{fake.url}/nacos/v1/ns/instance/list", params=params, timeout=5).json()["hosts"]
        return _no_problems(lambda warn: instances_from_hosts("orders", hosts, warn))

    def cli(*args: str) -> subprocess.CompletedProcess:
        argv = [sys.executable, "-m", "graylb.cli", *args, "--nacos", fake.url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=_clean_env())

    script = """
        import sys
        from graylb.nacos import NacosConfig, NacosRegistration
        reg = NacosRegistration(NacosConfig(sys.argv[1]), "orders", ip="127.0.0.1", port=9001)
    """
    return Registry(
        "nacos",
        fake.url,
        "metadata",
        "graylb.nacos",
        new,
        read_back,
        lambda: list(fake.requests),
        lambda port: f"127.0.0.1#{port}#DEFAULT#DEFAULT_GROUP@@orders",
        cli,
        script,
    )


@pytest.fixture(params=["consul", "nacos"])
def registry(request: pytest.FixtureRequest) -> Iterator[Registry]:
    if request.param == "consul":
        with FakeConsul() as consul:
            yield _consul(consul)
    else:
        with FakeNacos() as nacos:
            yield _nacos(nacos)


# ------------------------------------------------------------------------------ the version

META = object()  # expected source: the registry's own name for the caller's metadata
REFUSED = object()  # expected: MissingVersion, nothing sent to the registry
ATTRS = "OTEL_RESOURCE_ATTRIBUTES"
EVERY_VARIABLE = {"SERVICE_VERSION": "2.1.0", "OTEL_SERVICE_VERSION": "2.2.0", ATTRS: "service.version=2.3.0"}

VERSION_CASES = [
    # (id, registration arguments, environment, (version, source) | REFUSED)
    ("argument wins over every variable", {"version": "3.0.0"}, EVERY_VARIABLE, ("3.0.0", "argument")),
    (
        "argument wins over the metadata key",
        {"version": "3.0.0", "meta": {"version": "3.1.0"}},
        EVERY_VARIABLE,
        ("3.0.0", "argument"),
    ),
    ("metadata version key is explicit too", {"meta": {"version": "3.1.0"}}, EVERY_VARIABLE, ("3.1.0", META)),
    ("SERVICE_VERSION first", {}, EVERY_VARIABLE, ("2.1.0", "SERVICE_VERSION")),
    (
        "then OTEL_SERVICE_VERSION",
        {},
        {"OTEL_SERVICE_VERSION": "2.2.0", ATTRS: "service.version=2.3.0"},
        ("2.2.0", "OTEL_SERVICE_VERSION"),
    ),
    ("then OTEL_RESOURCE_ATTRIBUTES", {}, {ATTRS: "service.version=2.3.0"}, ("2.3.0", ATTRS)),
    (
        "blank variables count as unset",
        {},
        {"SERVICE_VERSION": "  ", "OTEL_SERVICE_VERSION": "", ATTRS: "service.version=2.3.0"},
        ("2.3.0", ATTRS),
    ),
    ("values are stripped", {}, {"SERVICE_VERSION": " 2.1.0\n"}, ("2.1.0", "SERVICE_VERSION")),
    (
        "several pairs",
        {},
        {ATTRS: "service.name=orders,service.version=2.4.0,deployment.environment.name=prod"},
        ("2.4.0", ATTRS),
    ),
    (
        "percent-encoded value is decoded",
        {},
        {ATTRS: "service.version=2.5.0-rc.1%2Bbuild.7"},
        ("2.5.0-rc.1+build.7", ATTRS),
    ),
    ("a literal + stays a +", {}, {ATTRS: "service.version=2.5.0+build.8"}, ("2.5.0+build.8", ATTRS)),
    (
        "whitespace around pairs, keys and values",
        {},
        {ATTRS: "  service.name = orders ,   service.version =  2.6.0  , "},
        ("2.6.0", ATTRS),
    ),
    (
        "malformed pairs are skipped",
        {},
        {ATTRS: "garbage,=2.0.0,service.version,zone=%zz,team=%ff%fe,service.version=2.7.0"},
        ("2.7.0", ATTRS),
    ),
    (
        "a malformed repeat does not erase a good value",
        {},
        {ATTRS: "service.version=2.8.0,service.version=%E2%28"},
        ("2.8.0", ATTRS),
    ),
    ("nothing set: refused", {}, {}, REFUSED),
    (
        "only unusable values: refused",
        {},
        {"SERVICE_VERSION": " ", ATTRS: "service.name=orders,service.version=%zz,service.version,service.version=%20"},
        REFUSED,
    ),
    ("require_version=False registers without one", {"require_version": False}, {}, (None, None)),
]


@pytest.mark.parametrize(("kwargs", "env", "expect"), [pytest.param(*case[1:], id=case[0]) for case in VERSION_CASES])
def test_version_resolution_order(
    registry: Registry, kwargs: dict, env: dict, expect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    if expect is REFUSED:
        with pytest.raises(MissingVersion) as err:
            registry.new(env=env, **kwargs)
        owner = "ConsulRegistration" if registry.name == "consul" else "NacosRegistration"
        assert str(err.value) == f"{owner}('orders'): {NO_VERSION}"
        assert isinstance(err.value, ValueError)
        assert registry.requests() == [] and registry.read_back() == []
        return
    version, source = expect
    source = registry.meta_name if source is META else source
    caplog.set_level(logging.INFO, logger=registry.logger)
    with registry.new(env=env, **kwargs) as reg:
        assert (reg.version, reg.version_source) == (version, source)
        [inst] = registry.read_back()
        assert inst.version == version and "version" not in inst.labels
    # Where the version came from is said once, in the line announcing the registration.
    [line] = [r.getMessage() for r in caplog.records if "graylb: registered" in r.getMessage()]
    assert (f"version {version} from {source}" if version else "no version") in line


# ------------------------------------------------------------------------------ image and commit

BUILD_CASES = [
    # (id, registration arguments, environment, (image, source), (commit, source)); version is always "2.0.0"
    (
        "arguments win",
        {"image": "registry.example.com/orders:2.0.0", "commit": "0123abcd"},
        {"SERVICE_IMAGE": "other:1", "SERVICE_COMMIT": "beef", ATTRS: "container.image.name=x,vcs.ref.head.revision=y"},
        ("registry.example.com/orders:2.0.0", "argument"),
        ("0123abcd", "argument"),
    ),
    (
        "metadata keys are explicit too",
        {"meta": {"image": "orders:meta", "commit": "c0ffee"}},
        {"SERVICE_IMAGE": "other:1", "SERVICE_COMMIT": "beef"},
        ("orders:meta", META),
        ("c0ffee", META),
    ),
    (
        "SERVICE_IMAGE and SERVICE_COMMIT before the OpenTelemetry attributes",
        {},
        {
            "SERVICE_IMAGE": "registry.example.com/orders:2.0.0",
            "SERVICE_COMMIT": SHA,
            ATTRS: "container.image.name=x,vcs.ref.head.revision=y",
        },
        ("registry.example.com/orders:2.0.0", "SERVICE_IMAGE"),
        (SHA, "SERVICE_COMMIT"),
    ),
    (
        "OpenTelemetry image name plus its first tag, and the head revision",
        {},
        {
            ATTRS: "container.image.name=registry.example.com:5000/orders, container.image.tags=2.0.0%2Clatest, "
            "vcs.ref.head.revision=" + SHA
        },
        ("registry.example.com:5000/orders:2.0.0", ATTRS),
        (SHA, ATTRS),
    ),
    (
        "an OpenTelemetry image name already pinned keeps its digest",
        {},
        {ATTRS: "container.image.name=orders@sha256:5f0c,container.image.tags=latest"},
        ("orders@sha256:5f0c", ATTRS),
        (None, None),
    ),
    (
        "tags without a name are no image; nothing set is no label",
        {},
        {ATTRS: "container.image.tags=2.0.0"},
        (None, None),
        (None, None),
    ),
]


@pytest.mark.parametrize(
    ("kwargs", "env", "image", "commit"), [pytest.param(*case[1:], id=case[0]) for case in BUILD_CASES]
)
def test_image_and_commit_reach_discovery_as_labels(
    registry: Registry, kwargs: dict, env: dict, image: tuple, commit: tuple
) -> None:
    with registry.new(version="2.0.0", env=env, **kwargs) as reg:
        [inst] = registry.read_back()
    for name, (value, source) in (("image", image), ("commit", commit)):
        source = registry.meta_name if source is META else source
        assert (getattr(reg, name), getattr(reg.build, f"{name}_source")) == (value, source)
        if value is None:
            assert name not in inst.labels
        else:
            assert inst.labels[name] == value and inst.label(name) == value
    assert inst.version == "2.0.0"


# ------------------------------------------------------------------------------ a container, then `graylb status`


def _start_from_environment(registry: Registry, env: dict[str, str]) -> subprocess.Popen:
    """A process that registers with no build arguments at all, as a container entrypoint
    would; it stays registered until its stdin closes."""
    script = textwrap.dedent(registry.script) + textwrap.dedent(
        """
        reg.register()
        print("ready", reg.version_source, flush=True)
        sys.stdin.read()
        reg.close()
        """
    )
    return subprocess.Popen(
        [sys.executable, "-c", script, registry.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_clean_env(**env),
    )


def _columns(header: str) -> list[tuple[str, int, int | None]]:
    """(name, start, end) of each column, from the header's own offsets."""
    words = list(re.finditer(r"\S+", header))
    return [(m.group(), m.start(), words[i + 1].start() if i + 1 < len(words) else None) for i, m in enumerate(words)]


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it is truthy (bounded); fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_status_shows_version_image_and_commit_from_the_build_environment(registry: Registry) -> None:
    container = _start_from_environment(
        registry,
        {
            "SERVICE_VERSION": "2.0.0",
            "SERVICE_IMAGE": "registry.example.com/orders:2.0.0",
            ATTRS: "service.name=orders,vcs.ref.head.revision=" + SHA,
        },
    )
    try:
        assert container.stdout is not None
        assert container.stdout.readline().split() == ["ready", "SERVICE_VERSION"], (
            container.stderr.read() if container.stderr else ""
        )
        with registry.new(port=9002, version="1.4.2", lane="beta", env={}):
            result = registry.cli("status", "orders")
    finally:
        _, err = container.communicate(timeout=30)  # stdin closed: it deregisters and exits
    assert container.returncode == 0, err
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "service 'orders': 2 instance(s): 2 passing, 0 warning, 0 critical"
    columns = _columns(lines[1])
    assert [name for name, _, _ in columns] == [
        "VERSION",
        "IMAGE",
        "COMMIT",
        "LANE",
        "WEIGHT",
        "HEALTH",
        "ADDRESS",
        "ID",
    ]
    # Every cell starts exactly under its heading (sorted by version: 1.4.2 first).
    cells = [[row[start:end].strip() for _, start, end in columns] for row in lines[2:]]
    assert cells == [
        ["1.4.2", "-", "-", "beta", "100", "passing", "127.0.0.1:9002", registry.instance_id(9002)],
        [
            "2.0.0",
            "registry.example.com/orders:2.0.0",
            SHA[:12],
            "-",
            "100",
            "passing",
            "127.0.0.1:9001",
            registry.instance_id(9001),
        ],
    ]
    assert all(row[start - 1] == " " for row in lines[1:] for _, start, _ in columns[1:])
    # The container's own exit took its registration away.
    wait_for(lambda: registry.read_back() == [], "the container's instance to be deregistered")


def test_a_container_without_any_version_refuses_to_start(registry: Registry) -> None:
    proc = _start_from_environment(registry, {ATTRS: "service.name=orders"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out == ""
    owner = "ConsulRegistration" if registry.name == "consul" else "NacosRegistration"
    assert f"graylb.errors.MissingVersion: {owner}('orders'): {NO_VERSION}" in err
    assert registry.requests() == []
