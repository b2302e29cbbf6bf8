"""Test helpers that ship with graylb: real loopback servers and version pins for your own tests.

- :func:`pin_version` / :func:`lane` — pin a service's version, or force a lane, for every call
  in the process (any thread or task); a context manager or a decorator.
- :func:`open_backend` — instances and rules on an in-memory registry, FakeConsul or FakeNacos.
- :class:`MemoryRuleStore` — rules in memory, where ``push`` / ``undo`` / ``rollback`` work as on Consul.
- :func:`serve_wsgi` — a keep-alive HTTP/1.1 server for a WSGI app on a free port.
- :class:`FakeConsul` — Consul's HTTP API (health, catalog, agent, KV, ACL) on a free port.
- :class:`FakeNacos` — Nacos's Open API (naming v1/v2, beats, config + long polling, login).

The pytest plugin (fixtures ``graylb_pin``, ``graylb_lane``, ``graylb_backend``, ...) lives in
:mod:`graylb.testing.pytest_plugin` and is registered when graylb is installed.
"""

from .fake_consul import FakeConsul, RecordedRequest
from .fake_nacos import FakeNacos
from .http_server import WSGIServer, serve_wsgi
from .pinning import Override, PinNotSatisfied, lane, pin_version
from .registries import RegistryBackend, open_backend
from .rule_store import MemoryRuleStore

__all__ = [
    "FakeConsul",
    "FakeNacos",
    "MemoryRuleStore",
    "Override",
    "PinNotSatisfied",
    "RecordedRequest",
    "RegistryBackend",
    "WSGIServer",
    "lane",
    "open_backend",
    "pin_version",
    "serve_wsgi",
]
