"""Inbound gray context for ASGI and WSGI applications.

Wrap the app once; every request then runs with the gray context its caller sent::

    app = GrayASGIMiddleware(app)                          # inside the mesh: trust callers
    app = GrayWSGIMiddleware(app, trust=trust_networks("10.0.0.0/8", "127.0.0.1/8"))

and outbound graylb transports forward it, so a lane or pin set at the edge holds on every hop.

**Trust.** Gray headers steer traffic to unreleased versions, so who may set them matters.
``trust`` is ``True`` (every caller may), ``False`` (nobody may) or a predicate over the ASGI
scope / WSGI environ, such as :func:`trust_networks`. For an untrusted caller the middleware
removes the plain gray headers and the gray members of ``baggage`` -- the app and anything it
forwards never see them -- and runs the app with an empty gray context.

**At the gateway** (the first hop that faces the internet) use ``trust=False``, or a predicate
that accepts only your own networks or authenticated staff, and set gray context from what you
*do* trust, after this middleware::

    app = GrayASGIMiddleware(gateway_app, trust=False)
    # in gateway_app, per request:
    with graylb.gray(values={"user-group": group_from_verified_token}):
        await forward(request)                             # graylb transport injects it

Services behind the gateway then use the default ``trust=True`` (or :func:`trust_networks`
for the cluster's ranges). :func:`trust_networks` checks the direct peer address: behind a
proxy that is the proxy, which must then strip gray headers itself (run it with ``trust=False``).

**With OpenTelemetry instrumentation** in the same app, the middleware's decision wins: the
context it attaches (``EMPTY`` for an untrusted caller) is what :func:`graylb.current` answers,
whatever :class:`~graylb.propagation.otel.GrayPropagator` extracted. For an untrusted caller it
also attaches an OpenTelemetry context without the gray context and without ``gray.*`` baggage
members, so an instrumentation that extracted them before the middleware ran (an outer
OpenTelemetry ASGI/WSGI middleware) does not forward them through instrumented clients.

**Trace context.** With an OpenTelemetry SDK installed and no span current yet, the caller's
``traceparent`` (what the global propagator reads) becomes the request's OpenTelemetry context
(:mod:`~graylb.propagation.trace_context`), so the client spans of graylb's transports continue
the caller's trace.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from opentelemetry import context as otel_context

from . import trace_context
from .codec import MAX_HEADER_LENGTH, HeaderCodec
from .context import EMPTY, ContextIterator, attach, detach
from .otel import without_gray
from .trust import Trust, trust_check, trust_networks

__all__ = ["GrayASGIMiddleware", "GrayWSGIMiddleware", "trust_networks"]

_logger = logging.getLogger("graylb.propagation")

_ASGI_GRAY_SCOPES = frozenset({"http", "websocket"})


def _asgi_gray_headers(headers: Iterable[Any], wanted: frozenset[bytes]) -> dict[str, str]:
    """The gray-relevant ASGI headers, as ``{lower-case name: value}`` for the codec's ``get``.

    Repeated fields are joined with "," (RFC 9110, and what WSGI servers do), so both twins
    read the same thing: two pin or baggage headers combine, two lane headers make an invalid
    lane that is ignored. A malformed header list counts as no gray headers.
    """
    found: dict[str, str] = {}
    try:
        for raw_name, raw_value in headers:
            # ASGI servers send lower-case names; lower() anyway, only when the name is unknown.
            if raw_name in wanted or (raw_name := raw_name.lower()) in wanted:
                name = raw_name.decode("latin-1")
                value = raw_value.decode("latin-1")
                previous = found.get(name)
                if previous is None:
                    found[name] = value
                elif len(previous) <= MAX_HEADER_LENGTH:  # the codec reads no further anyway
                    found[name] = f"{previous},{value}"
    except Exception:
        _logger.warning("graylb: malformed ASGI headers; reading no gray context from them")
        return {}
    return found


class GrayASGIMiddleware:
    """ASGI middleware: each ``http`` and ``websocket`` connection runs with the gray context
    from its headers (``scope["headers"]``); other scopes (``lifespan``) pass through untouched.

    Trusted caller: the context is extracted and attached for the whole app call (tasks the app
    starts inherit it). Untrusted caller: the app gets a *copy* of the scope without gray
    headers and gray baggage members, and an empty context. See the module docstring for
    gateways.
    """

    def __init__(
        self, app: Callable[..., Awaitable[None]], *, codec: HeaderCodec | None = None, trust: Trust = True
    ) -> None:
        self.app = app
        self.codec = codec if codec is not None else HeaderCodec()
        self._untrusted_check = trust_check(trust)
        self._wanted = frozenset(n.encode("latin-1") for n in self.codec._extract_names)

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope.get("type") not in _ASGI_GRAY_SCOPES:
            return await self.app(scope, receive, send)
        check = self._untrusted_check
        otel_token = None
        if check is None or check(scope):
            ctx = self.codec.extract(_asgi_gray_headers(scope.get("headers") or (), self._wanted).get)
        else:
            scope = dict(scope)  # the server's scope stays as it was; the app sees the stripped copy
            scope["headers"] = self.codec.strip_headers(list(scope.get("headers") or ()))
            ctx = EMPTY
            scrubbed = without_gray(self.codec)  # what an outer OpenTelemetry middleware took in
            if scrubbed is not None:
                otel_token = otel_context.attach(scrubbed)
        # Same task throughout, so attach/detach pair up even if the app raises.
        token = attach(ctx)
        trace_token = trace_context.attach(scope, trace_context.ASGI)  # the caller's traceparent
        try:
            return await self.app(scope, receive, send)
        finally:
            trace_context.detach(trace_token)
            detach(token)
            if otel_token is not None:
                otel_context.detach(otel_token)


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class GrayWSGIMiddleware:
    """WSGI middleware: each request runs with the gray context from its ``HTTP_*`` environ
    keys (``HTTP_X_GRAY_LANE``, ``HTTP_X_GRAY_PIN``, ``HTTP_BAGGAGE``).

    Untrusted caller: those keys are deleted from ``environ`` (gray members only, for
    ``HTTP_BAGGAGE``) and the app runs with an empty context.

    The context holds for the app call *and* while the response iterable is consumed, because
    WSGI bodies are often generated lazily. Rather than attaching to the server thread's context
    until the body is closed, the request gets a private :class:`contextvars.Context`: the app
    call, every ``next()`` on the body and ``close()`` run inside it. So the body sees the context
    (and a ``with graylb.gray(...)`` that spans a ``yield`` keeps working), the server thread is
    never left with a stale context even if ``close()`` is forgotten, and servers that iterate
    from another thread work too. Lists, tuples and ``wsgi.file_wrapper`` bodies run no app code
    while being sent, so they are returned as they are (keeping server optimisations such as
    ``Content-Length`` for a one-item list, or sendfile).
    """

    def __init__(
        self, app: Callable[..., Iterable[bytes]], *, codec: HeaderCodec | None = None, trust: Trust = True
    ) -> None:
        self.app = app
        self.codec = codec if codec is not None else HeaderCodec()
        self._untrusted_check = trust_check(trust)
        self._environ_keys = {name: _environ_key(name) for name in self.codec._extract_names}
        self._plain_keys = tuple(_environ_key(name) for name in self.codec.header_names)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        check = self._untrusted_check
        scrubbed = None
        if check is None or check(environ):
            keys = self._environ_keys
            gray_ctx = self.codec.extract(lambda name: environ.get(keys.get(name, "")))
        else:
            self._strip(environ)
            gray_ctx = EMPTY
            scrubbed = without_gray(self.codec)  # what an outer OpenTelemetry middleware took in
        request_context = contextvars.copy_context()
        request_context.run(attach, gray_ctx)  # private to this request: never detached, just dropped
        if scrubbed is not None:
            request_context.run(otel_context.attach, scrubbed)  # likewise
        request_context.run(trace_context.attach, environ, trace_context.WSGI)  # the caller's traceparent; likewise
        result = request_context.run(self.app, environ, start_response)
        if isinstance(result, (list, tuple)):
            return result
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return result
        return ContextIterator(result, request_context)

    def _strip(self, environ: dict[str, Any]) -> None:
        for key in self._plain_keys:
            environ.pop(key, None)
        baggage = environ.get("HTTP_BAGGAGE")
        if baggage is not None:
            stripped = self.codec.strip_baggage(str(baggage))
            if stripped is None:
                del environ["HTTP_BAGGAGE"]
            else:
                environ["HTTP_BAGGAGE"] = stripped
