"""Inbound trace context for graylb's middleware and gRPC server interceptors: the caller's
``traceparent`` (whatever the globally configured OpenTelemetry propagator reads) becomes the
current OpenTelemetry context of the request, so the client spans graylb's transports make for
the calls the handler sends (README "Telemetry") continue the caller's trace -- one trace across
hops, with no other instrumentation.

Nothing happens -- and nothing is parsed -- when no SDK tracer provider is installed (graylb then
makes no span to parent), or when a span is already current: an OpenTelemetry server
instrumentation outside graylb's middleware has extracted the caller's context and started its
server span, which the handler's calls must hang under.

The carriers are read *after* the middleware's trust decision: an untrusted caller's gray headers
are gone by then, so a propagator that reads them (``GrayPropagator``) finds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context

__all__ = ["extract", "attach", "detach", "WSGI", "ASGI", "METADATA"]

_TRACE_API: Any = trace if hasattr(trace, "_TRACER_PROVIDER") else None
_NOOP_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_tracing: list[bool] = []  # [True] once a real tracer provider was seen (it stays: set once)


def _tracing_installed() -> bool:
    if _tracing:
        return True
    if _TRACE_API is not None and _TRACE_API._TRACER_PROVIDER is None:
        return False  # the common case without an SDK: one global read, no os.environ lookup
    if isinstance(trace.get_tracer_provider(), _NOOP_PROVIDERS):
        return False
    _tracing.append(True)
    return True


class _WSGIGetter:
    """A WSGI environ as an OpenTelemetry carrier (``traceparent`` is ``HTTP_TRACEPARENT``)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


class _ASGIGetter:
    """An ASGI scope's ``headers`` (a list of byte pairs) as an OpenTelemetry carrier."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        wanted = key.lower().encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier.get("headers") or () if k.lower() == wanted]
        return found or None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return [k.decode("latin-1").lower() for k, _ in carrier.get("headers") or ()]


class _MetadataGetter:
    """gRPC invocation metadata (key/value pairs) as an OpenTelemetry carrier; text values only."""

    def get(self, carrier: Iterable[Any], key: str) -> list[str] | None:
        wanted = key.lower()
        found = [v for k, v in carrier or () if isinstance(v, str) and isinstance(k, str) and k.lower() == wanted]
        return found or None

    def keys(self, carrier: Iterable[Any]) -> list[str]:
        return [k.lower() for k, _ in carrier or () if isinstance(k, str)]


WSGI = _WSGIGetter()
ASGI = _ASGIGetter()
METADATA = _MetadataGetter()


def extract(carrier: Any, getter: Any) -> Context | None:
    """The context to make current for an inbound request: the current one with the caller's
    trace context extracted into it; ``None`` when there is nothing to do (see the module
    docstring). Never raises: a malformed header only means no parent."""
    if not _tracing_installed():
        return None
    try:
        if trace.get_current_span().get_span_context().is_valid:
            return None
        return propagate.extract(carrier, getter=getter)
    except Exception:  # a propagator's bug must not fail the request
        return None


def attach(carrier: Any, getter: Any) -> Token[Context] | None:
    """:func:`extract` and make it current; pair a non-None token with :func:`detach`."""
    ctx = extract(carrier, getter)
    return None if ctx is None else otel_context.attach(ctx)


def detach(token: Token[Context] | None) -> None:
    if token is not None:
        otel_context.detach(token)
