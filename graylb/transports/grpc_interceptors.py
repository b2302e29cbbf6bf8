"""Gray context over gRPC metadata: client interceptors that send it, server interceptors that
take it in. The wire format is the HTTP one (:class:`~graylb.HeaderCodec`): ``x-gray-lane``,
``x-gray-pin`` and the ``gray.*`` members of ``baggage``, as lower-case metadata keys.

Client (sync)::

    channel = grpc.intercept_channel(grpc.insecure_channel(target), GrayClientInterceptor())

Client (asyncio)::

    channel = grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors())

``grpc.aio`` files a channel interceptor under the *first* RPC kind it implements only
(grpc/grpc#31442), so a single :class:`AioGrayClientInterceptor` passed to a channel intercepts
unary-unary calls and nothing else. :func:`aio_client_interceptors` returns one interceptor per
kind; use it.

Server::

    server = grpc.server(pool, interceptors=[GrayServerInterceptor()])
    server = grpc.aio.server(interceptors=[AioGrayServerInterceptor()])

The handler -- and every outbound call it makes through a graylb client interceptor or
transport -- runs with the caller's gray context: a unary handler for its call, a streaming one
also while grpc iterates its response iterator / async generator.

**Trust.** ``trust`` is ``True`` (every caller may set gray context), ``False`` (nobody may), or
a predicate. ``intercept_service`` sees only the method and metadata, not the peer, so the
check runs *inside the wrapped handler*, where the servicer context is at hand: the predicate
receives the ``grpc.ServicerContext`` (``grpc.aio.ServicerContext`` for the aio server), with
``peer()``, ``auth_context()`` (mTLS identity) and ``invocation_metadata()``. A predicate made by
:func:`graylb.trust_networks` is recognised and checks ``context.peer()`` against its networks
(``ipv4:10.1.2.3:5678``, ``ipv6:[::1]:5678``; ``unix:`` and other peers are untrusted). A
predicate that raises means "untrusted". For an untrusted caller the handler runs with an empty
gray context and sees a servicer context whose ``invocation_metadata()`` has no gray keys and no
gray baggage members (foreign members stay), so even a handler that copies metadata onwards
does not forward them.

Inbound parsing is the codec's: bounded and never raising. Binary (``-bin``) metadata is never
read or changed.

With an OpenTelemetry SDK installed and no span current yet, the server interceptors also make
the caller's ``traceparent`` the handler's OpenTelemetry context (like the ASGI / WSGI
middleware: :mod:`graylb.propagation.trace_context`), so the calls it makes continue the trace.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from ..propagation import trace_context
from ..propagation.codec import BAGGAGE_HEADER, MAX_HEADER_LENGTH, HeaderCodec
from ..propagation.context import EMPTY, ContextIterator, GrayContext, attach, current, detach
from ..propagation.outbound import inject_gray
from ..propagation.trust import Trust, peer_address, trust_check

__all__ = [
    "GrayClientInterceptor",
    "AioGrayClientInterceptor",
    "aio_client_interceptors",
    "GrayServerInterceptor",
    "AioGrayServerInterceptor",
    "peer_address",
]

_logger = logging.getLogger("graylb.propagation")

# The interceptors are generic per method over request and response types, which they never look
# at: requests, responses and the call objects grpc hands back are typed Any here.
if TYPE_CHECKING:
    # Generic in grpc's type stubs, not at run time (grpc.RpcMethodHandler[...] raises there).
    _RpcMethodHandlerBase = grpc.RpcMethodHandler[Any, Any]
else:
    _RpcMethodHandlerBase = grpc.RpcMethodHandler


def _checked_codec(codec: HeaderCodec | None) -> HeaderCodec:
    codec = codec if codec is not None else HeaderCodec()
    for name in codec.header_names:
        if name.endswith("-bin") or name.startswith("grpc-"):
            raise ValueError(
                f"{name!r} cannot carry gray context in gRPC metadata ('-bin' is binary, 'grpc-' is reserved)"
            )
    return codec


# ---------------------------------------------------------------------------------- client


class _Metadata:
    """gRPC metadata (key/value tuples) as the carrier of
    :func:`~graylb.propagation.outbound.inject_gray`: reads text entries, collects the writes;
    :func:`outbound_metadata` then builds the new list in one pass."""

    __slots__ = ("items", "written")

    def __init__(self, metadata: Any) -> None:
        self.items: list[tuple[Any, Any]] = list(metadata) if metadata else []
        self.written: dict[str, str | None] = {}

    @staticmethod
    def get(carrier: _Metadata, key: str) -> list[str] | None:
        found = None  # a plain loop: no list (and no comprehension frame) in the usual case
        for k, v in carrier.items:
            if isinstance(v, str) and isinstance(k, str) and k.lower() == key:
                if found is None:
                    found = [v]
                else:
                    found.append(v)
        return found

    @staticmethod
    def set(carrier: _Metadata, key: str, value: str | None) -> None:
        carrier.written[key] = value


def outbound_metadata(codec: HeaderCodec, ctx: GrayContext, metadata: Any) -> list[tuple[Any, Any]] | None:
    """The call's metadata with the gray context in it (:func:`inject_gray` says how), or ``None``
    when nothing changes. The entries of each written key are dropped (of ``baggage``, the text
    ones: the only ones read) and the written ones appended, in order; all else stays as it was.
    """
    carrier = _Metadata(metadata)
    if not inject_gray(codec, ctx, carrier, _Metadata, _Metadata):
        return None
    written = carrier.written
    out = []
    for key, value in carrier.items:
        lkey = key.lower() if isinstance(key, str) else key
        if lkey in written and (lkey != BAGGAGE_HEADER or isinstance(value, str)):
            continue
        out.append((key, value))
    out.extend((key, value) for key, value in written.items() if value is not None)
    return out


def _gray_metadata(codec: HeaderCodec, ctx: GrayContext, metadata: Any) -> list[tuple[Any, Any]] | None:
    try:
        return outbound_metadata(codec, ctx, metadata)
    except Exception:  # never let gray context break the call itself
        _logger.warning("graylb: could not add gray context to gRPC metadata; sending it unchanged", exc_info=True)
        return None


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """``grpc.ClientCallDetails`` with new metadata (grpc requires a subclass)."""


class GrayClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sends the current gray context with every call:
    ``grpc.intercept_channel(channel, GrayClientInterceptor())``.

    The context is read when the call starts, in the calling thread."""

    def __init__(self, codec: HeaderCodec | None = None) -> None:
        self.codec = _checked_codec(codec)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = _gray_metadata(self.codec, current(), details.metadata)
        if metadata is None:
            return details
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            getattr(details, "credentials", None),
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details), request_iterator)


