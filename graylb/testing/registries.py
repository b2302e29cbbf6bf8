"""One way to fill a registry in a test, whichever registry the code under test reads.

``memory`` is a :class:`~graylb.StaticDiscovery`; ``consul`` and ``nacos`` are the in-process
:class:`FakeConsul` / :class:`FakeNacos` servers spoken to over real sockets by graylb's own
Consul / Nacos clients. The same test runs on all three (the pytest plugin picks one from
``--graylb-registry`` or a ``graylb_registry`` marker)::

    backend = open_backend("consul")
    backend.set_rules(rules_yaml)
    backend.add("orders", "127.0.0.1", 8081, version="2.0.0")
    balancer = backend.balancer()          # waits until it sees what was added
    ...
    backend.close()                        # closes balancers it made, stops the fake server

``add`` / ``remove`` / ``set_rules`` return once every balancer the backend made has seen the
change, so a test never races the registry's propagation delay.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..balancer import Balancer
from ..discovery.base import Discovery
from ..discovery.static import StaticDiscovery
from ..rules.load import parse_rules
from ..rules.sources import RuleSource, StaticRules

__all__ = ["RegistryBackend", "BACKENDS", "open_backend"]

BACKENDS = ("memory", "consul", "nacos")
RULES_KEY = "graylb/rules"  # Consul KV key / Nacos dataId ("graylb.rules") of the rules document


class RegistryBackend:
    """Instances and rules for tests, in one of :data:`BACKENDS`. Not thread-safe (test code)."""

    kind = ""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.balancers: list[Balancer] = []
        self._rules_text: str | None = None
        self._instances: dict[str, tuple[str, str, int]] = {}  # id -> (service, host, port)

    # -- what a subclass provides -----------------------------------------------------------
    def _register(self, service: str, host: str, port: int, meta: dict[str, str], instance_id: str) -> None:
        raise NotImplementedError

    def _deregister(self, service: str, host: str, port: int, instance_id: str) -> None:
        raise NotImplementedError

    def _write_rules(self, text: str) -> None:
        raise NotImplementedError

    def discovery(self) -> Discovery:
        """A new discovery client for this backend (each balancer gets its own)."""
        raise NotImplementedError

    def rule_source(self) -> RuleSource:
        """A new rule source reading this backend's rules document."""
        raise NotImplementedError

    def _stop(self) -> None:
        pass

    # -- the test-facing verbs --------------------------------------------------------------
    def add(
        self,
        service: str,
        host: str = "127.0.0.1",
        port: int | None = None,
        *,
        version: str | None = None,
        lane: str | None = None,
        weight: int | None = None,
        server: Any = None,
        instance_id: str | None = None,
    ) -> str:
        """Register an instance (``server=`` takes anything with ``host``/``port``, e.g. a
        :func:`serve_wsgi` server or an echo server). Returns its id, for :meth:`remove`."""
        if server is not None:
            host, port = server.host, server.port
        if port is None:
            raise ValueError(f"add('{service}'): give port= or server=")
        meta = {"version": version, "lane": lane, "weight": None if weight is None else str(weight)}
        instance_id = instance_id or f"{service}-{host}-{port}"
        self._register(service, host, int(port), {k: v for k, v in meta.items() if v is not None}, instance_id)
        self._instances[instance_id] = (service, host, int(port))
        self._wait(lambda b: self._sees(b, service, host, int(port)), f"'{service}' instance {host}:{port} to appear")
        return instance_id

    def remove(self, instance_id: str) -> None:
        try:
            service, host, port = self._instances.pop(instance_id)
        except KeyError:
            raise KeyError(
                f"no instance '{instance_id}' was added to this {self.kind} backend (added: {sorted(self._instances)})"
            ) from None
        self._deregister(service, host, port, instance_id)
        self._wait(lambda b: not self._sees(b, service, host, port), f"'{service}' instance {host}:{port} to disappear")

    def set_rules(self, doc: str | Mapping[str, Any]) -> None:
        """Validate and publish the rules document; a bad one raises :class:`~graylb.RuleError`
        here and nothing is written."""
        parse_rules(doc, source=f"{self.kind} backend rules")
        text = doc if isinstance(doc, str) else _to_yaml(doc)
        if text == self._rules_text:
            return
        before = {id(b): b.rule_source.current for b in self.balancers}
        self._rules_text = text
        self._write_rules(text)
        self._wait(lambda b: b.rule_source.current is not before[id(b)], "the new rules to apply")

    def balancer(self, **kwargs: Any) -> Balancer:
        """A :class:`~graylb.Balancer` over this backend's discovery and rules; closed by
        :meth:`close`. Returns once it has the instances added so far."""
        balancer = Balancer(self.discovery(), self.rule_source(), **kwargs)
        self.balancers.append(balancer)
        for service, host, port in list(self._instances.values()):
            self._wait_one(
                balancer,
                functools.partial(self._sees, service=service, host=host, port=port),
                f"'{service}' instance {host}:{port} to appear",
            )
        return balancer

    def close(self) -> None:
        for b in self.balancers:
            b.close()
        self.balancers.clear()
        self._stop()

    def __enter__(self) -> RegistryBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- waiting ----------------------------------------------------------------------------
    @staticmethod
    def _sees(balancer: Balancer, service: str, host: str, port: int) -> bool:
        snapshot = balancer.state(service).snapshot
        return snapshot is not None and any(i.host == host and i.port == port for i in snapshot.instances)

    def _wait(self, ok: Callable[[Balancer], bool], what: str) -> None:
        for b in self.balancers:
            self._wait_one(b, ok, what)

    def _wait_one(self, balancer: Balancer, ok: Callable[[Balancer], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not ok(balancer):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.kind} backend: waited {self.timeout:g}s for {what}")
            time.sleep(0.005)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._instances)} instance(s), {len(self.balancers)} balancer(s)>"


