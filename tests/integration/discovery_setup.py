"""What the discovery tests share, for Consul, for Nacos and for both
(``test_consul_discovery.py``, ``test_nacos_discovery.py``, ``test_registry_discovery.py``): the
rules 'orders' is routed by, the registry variables no test may inherit from the runner, and real
HTTP servers for 'orders' to register."""

from __future__ import annotations

from typing import Any

import pytest

from graylb.testing.http_server import WSGIServer, serve_wsgi
from tests.conftest import version_app

RULES = """
services:
  orders:
    subsets: {stable: {version: "^1"}, canary: {version: "^2"}}
    default: stable
    routes:
      - name: beta
        match: [{headers: {user-group: beta}}]
        to: [{subset: canary}]
"""

REGISTRY_ENV = (
    "CONSUL_HTTP_ADDR",
    "CONSUL_HTTP_TOKEN",
    "CONSUL_HTTP_SSL",
    "CONSUL_CACERT",
    "NACOS_ADDR",
    "NACOS_SERVER_ADDR",
    "NACOS_USERNAME",
    "NACOS_PASSWORD",
    "NACOS_NAMESPACE",
    "NACOS_GROUP",
)


def clear_registry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in REGISTRY_ENV:
        monkeypatch.delenv(var, raising=False)


class OrdersServers:
    """``servers("1.4.2")`` starts a real HTTP server answering as 'orders' 1.4.2 (in ``lane``, if
    given); :meth:`stop` stops every one started."""

    def __init__(self) -> None:
        self.started: list[WSGIServer] = []

    def __call__(self, version: str, lane: str | None = None) -> Any:
        s = serve_wsgi(version_app("orders", version, lane=lane))
        self.started.append(s)
        return s

    def stop(self) -> None:
        for s in self.started:
            s.stop()