class _AioClientBase:
    """The grpc.aio client logic, shared by the combined interceptor and the per-kind ones.
    aio interceptors run in the call's task, created from the caller's context: ``current()``
    there is the caller's gray context."""

    def __init__(self, codec: HeaderCodec | None = None) -> None:
        self.codec = _checked_codec(codec)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = _gray_metadata(self.codec, current(), details.metadata)
        if metadata is None:
            return details
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            grpc.aio.Metadata.from_tuple(tuple(metadata)),
            getattr(details, "credentials", None),
            getattr(details, "wait_for_ready", None),
        )

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class AioGrayClientInterceptor(
    _AioClientBase,
    grpc.aio.UnaryUnaryClientInterceptor,
    grpc.aio.UnaryStreamClientInterceptor,
    grpc.aio.StreamUnaryClientInterceptor,
    grpc.aio.StreamStreamClientInterceptor,
):
    """The grpc.aio client interceptor for all four RPC kinds.

    Pass :func:`aio_client_interceptors` to a channel rather than this object: ``grpc.aio``
    registers a multi-kind interceptor for unary-unary calls only (grpc/grpc#31442)."""

    def per_kind(self) -> list[grpc.aio.ClientInterceptor]:
        """One interceptor per RPC kind, sharing this one's codec -- what a channel needs."""
        return [kind(self.codec) for kind in _AIO_KINDS]


class _AioUnaryUnary(_AioClientBase, grpc.aio.UnaryUnaryClientInterceptor):
    pass


class _AioUnaryStream(_AioClientBase, grpc.aio.UnaryStreamClientInterceptor):
    pass


class _AioStreamUnary(_AioClientBase, grpc.aio.StreamUnaryClientInterceptor):
    pass


class _AioStreamStream(_AioClientBase, grpc.aio.StreamStreamClientInterceptor):
    pass


_AIO_KINDS = (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)


def aio_client_interceptors(codec: HeaderCodec | None = None) -> list[grpc.aio.ClientInterceptor]:
    """``grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors())``: gray
    context on every RPC kind (unary-unary, unary-stream, stream-unary, stream-stream)."""
    return AioGrayClientInterceptor(codec).per_kind()


# ---------------------------------------------------------------------------------- server


def _server_trust_check(trust: Trust) -> Callable[[Any], bool] | None:
    """``None`` for "always trusted"; otherwise a fail-closed predicate on the servicer context
    (``graylb.trust_networks(...)`` checks ``context.peer()``)."""
    return trust_check(trust, "servicer_context")