class MemoryBackend(RegistryBackend):
    """A :class:`StaticDiscovery` and in-process rules: no sockets, no delay."""

    kind = "memory"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registry = StaticDiscovery()
        self._sources: list[RuleSource] = []

    def _register(self, service: str, host: str, port: int, meta: dict[str, str], instance_id: str) -> None:
        self.registry.add({"host": host, "port": port, "id": instance_id, **meta}, service=service)

    def _deregister(self, service: str, host: str, port: int, instance_id: str) -> None:
        self.registry.remove(instance_id, service=service)

    def _write_rules(self, text: str) -> None:
        for source in self._sources:
            source.apply(text, origin="memory backend rules")

    def discovery(self) -> Discovery:
        return _SharedRegistry(self.registry)  # type: ignore[return-value]  # forwards every attribute to a Discovery

    def rule_source(self) -> RuleSource:
        source = StaticRules(self._rules_text, name="memory backend rules")
        self._sources.append(source)
        return source


class _SharedRegistry:
    """Lets many balancers read one StaticDiscovery: their close() must not close it."""

    def __init__(self, registry: StaticDiscovery) -> None:
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)

    def close(self) -> None:  # the backend owns the registry
        pass


class ConsulBackend(RegistryBackend):
    """A :class:`~graylb.testing.FakeConsul` (started here unless given) read by
    :class:`~graylb.ConsulDiscovery` and :class:`~graylb.ConsulRuleSource`."""

    kind = "consul"

    def __init__(self, fake: Any = None, *, key: str = RULES_KEY, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .fake_consul import FakeConsul

        self._owned = fake is None
        self.fake = fake or FakeConsul().start()
        self.key = key

    def _register(self, service: str, host: str, port: int, meta: dict[str, str], instance_id: str) -> None:
        self.fake.register(service, id=instance_id, address=host, port=port, meta=meta)

    def _deregister(self, service: str, host: str, port: int, instance_id: str) -> None:
        self.fake.deregister(instance_id)

    def _write_rules(self, text: str) -> None:
        self.fake.kv_put(self.key, text)

    def discovery(self) -> Discovery:
        from ..consul.discovery import ConsulDiscovery

        return ConsulDiscovery(self.fake.url)

    def rule_source(self) -> RuleSource:
        from ..consul.rules import ConsulRuleSource

        return ConsulRuleSource(self.fake.url, self.key)

    def _stop(self) -> None:
        if self._owned:
            self.fake.stop()


class NacosBackend(RegistryBackend):
    """A :class:`~graylb.testing.FakeNacos` (started here unless given) read by
    :class:`~graylb.NacosDiscovery` and :class:`~graylb.NacosRuleSource`. Nacos discovery
    polls, so :meth:`add` waits up to one refresh interval (set to 0.05 s here)."""

    kind = "nacos"

    def __init__(
        self,
        fake: Any = None,
        *,
        data_id: str = "graylb.rules",
        group: str = "DEFAULT_GROUP",
        refresh_interval: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from .fake_nacos import FakeNacos

        self._owned = fake is None
        self.fake = fake or FakeNacos().start()
        self.data_id, self.group = data_id, group
        self.refresh_interval = refresh_interval

    def _register(self, service: str, host: str, port: int, meta: dict[str, str], instance_id: str) -> None:
        self.fake.register(service, host, port, metadata=meta)

    def _deregister(self, service: str, host: str, port: int, instance_id: str) -> None:
        self.fake.deregister(service, host, port)

    def _write_rules(self, text: str) -> None:
        self.fake.publish_config(self.data_id, self.group, text)

    def discovery(self) -> Discovery:
        from ..nacos.discovery import NacosDiscovery

        return NacosDiscovery(self.fake.url, refresh_interval=self.refresh_interval)

    def rule_source(self) -> RuleSource:
        from ..nacos.rules import NacosRuleSource

        return NacosRuleSource(self.fake.url, self.data_id, group=self.group)

    def _stop(self) -> None:
        if self._owned:
            self.fake.stop()


def open_backend(kind: str, **kwargs: Any) -> RegistryBackend:
    """``memory`` | ``consul`` | ``nacos`` (fake servers started on free 127.0.0.1 ports)."""
    factories: dict[str, Callable[..., RegistryBackend]] = {
        "memory": MemoryBackend,
        "consul": ConsulBackend,
        "nacos": NacosBackend,
    }
    try:
        factory = factories[kind]
    except KeyError:
        raise ValueError(f"unknown registry backend {kind!r} (choose from {', '.join(BACKENDS)})") from None
    return factory(**kwargs)


def _to_yaml(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2)  # JSON is YAML: every rule source reads it
