"""Test helpers that ship with graylb: real loopback servers for your own tests.

- :func:`serve_wsgi` — a keep-alive HTTP/1.1 server for a WSGI app on a free port.
- :class:`FakeConsul` — Consul's HTTP API (health, catalog, agent, KV, ACL) on a free port.
- :class:`FakeNacos` — Nacos's Open API (naming v1/v2, beats, config + long polling, login).
"""

from .fake_consul import FakeConsul, RecordedRequest
from .fake_nacos import FakeNacos
from .http_server import WSGIServer, serve_wsgi

__all__ = ["FakeConsul", "FakeNacos", "RecordedRequest", "WSGIServer", "serve_wsgi"]