def _metadata_get(metadata: Any, wanted: frozenset[str]) -> Callable[[str], str | None]:
    """The codec's ``get`` over invocation metadata: gray keys only, repeated entries joined
    with "," (as HTTP does), binary and non-text entries ignored; malformed metadata counts as
    none."""
    found: dict[str, str] = {}
    try:
        for key, value in metadata or ():
            if not isinstance(key, str) or not isinstance(value, str):
                continue
            if key not in wanted and (key := key.lower()) not in wanted:
                continue
            previous = found.get(key)
            if previous is None:
                found[key] = value
            elif len(previous) <= MAX_HEADER_LENGTH:  # the codec reads no further anyway
                found[key] = f"{previous},{value}"
    except Exception:
        _logger.warning("graylb: malformed gRPC metadata; reading no gray context from it")
        none: dict[str, str] = {}
        return none.get
    return found.get


def _strip_metadata(codec: HeaderCodec, metadata: Any) -> tuple[Any, ...]:
    """Invocation metadata without plain gray keys and gray baggage members; items keep their
    type (sync grpc's ``_Metadatum`` has ``.key``/``.value``)."""
    plain = codec.header_names
    out: list[Any] = []
    for item in metadata or ():
        try:
            key, value = item
            lkey = key.lower() if isinstance(key, str) else None
        except Exception:
            out.append(item)
            continue
        if lkey in plain:
            continue
        if lkey == BAGGAGE_HEADER and isinstance(value, str):
            stripped = codec.strip_baggage(value)
            if stripped is None:
                continue
            replace = getattr(item, "_replace", None)
            item = replace(value=stripped) if replace is not None and hasattr(item, "value") else (key, stripped)
        out.append(item)
    return tuple(out)


def _make_stripped_context_class(base: type) -> type:
    """A ``base`` (ServicerContext) that delegates everything to the real servicer context but
    answers ``invocation_metadata()`` without gray items."""

    def delegate(name: str) -> Callable[..., Any]:
        def method(self: Any, *args: Any, **kwargs: Any) -> Any:
            return getattr(self._inner, name)(*args, **kwargs)

        method.__name__ = name
        return method

    namespace: dict[str, Any] = {
        name: delegate(name) for name in dir(base) if not name.startswith("_") and callable(getattr(base, name, None))
    }

    def __init__(self: Any, inner: Any, codec: HeaderCodec) -> None:
        self._inner = inner
        self._codec = codec

    def invocation_metadata(self: Any) -> Any:
        return _strip_metadata(self._codec, self._inner.invocation_metadata())

    def __getattr__(self: Any, name: str) -> Any:  # anything the base class does not declare
        if name in ("_inner", "_codec"):  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    namespace.update(
        __init__=__init__,
        invocation_metadata=invocation_metadata,
        __getattr__=__getattr__,
        __slots__=("_inner", "_codec"),
    )
    namespace["__module__"] = __name__
    cls = type(f"GrayStripped{base.__name__}", (base,), namespace)
    # ABCMeta reads __abstractmethods__ at instantiation; typeshed's `type` does not declare it.
    cls.__abstractmethods__ = frozenset()  # type: ignore[attr-defined]
    return cls


_StrippedServicerContext = _make_stripped_context_class(grpc.ServicerContext)
_AioStrippedServicerContext = _make_stripped_context_class(grpc.aio.ServicerContext)


class _RpcMethodHandler(
    collections.namedtuple(
        "_RpcMethodHandler",
        (
            "request_streaming",
            "response_streaming",
            "request_deserializer",
            "response_serializer",
            "unary_unary",
            "unary_stream",
            "stream_unary",
            "stream_stream",
        ),
    ),
    _RpcMethodHandlerBase,
):
    pass


