"""Test helpers that ship with graylb: real loopback servers for your own tests."""

from .http_server import WSGIServer, serve_wsgi

__all__ = ["WSGIServer", "serve_wsgi"]
