"""Gray context propagation: the context itself (contextvars), the header codec that carries it
between processes, and the ASGI/WSGI middleware that takes it in at the server side."""

from __future__ import annotations

from .codec import HeaderCodec
from .context import EMPTY, GrayContext, attach, bind, current, detach, gray
from .middleware import GrayASGIMiddleware, GrayWSGIMiddleware, trust_networks

__all__ = [
    "EMPTY",
    "GrayASGIMiddleware",
    "GrayContext",
    "GrayWSGIMiddleware",
    "HeaderCodec",
    "attach",
    "bind",
    "current",
    "detach",
    "gray",
    "trust_networks",
]
