"""The request side of :mod:`graylb.drain`, for ASGI and WSGI apps and gRPC servers, plus the
pre-stop hook.

Wrap the app once with the instance's :class:`~graylb.drain.Drain`::

    registration = ConsulRegistration("orders", port=8080, version="2.0.0")
    app = DrainASGIMiddleware(app, registration.drainer)     # or DrainWSGIMiddleware

Each request is counted while it runs, so a drain knows when nothing is in flight. Once the drain
refuses (its grace period over), a request is answered ``503`` with the drain marker header
(:data:`~graylb.drain.DRAIN_HEADER`), ``Retry-After: 0`` and ``Connection: close``, without
reaching the app: a graylb caller resends it to another instance, whatever its method.

**gRPC**: ``grpc.server(pool, interceptors=[DrainServerInterceptor(drain)])``, and
``grpc.aio.server(interceptors=[AioDrainServerInterceptor(drain)])``.
A refused RPC ends ``UNAVAILABLE`` with the marker in its trailing metadata, which a graylb
channel resends elsewhere (it resends UNAVAILABLE anyway) and takes as "this instance is leaving".

**Pre-stop hook.** ``POST /graylb/drain`` (``hook_path``) runs the drain and answers once it is
done, ``200`` with the result as JSON -- what a Kubernetes ``preStop`` ``httpGet``/``exec curl``
waits on before the container gets SIGTERM. Only loopback callers may (``hook_trust``): anyone
who can reach it can take the instance out of service. ``hook_path=None`` turns it off.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

import grpc

from .drain import DRAIN_HEADER, Drain, DrainResult
from .propagation.trust import Trust, trust_check, trust_networks

__all__ = [
    "DrainASGIMiddleware",
    "DrainWSGIMiddleware",
    "DrainServerInterceptor",
    "AioDrainServerInterceptor",
    "HOOK_PATH",
]

HOOK_PATH = "/graylb/drain"
_LOOPBACK = trust_networks("127.0.0.0/8", "::1/128")
_REFUSED_BODY = b"draining: not processed, send it to another instance\n"
_REFUSED_HEADERS = [
    (DRAIN_HEADER, "1"),
    ("retry-after", "0"),
    ("connection", "close"),
    ("content-type", "text/plain; charset=utf-8"),
    ("content-length", str(len(_REFUSED_BODY))),
]


def _result_json(result: DrainResult) -> bytes:
    return json.dumps(
        {
            "drained": result.clean,
            "in_flight_left": result.in_flight_left,
            "refused": result.refused,
            "grace": result.grace,
            "seconds": round(result.seconds, 3),
            "deregistered": result.deregistered,
        }
    ).encode()


class _Hook:
    def __init__(self, hook_path: str | None, hook_trust: Trust) -> None:
        self.path = hook_path
        self._check = trust_check(hook_trust)

    def allowed(self, carrier: Any) -> bool:
        return self._check is None or self._check(carrier)


class _DrainMiddleware:
    """What the ASGI and WSGI twins share: the app, the drain, the pre-stop hook."""

    def __init__(
        self, app: Callable[..., Any], drain: Drain, *, hook_path: str | None = HOOK_PATH, hook_trust: Trust = _LOOPBACK
    ) -> None:
        self.app = app
        self.drain = drain
        self._hook = _Hook(hook_path, hook_trust)


class DrainASGIMiddleware(_DrainMiddleware):
    """ASGI middleware: counts ``http`` requests for the drain, refuses them once it refuses, and
    serves the pre-stop hook (see the module docstring). Other scopes pass through."""

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
        elif self._hook.path is not None and scope.get("path") == self._hook.path:
            await self._hook_call(scope, send)
        elif not self.drain.admit():
            await _asgi_respond(send, 503, _REFUSED_HEADERS, _REFUSED_BODY)
        else:
            try:
                await self.app(scope, receive, send)
            finally:
                self.drain.release()

    async def _hook_call(self, scope: MutableMapping[str, Any], send: Callable[..., Any]) -> None:
        if scope.get("method") != "POST":
            return await _asgi_respond(send, 405, [("allow", "POST")], b"")
        if not self._hook.allowed(scope):
            return await _asgi_respond(send, 403, [], b"drain: loopback callers only\n")
        result = await asyncio.to_thread(self.drain.drain)  # blocks for the grace period: not on the loop
        body = _result_json(result)
        await _asgi_respond(send, 200, [("content-type", "application/json")], body)


async def _asgi_respond(send: Callable[..., Any], status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


class DrainWSGIMiddleware(_DrainMiddleware):
    """WSGI twin of :class:`DrainASGIMiddleware`: a request counts until the server closes its
    response iterable (the whole body sent)."""

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if self._hook.path is not None and environ.get("PATH_INFO") == self._hook.path:
            return self._hook_call(environ, start_response)
        drain = self.drain
        if not drain.admit():
            start_response("503 Service Unavailable", list(_REFUSED_HEADERS))
            return [_REFUSED_BODY]
        try:
            body = self.app(environ, start_response)
        except BaseException:
            drain.release()
            raise
        return _Counted(body, drain.release)

    def _hook_call(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            start_response("405 Method Not Allowed", [("allow", "POST"), ("content-length", "0")])
            return [b""]
        if not self._hook.allowed(environ):
            start_response("403 Forbidden", [("content-type", "text/plain")])
            return [b"drain: loopback callers only\n"]
        body = _result_json(self.drain.drain())
        start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(body)))])
        return [body]


class _Counted:
    """The app's response iterable, calling ``done`` once when the server closes it."""

    def __init__(self, body: Iterable[bytes], done: Callable[[], None]) -> None:
        self._body = body
        self._done: Callable[[], None] | None = done

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            done, self._done = self._done, None
            if done is not None:
                done()


