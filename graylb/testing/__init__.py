"""Test helpers that ship with graylb: real loopback servers for your own tests.

- :func:`serve_wsgi` — a keep-alive HTTP/1.1 server for a WSGI app on a free port.
- :class:`FakeConsul` — Consul's HTTP API (health, catalog, agent, KV, ACL) on a free port.
"""

from .fake_consul import FakeConsul, RecordedRequest
from .http_server import WSGIServer, serve_wsgi

__all__ = ["FakeConsul", "RecordedRequest", "WSGIServer", "serve_wsgi"]
