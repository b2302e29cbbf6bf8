"""graylb's pytest plugin, registered through the ``pytest11`` entry point: installing graylb
is enough (``-p no:graylb`` turns it off).

Fixtures
    ``graylb_pin``      ``graylb_pin("orders", "2.0.0")``: every call to orders during the test,
                        from any thread or task, HTTP or gRPC, goes to a 2.0.0 instance; the
                        test fails if one found no such instance (even if the code swallowed it).
    ``graylb_lane``     ``graylb_lane("beta")``: every call during the test is in the lane.
    ``graylb_registry`` an in-memory :class:`~graylb.StaticDiscovery` to add/remove instances on.
    ``graylb_consul``   a started :class:`~graylb.testing.FakeConsul` (stopped after the test).
    ``graylb_nacos``    a started :class:`~graylb.testing.FakeNacos` (stopped after the test).
    ``graylb_backend``  a :class:`~graylb.testing.registries.RegistryBackend` on the registry
                        chosen by ``@pytest.mark.graylb_registry("consul")``, else the
                        ``--graylb-registry`` option / ``graylb_registry`` ini value (memory).

Markers
    ``@pytest.mark.graylb_pin("orders", "2.0.0")`` and ``@pytest.mark.graylb_lane("beta")`` do
    what the fixtures do, for the whole test; ``@pytest.mark.graylb_registry(name)`` picks the
    backend (``@pytest.mark.graylb_registry("memory", "consul", "nacos")`` runs the test once on each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..errors import NoInstanceAvailable
from .pinning import Override, lane, pin_version

# Kept in step with registries.BACKENDS; the plugin loads in every pytest run of a project that
# installs graylb, so it imports nothing heavy (balancers, clients) until a fixture is used.
BACKENDS = ("memory", "consul", "nacos")

_OVERRIDES = pytest.StashKey[list[Override]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("graylb", "graylb gray-release testing")
    group.addoption(
        "--graylb-registry",
        choices=BACKENDS,
        default=None,
        help="registry behind the graylb_backend fixture: memory (default), consul (FakeConsul) or nacos (FakeNacos)",
    )
    parser.addini(
        "graylb_registry", "default registry for the graylb_backend fixture (memory, consul, nacos)", default="memory"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "graylb_pin(service, version): pin the service to a version for the whole test (any thread/task)"
    )
    config.addinivalue_line("markers", "graylb_lane(name, forced=False): put every call made during the test in a lane")
    config.addinivalue_line(
        "markers", "graylb_registry(*names): run the graylb_backend fixture on these registries (memory, consul, nacos)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``@pytest.mark.graylb_registry("memory", "consul")`` on a test using ``graylb_backend``
    runs it once per registry."""
    marker = metafunc.definition.get_closest_marker("graylb_registry")
    if marker is None or "graylb_backend" not in metafunc.fixturenames:
        return
    kinds = list(marker.args) or list(BACKENDS)
    for kind in kinds:
        if kind not in BACKENDS:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid}: graylb_registry({kind!r}): choose from {', '.join(BACKENDS)}"
            )
    metafunc.parametrize("graylb_backend", kinds, indirect=True, ids=[f"graylb-{k}" for k in kinds])


def _activate(item: pytest.Item, override: Override) -> Override:
    """Start ``override`` for the test; ``_graylb_overrides`` stops it when the test ends."""
    override.start()
    item.stash.setdefault(_OVERRIDES, []).append(override)
    return override


@pytest.fixture(autouse=True)
def _graylb_overrides(request: pytest.FixtureRequest) -> Iterator[None]:
    """Applies ``graylb_pin`` / ``graylb_lane`` markers (class and module markers too), and at
    the end of the test stops every override the markers or the fixtures started (autouse:
    set up first, torn down last)."""
    node = request.node
    for marker in node.iter_markers("graylb_pin"):
        _activate(node, pin_version(*marker.args, **marker.kwargs))
    for marker in node.iter_markers("graylb_lane"):
        _activate(node, lane(*marker.args, **marker.kwargs))
    yield
    for override in node.stash.get(_OVERRIDES, []):
        override.stop()


@pytest.fixture
def graylb_pin(request: pytest.FixtureRequest) -> Callable[..., Override]:
    """``graylb_pin("orders", "2.0.0")`` (or a mapping of pins): active until the test ends."""

    def pin(service: Any, version: str | None = None, *, strict: bool = True) -> Override:
        return _activate(request.node, pin_version(service, version, strict=strict))

    return pin


@pytest.fixture
def graylb_lane(request: pytest.FixtureRequest) -> Callable[..., Override]:
    """``graylb_lane("beta", forced=False)``: active until the test ends."""

    def in_lane(name: str, *, forced: bool = False, strict: bool = True) -> Override:
        return _activate(request.node, lane(name, forced=forced, strict=strict))

    return in_lane


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """A pin that found no instance fails the test itself (not its teardown), even when the
    code under test caught the NoInstanceAvailable and carried on."""
    try:
        result = yield
    except BaseException as exc:
        # The test failed on its own, often *because* of a miss that surfaced in some other way
        # (an empty list, a 503): say what the pin saw next to the failure.
        if isinstance(exc, NoInstanceAvailable):  # already says it
            raise
        for override in item.stash.get(_OVERRIDES, []):
            summary = override.summary()
            if summary is not None:
                exc.add_note(f"graylb: {summary}")
        raise
    for override in item.stash.get(_OVERRIDES, []):
        if override.strict:
            override.check()
    return result


@pytest.fixture
def graylb_registry() -> Any:
    """An in-memory registry:
    ``graylb_registry.add({"host": ..., "port": ..., "version": "2.0.0"}, service="orders")``."""
    from ..discovery.static import StaticDiscovery

    return StaticDiscovery()


@pytest.fixture
def graylb_consul() -> Iterator[Any]:
    """A :class:`~graylb.testing.FakeConsul` on a free 127.0.0.1 port (``.url``)."""
    from .fake_consul import FakeConsul

    fake = FakeConsul().start()
    yield fake
    fake.stop()


@pytest.fixture
def graylb_nacos() -> Iterator[Any]:
    """A :class:`~graylb.testing.FakeNacos` on a free 127.0.0.1 port (``.url``)."""
    from .fake_nacos import FakeNacos

    fake = FakeNacos().start()
    yield fake
    fake.stop()


@pytest.fixture
def graylb_backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Instances and rules on the chosen registry; its balancers see every change before
    ``add`` / ``remove`` / ``set_rules`` return."""
    kind = (
        getattr(request, "param", None)
        or request.config.getoption("--graylb-registry")
        or request.config.getini("graylb_registry")
        or "memory"
    )
    from .registries import open_backend

    backend = open_backend(kind)
    yield backend
    backend.close()