class DrainServerInterceptor(grpc.ServerInterceptor):
    """``grpc.server`` interceptor: counts RPCs for the drain (a streamed response until its last
    message), and once the drain refuses, ends new RPCs ``UNAVAILABLE`` with the drain marker in
    the trailing metadata, without running the handler."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        drain = self.drain
        streaming_out = handler.response_streaming
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            if not drain.admit():
                context.set_trailing_metadata(((DRAIN_HEADER, "1"),))
                context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSAL)
            if not streaming_out:
                try:
                    return behavior(request, context)
                finally:
                    drain.release()
            return _released_when_done(behavior, request, context, drain)

        return _handler_like(handler, counted)


def _handler_like(handler: Any, behavior: Any) -> Any:
    """A method handler of ``handler``'s kind and (de)serializers, running ``behavior``."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        behavior, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


_REFUSAL = "draining: not processed, send it to another instance"


class AioDrainServerInterceptor(grpc.aio.ServerInterceptor):
    """The ``grpc.aio`` twin of :class:`DrainServerInterceptor`."""

    def __init__(self, drain: Drain) -> None:
        self.drain = drain

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        drain = self.drain
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

        if not handler.response_streaming:

            async def counted(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if not drain.admit():
                    context.set_trailing_metadata(((DRAIN_HEADER, "1"),))
                    await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSAL)
                try:
                    return await behavior(request, context)
                finally:
                    drain.release()

            return _handler_like(handler, counted)

        async def counted_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if not drain.admit():
                context.set_trailing_metadata(((DRAIN_HEADER, "1"),))
                await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSAL)
            try:
                result = behavior(request, context)
                if hasattr(result, "__aiter__"):
                    async for message in result:
                        yield message
                else:  # a handler that writes with context.write() and returns nothing
                    await result
            finally:
                drain.release()

        return _handler_like(handler, counted_stream)


def _released_when_done(behavior: Any, request: Any, context: Any, drain: Drain) -> Iterator[Any]:
    try:
        yield from behavior(request, context)
    finally:
        drain.release()