_BEHAVIOURS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class _ServerBase:
    def __init__(self, codec: HeaderCodec | None = None, trust: Trust = True) -> None:
        self.codec = _checked_codec(codec)
        self._untrusted_check = _server_trust_check(trust)
        self._wanted = frozenset(self.codec._extract_names)

    def _resolve(self, metadata: Any, servicer_context: Any, stripped_class: type) -> tuple[GrayContext, Any]:
        """(gray context, servicer context to hand to the handler) for one call."""
        check = self._untrusted_check
        if check is None or check(servicer_context):
            return self.codec.extract(_metadata_get(metadata, self._wanted)), servicer_context
        return EMPTY, stripped_class(servicer_context, self.codec)

    def _wrap_sync(
        self, behavior: Callable[..., Any], streaming: bool, metadata: Any, stripped_class: type
    ) -> Callable[..., Any]:
        # A private Context per call, like GrayWSGIMiddleware: the behaviour and every step of a
        # response iterator run in it, so a pooled worker thread is never left with a stale
        # context and iteration from another thread (grpc.aio's executor path) works too.
        def wrapped(request: Any, servicer_context: Any) -> Any:
            gray_ctx, servicer_context = self._resolve(metadata, servicer_context, stripped_class)
            call_context = contextvars.copy_context()
            call_context.run(attach, gray_ctx)  # never detached: the Context is dropped with the call
            call_context.run(trace_context.attach, metadata, trace_context.METADATA)  # traceparent; likewise
            result = call_context.run(behavior, request, servicer_context)
            if streaming and result is not None:
                return ContextIterator(result, call_context)
            return result

        return wrapped

    def _wrap_handler(
        self, handler: Any, metadata: Any, wrap: Callable[[Callable[..., Any], bool, Any], Callable[..., Any]]
    ) -> _RpcMethodHandler | None:
        if handler is None:
            return None
        behaviours = {}
        for name in _BEHAVIOURS:
            behavior = getattr(handler, name, None)
            behaviours[name] = wrap(behavior, name.endswith("_stream"), metadata) if behavior is not None else None
        return _RpcMethodHandler(
            handler.request_streaming,
            handler.response_streaming,
            handler.request_deserializer,
            handler.response_serializer,
            **behaviours,
        )


class GrayServerInterceptor(_ServerBase, grpc.ServerInterceptor):
    """``grpc.server(pool, interceptors=[GrayServerInterceptor(trust=...)])``: each handler runs
    with the gray context from its call's metadata. See the module docstring for ``trust``."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        metadata = getattr(handler_call_details, "invocation_metadata", None)
        return self._wrap_handler(handler, metadata, self._wrap)

    def _wrap(self, behavior: Callable[..., Any], streaming: bool, metadata: Any) -> Callable[..., Any]:
        return self._wrap_sync(behavior, streaming, metadata, _StrippedServicerContext)


def _safe_detach(token: contextvars.Token[GrayContext]) -> None:
    try:
        detach(token)
    except (ValueError, RuntimeError):  # finalised from another context (an abandoned generator)
        pass


def _safe_detach_trace(token: Any) -> None:
    """As :func:`_safe_detach`, for the OpenTelemetry context: its tokens are contextvars tokens,
    reset directly so that an abandoned generator finalised elsewhere logs nothing."""
    if token is None:
        return
    var = getattr(token, "var", None)
    try:
        if var is not None:
            var.reset(token)
        else:
            trace_context.detach(token)
    except (ValueError, RuntimeError):
        pass


class AioGrayServerInterceptor(_ServerBase, grpc.aio.ServerInterceptor):
    """``grpc.aio.server(interceptors=[AioGrayServerInterceptor(trust=...)])``: coroutine
    handlers, async-generator handlers and sync handlers (``migration_thread_pool``) all run
    with the caller's gray context. Each kind of handler stays that kind, since grpc.aio picks
    how to run a handler by inspecting it."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        metadata = getattr(handler_call_details, "invocation_metadata", None)
        return self._wrap_handler(handler, metadata, self._wrap)

    def _wrap(self, behavior: Callable[..., Any], streaming: bool, metadata: Any) -> Callable[..., Any]:
        resolve = functools.partial(self._resolve, metadata, stripped_class=_AioStrippedServicerContext)
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, servicer_context: Any) -> Any:
                gray_ctx, servicer_context = resolve(servicer_context)
                token = attach(gray_ctx)
                trace_token = trace_context.attach(metadata, trace_context.METADATA)
                responses = behavior(request, servicer_context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    try:
                        await responses.aclose()
                    finally:
                        _safe_detach_trace(trace_token)
                        _safe_detach(token)

            return stream
        if inspect.iscoroutinefunction(behavior):

            async def call(request: Any, servicer_context: Any) -> Any:
                gray_ctx, servicer_context = resolve(servicer_context)
                token = attach(gray_ctx)
                trace_token = trace_context.attach(metadata, trace_context.METADATA)
                try:
                    return await behavior(request, servicer_context)
                finally:
                    _safe_detach_trace(trace_token)
                    _safe_detach(token)

            return call
        # A sync handler: grpc.aio runs it (and iterates its responses) in an executor thread.
        return self._wrap_sync(behavior, streaming, metadata, _AioStrippedServicerContext)
